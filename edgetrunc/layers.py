"""The `Truncation` layer: a hard clip to [lower, upper] with a choice of gradient.

This module owns the truncated linear unit (TLU) of steganalysis CNNs. The forward pass
is exactly `clip(x, lower, upper)` for every input, so TFLite and ONNX converters map it
to one MINIMUM and one MAXIMUM (or one ONNX `Clip`); the gradient is chosen separately
with `keras.ops.custom_gradient`, which never changes the forward graph.
"""

from __future__ import annotations

import math

import keras
from keras import ops

GRADIENT_MODES = ("ste", "clip")
MIN_THRESHOLD = 1e-6


def truncate(x, lower, upper):
    """Clip `x` to `[lower, upper]`, keeping NaN and the dtype of `x`.

    An infinite bound given as a Python number (`lower=-inf` or `upper=inf`) is the open
    side of a one-sided clip: no op is emitted for it, so `min(x, upper)` is one MINIMUM.
    """
    if not is_open(lower):
        x = ops.maximum(x, lower)
    if not is_open(upper):
        x = ops.minimum(x, upper)
    return x


def truncate_as(x, lower, upper):
    """`truncate` with Python-number bounds cast to the dtype of `x` (open sides skipped)."""
    return truncate(x, *(b if is_open(b) else ops.cast(b, x.dtype) for b in (lower, upper)))


def is_open(bound) -> bool:
    """Whether `bound` is a Python number that is infinite (the open side of a clip)."""
    return isinstance(bound, (int, float)) and math.isinf(bound)


def _truncate_fixed(x, lower, upper, gradient):
    @ops.custom_gradient
    def forward(inputs):
        outputs = truncate(inputs, lower, upper)

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            if gradient == "ste":
                return upstream
            if is_open(lower):
                inside = inputs <= upper
            elif is_open(upper):
                inside = inputs >= lower
            else:
                inside = ops.logical_and(inputs >= lower, inputs <= upper)
            return ops.where(inside, upstream, ops.zeros_like(upstream))

        return outputs, grad

    return forward(x)


def _truncate_learned(x, threshold, gradient):
    @ops.custom_gradient
    def forward(inputs, t):
        t = ops.cast(t, inputs.dtype)
        outputs = truncate(inputs, -t, t)

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            above = inputs > t
            below = inputs < -t
            zeros = ops.zeros_like(upstream)
            d_t = ops.sum(ops.where(above, upstream, zeros)) - ops.sum(
                ops.where(below, upstream, zeros)
            )
            if gradient == "ste":
                d_x = upstream
            else:
                d_x = ops.where(ops.logical_or(above, below), zeros, upstream)
            return d_x, ops.cast(d_t, "float32")

        return outputs, grad

    return forward(x, threshold)


class _MinThreshold(keras.constraints.Constraint):
    def __call__(self, w):
        return ops.maximum(w, MIN_THRESHOLD)


