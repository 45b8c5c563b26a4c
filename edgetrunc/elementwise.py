"""The `Elementwise` layer: `scale * f(x) + offset` for f in abs, square or identity.

It stands where a saved `Lambda` computed one of these (`Lambda(K.abs)`, `Lambda(lambda x:
x / 4)`, ...): `edgetrunc migrate --trust-lambda` probes each Lambda that is not a
truncation and rewrites the common elementwise ones to this layer, which saves as plain
config, so the migrated file loads in safe mode. TFLite and ONNX get ABS / MUL / ADD.
"""

from __future__ import annotations

import math

import keras
from keras import ops

FUNCTIONS = ("identity", "abs", "square")


@keras.saving.register_keras_serializable(package="edgetrunc")
class Elementwise(keras.layers.Layer):
    """`scale * f(x) + offset`, elementwise, with f one of `FUNCTIONS`.

    Example: `Elementwise("abs")(x)` is `|x|`; `Elementwise(scale=0.25)(x)` is `x / 4`.

    Args:
        function: "identity", "abs" or "square" (default "identity").
        scale: finite factor applied after f (default 1.0).
        offset: finite value added last (default 0.0).
    """

    def __init__(self, function="identity", scale=1.0, offset=0.0, **kwargs):
        super().__init__(**kwargs)
        if function not in FUNCTIONS:
            raise ValueError(f"function must be one of {', '.join(FUNCTIONS)}. "
                             f"Received: function={function!r}")
        for name, value in (("scale", scale), ("offset", offset)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number. Received: {name}={value!r}")
        self.function, self.scale, self.offset = function, float(scale), float(offset)

    def call(self, x):
        y = {"identity": x, "abs": ops.abs(x), "square": ops.square(x)}[self.function]
        if self.scale != 1.0:
            y = y * ops.cast(self.scale, x.dtype)
        if self.offset != 0.0:
            y = y + ops.cast(self.offset, x.dtype)
        return y

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "function": self.function, "scale": self.scale,
                "offset": self.offset}
