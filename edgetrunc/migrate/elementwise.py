"""Probing a `Lambda` that is not a truncation for a common elementwise function
(`probe_elementwise` -> `ElementwiseVerdict`), rewritten to the serializable `Elementwise`.

The Lambda runs on its own input shape, in two arrangements (an elementwise function does
not care), on values of both signs and many magnitudes; it must equal `scale * f(x) +
offset` for f in |x|, x^2 or x (scale and offset read from two points) on every value, up
to a few float32 ulps. Anything else (`tf.nn.softsign`, a reduction) is kept as a Lambda.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from edgetrunc.migrate.probe import _LambdaProbe, _NotClip

VERDICT_ELEMENTWISE = "elementwise"
FUNCTIONS = {"abs": np.abs, "square": np.square, "identity": lambda x: x}


@dataclasses.dataclass
class ElementwiseVerdict:
    """A Lambda found to compute `scale * function(x) + offset`."""

    layer: str
    function: str
    scale: float
    offset: float
    max_probe_error: float

    verdict = VERDICT_ELEMENTWISE
    is_clip = False

    def replacement(self, lambda_layer):
        """The `Elementwise` layer that takes the Lambda's place (same name and dtype)."""
        from edgetrunc.elementwise import Elementwise

        return Elementwise(self.function, self.scale, self.offset, name=lambda_layer.name,
                           dtype=lambda_layer.dtype_policy)

    def formula(self) -> str:
        inner = {"abs": "|x|", "square": "x^2", "identity": "x"}[self.function]
        text = inner if self.scale == 1.0 else f"{self.scale:g} * {inner}"
        return text + (f" + {self.offset:g}" if self.offset else "")

    def to_dict(self) -> dict:
        return {"layer": self.layer, "verdict": self.verdict, "lower": None, "upper": None,
                "gradient": None, "exact": self.max_probe_error == 0.0,
                "max_probe_error": self.max_probe_error, "max_probe_error_at": None,
                "nonfinite": None, "replaced": True,
                "note": f"computes {self.formula()}: rewritten as Elementwise (serializable)"}


def _points():
    magnitudes = [m * 10.0 ** k for k in range(-3, 4) for m in (1, 2.5, 5)]
    values = sorted({s * v for s in (-1, 1) for v in magnitudes} | {0.0})
    return np.array(values, dtype=np.float32)


def probe_elementwise(layer, name=None, seed=0):
    """`ElementwiseVerdict` when `layer` computes `scale * f(x) + offset`, else None."""
    try:
        probe = _LambdaProbe(layer)
        x = _points()
        y = probe.run(x).astype(np.float64)
        order = np.random.default_rng(seed).permutation(x.size)
        again = np.empty_like(y)
        again[order] = probe.run(x[order], extra_batch=1, free_dim=5).astype(np.float64)
    except _NotClip:
        return None
    if not (np.all(np.isfinite(y)) and np.array_equal(y, again)):
        return None
    x64 = x.astype(np.float64)
    for function, f in FUNCTIONS.items():
        fx = f(x64)
        low, high = int(np.argmin(fx)), int(np.argmax(fx))
        if fx[high] == fx[low]:
            continue
        scale = (y[high] - y[low]) / (fx[high] - fx[low])
        offset = y[low] - scale * fx[low]
        scale, offset = float(np.float32(scale)), float(np.float32(offset))
        error = np.abs(scale * fx + offset - y)
        allowed = 8 * np.spacing(np.abs(scale * fx).astype(np.float32)).astype(np.float64) \
            + 8 * float(np.spacing(np.float32(abs(offset))))
        if scale != 0.0 and np.all(error <= allowed):
            return ElementwiseVerdict(name or layer.name, function, scale, offset,
                                      float(error.max()))
    return None