@keras.saving.register_keras_serializable(package="edgetrunc")
class Truncation(keras.layers.Layer):
    """Truncated linear unit: a hard clip to `[lower, upper]`.

    Formula:

        y = lower  if x < lower
        y = x      if lower <= x <= upper
        y = upper  if x > upper

    NaN stays NaN, +inf becomes `upper`, -inf becomes `lower`, and `|y| <= T` however
    large `x` is. By default the bounds are symmetric, `[-threshold, threshold]`.

    One side may be open: `lower=-inf` gives `min(x, upper)` and `upper=inf` gives
    `max(x, lower)` (one MINIMUM or MAXIMUM once converted).

    Gradient modes:
    - `"ste"` (straight-through estimator): dy/dx = 1 everywhere.
    - `"clip"`: the true derivative, 1 on the closed interval `[lower, upper]` (so 1 at
      exactly `x = lower` and `x = upper`) and 0 outside.

    With `learn_threshold=True`, T is a trainable scalar kept above 1e-6, trained with the
    PACT gradient (Choi et al. 2018): dL/dT = sum(dy where x > T) - sum(dy where x < -T).
    Converters see it as a constant.

    Example:

    >>> layer = Truncation(threshold=3.0)
    >>> layer(np.array([-5.0, -1.0, 2.5, 3e7]))
    [-3.0, -1.0, 2.5, 3.0]

    Args:
        threshold: positive float, T of the symmetric clip. Defaults to `3.0`.
        gradient: `"ste"` or `"clip"`. Defaults to `"ste"`.
        learn_threshold: whether T is a trainable weight (symmetric bounds only).
            Defaults to `False`.
        lower: lower bound of an asymmetric clip, or `-inf` for `min(x, upper)`; give it
            together with `upper`.
        upper: upper bound of an asymmetric clip, or `inf` for `max(x, lower)`; give it
            together with `lower`.
        **kwargs: base layer keyword arguments, such as `name` and `dtype`.
    """

    def __init__(
        self,
        threshold=3.0,
        gradient="ste",
        learn_threshold=False,
        lower=None,
        upper=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        lower = None if lower is None else _checked_side("lower", lower, math.inf)
        upper = None if upper is None else _checked_side("upper", upper, -math.inf)
        if (lower is None) != (upper is None):
            raise ValueError(
                "lower and upper must be given together (one of them may be infinite: "
                f"lower=-inf for min(x, upper)). Received: lower={lower}, upper={upper}"
            )
        if lower is None:
            threshold = _as_float("threshold", threshold)
            if not threshold > 0 or math.isinf(threshold):
                raise ValueError(
                    f"threshold must be a finite number > 0. Received: threshold={threshold}"
                )
            lower, upper = -threshold, threshold
        else:
            lower, upper = _checked_bounds(lower, upper)
            if not lower < upper:
                raise ValueError(
                    f"lower must be < upper. Received: lower={lower}, upper={upper}"
                )
            threshold = None
        if gradient not in GRADIENT_MODES:
            raise ValueError(
                f"gradient must be one of {GRADIENT_MODES}. Received: gradient={gradient!r}"
            )
        if not isinstance(learn_threshold, bool):
            raise ValueError(
                f"learn_threshold must be a bool. Received: learn_threshold={learn_threshold!r}"
            )
        if learn_threshold and threshold is None:
            raise ValueError(
                "learn_threshold=True needs symmetric bounds (threshold=T), not lower/upper. "
                f"Received: lower={lower}, upper={upper}"
            )
        self.threshold = threshold
        self.lower = lower
        self.upper = upper
        self.gradient = gradient
        self.learn_threshold = learn_threshold
        self.supports_masking = True
        self._threshold_weight = None

    def build(self, input_shape):
        if self.learn_threshold:
            self._threshold_weight = self.add_weight(
                name="threshold",
                shape=(),
                initializer=keras.initializers.Constant(self.threshold),
                constraint=_MinThreshold(),
                trainable=True,
                dtype="float32",
            )

    @property
    def bounds(self):
        """The bounds `(lower, upper)` in force now (the learned ones if T is trained)."""
        if self._threshold_weight is not None:
            t = float(ops.convert_to_numpy(self._threshold_weight))
            return -t, t
        return self.lower, self.upper

    def call(self, inputs):
        if self._threshold_weight is not None:
            threshold = ops.multiply(self._threshold_weight, 1.0)  # a read, not the variable
            return _truncate_learned(inputs, threshold, self.gradient)
        lower = self.lower if is_open(self.lower) else ops.cast(self.lower, inputs.dtype)
        upper = self.upper if is_open(self.upper) else ops.cast(self.upper, inputs.dtype)
        return _truncate_fixed(inputs, lower, upper, self.gradient)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        if self.threshold is not None:
            config.update({"threshold": self.threshold})
        else:
            config.update({"threshold": None, "lower": self.lower, "upper": self.upper})
        config.update(
            {"gradient": self.gradient, "learn_threshold": self.learn_threshold}
        )
        return config


def _checked_side(name, value, impossible):
    """`value` as a float; NaN and the infinity on the wrong side (`impossible`) refused."""
    value = _as_float(name, value)
    if math.isnan(value):
        raise ValueError(f"{name} must be a number, not NaN. Received: {name}={value}")
    if value == impossible:
        open_side = "-inf" if name == "lower" else "inf"
        raise ValueError(f"{name} must be finite or {open_side}. Received: {name}={value}")
    return value


def _checked_bounds(lower, upper):
    """`(lower, upper)` as floats; at most one side open (-inf below, +inf above)."""
    lower = _checked_side("lower", lower, math.inf)
    upper = _checked_side("upper", upper, -math.inf)
    if math.isinf(lower) and math.isinf(upper):
        raise ValueError("lower and upper cannot both be infinite (that is no clip); one side "
                         f"must be finite. Received: lower={lower}, upper={upper}")
    return lower, upper


def _as_float(name, value):
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number. Received: {name}={value!r}") from None
    return value


from edgetrunc.elementwise import Elementwise  # noqa: E402,F401  (registered beside Truncation)
