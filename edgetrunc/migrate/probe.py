"""Probing a `Lambda` layer by behaviour: does it compute clip(x, lower, upper), and with
which gradient (`probe_lambda` -> `LambdaVerdict`). One side may be open: `min(x, upper)`
(lower -inf) and `max(x, lower)` (upper inf) are one-sided clips.

The layer runs on its own input shape at values inside, near and far outside the bounds; the
bounds are read from where it saturates, then verified on every point against what the
replacing `Truncation` returns (`truncated`), tolerating only float cancellation.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from edgetrunc.errors import first_line

VERDICT_CLIP = "clip"
VERDICT_NOT_CLIP = "not-clip"
VERDICT_OTHER_GRADIENT = "clip-other-gradient"


@dataclasses.dataclass
class LambdaVerdict:
    """What probing one Lambda found: is it a clip, with which bounds and gradient."""

    layer: str
    verdict: str
    lower: float | None = None
    upper: float | None = None
    gradient: str | None = None
    exact: bool | None = None
    max_probe_error: float | None = None
    max_probe_error_at: float | None = None
    nonfinite: dict | None = None
    note: str = ""

    @property
    def is_clip(self) -> bool:
        return self.verdict == VERDICT_CLIP

    def truncation_kwargs(self) -> dict:
        if self.lower == -self.upper:
            return {"threshold": self.upper, "gradient": self.gradient}
        return {"lower": self.lower, "upper": self.upper, "gradient": self.gradient}

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["replaced"] = self.is_clip
        return data


class _NotClip(Exception):
    pass


def as_number(value: float) -> float | str:
    """`value` as a float, or its repr when not finite (strict JSON has no inf / NaN)."""
    value = float(value)
    return value if math.isfinite(value) else repr(value)


def _shortest(value, dtype) -> float:
    """The shortest decimal that rounds to the same `dtype` value (3.0, 0.1, ...)."""
    return float(str(np.dtype(dtype).type(value)))


class _LambdaProbe:
    """Runs one Lambda layer on arranged test tensors of its own input shape."""

    def __init__(self, layer):
        spec = layer.input
        if isinstance(spec, (list, tuple, dict)):
            raise _NotClip("takes several inputs")
        self.layer = layer
        self.shape = tuple(spec.shape)
        self.dtype = np.dtype(layer.compute_dtype)
        if self.dtype.kind != "f":
            raise _NotClip(f"computes in {self.dtype}, not a float type")

    def arrange(self, values, extra_batch=0, free_dim=4):
        per_sample = [d if d is not None else free_dim for d in self.shape[1:]]
        per_size = int(np.prod(per_sample)) if per_sample else 1
        batch = max(1, -(-len(values) // per_size)) + extra_batch
        return np.resize(np.asarray(values, self.dtype), batch * per_size).reshape(
            (batch, *per_sample))

    def run(self, values, extra_batch=0, free_dim=4):
        from keras import ops

        data = self.arrange(values, extra_batch, free_dim)
        try:
            out = self.layer(ops.convert_to_tensor(data))
            out = np.asarray(ops.convert_to_numpy(out))
        except Exception as exc:
            raise _NotClip(f"fails on probe tensors ({type(exc).__name__}: {first_line(exc)})") \
                from None
        if out.shape != data.shape:
            raise _NotClip(f"changes the shape {data.shape} -> {out.shape}")
        return out.reshape(-1)[: len(values)].astype(self.dtype)

    def gradient(self, values):
        import tensorflow as tf

        data = tf.constant(self.arrange(values))
        with tf.GradientTape() as tape:
            tape.watch(data)
            out = tf.reduce_sum(tf.cast(self.layer(data), tf.float32))
        grad = tape.gradient(out, data)
        if grad is None:
            return None
        return np.asarray(grad).reshape(-1)[: len(values)].astype(np.float64)


def truncated(values, lower, upper):
    """What `Truncation(lower=..., upper=...)` returns for `values`, on this backend
    (so denormal flushing and NaN handling match the layer that replaces the Lambda)."""
    from keras import ops

    from edgetrunc.layers import truncate_as

    x = ops.convert_to_tensor(values)
    return np.asarray(ops.convert_to_numpy(truncate_as(x, float(lower), float(upper))))


def bound_scale(lower, upper) -> float:
    """The largest finite bound's magnitude (the scale of a clip's float cancellation)."""
    return max([abs(b) for b in (lower, upper) if math.isfinite(b)], default=0.0)


def working_interval(lower, upper):
    """`(lo, hi, width)`: the clip's interval, a one-sided clip's open side replaced by a
    finite point `width` beyond its bound (width `max(1, |bound|)`), for placing probes."""
    if math.isfinite(lower) and math.isfinite(upper):
        return lower, upper, upper - lower
    width = max(1.0, bound_scale(lower, upper))
    lo = lower if math.isfinite(lower) else upper - width
    hi = upper if math.isfinite(upper) else lower + width
    return lo, hi, width


def _probe_grid(dtype):
    top = int(math.floor(math.log10(float(np.finfo(dtype).max))))
    magnitudes = [m * 10.0 ** k for k in range(-4, top) for m in (1, 2, 3, 5)]
    grid = np.array(sorted({s * v for s in (-1, 1) for v in magnitudes} | {0.0}))
    grid = grid.astype(dtype)
    return grid[np.isfinite(grid)]


def _tolerance(x, dtype):
    return 4 * np.spacing(np.abs(x).astype(dtype)).astype(np.float64) + float(
        np.finfo(dtype).tiny)


def _describe(probe) -> str:
    points = np.array([-1000, -1, 0, 1, 1000], dtype=probe.dtype)
    try:
        values = probe.run(points)
    except _NotClip as exc:
        return str(exc)
    return (f"f({', '.join(f'{v:g}' for v in points)}) = "
            f"({', '.join(f'{v:g}' for v in values)})")


def _refined_bound(probe, rough, side):
    """Re-read a saturation value from an input within 2x of it (no cancellation)."""
    if rough > 0:
        x = rough * (1.5 if side > 0 else 0.5)
    elif rough < 0:
        x = rough * (0.5 if side > 0 else 1.5)
    else:
        x = side * 1e-3
    return float(probe.run(np.array([x], probe.dtype))[0])


def _verification_points(lower, upper, dtype, rng):
    finite = [b for b in (lower, upper) if math.isfinite(b)]
    lower, upper, width = working_interval(lower, upper)
    scale = max(abs(lower), abs(upper), width)
    near = list(finite)
    for bound in finite:
        near += [np.nextafter(np.asarray(bound, dtype), np.asarray(np.inf, dtype)),
                 np.nextafter(np.asarray(bound, dtype), np.asarray(-np.inf, dtype)),
                 bound - 1e-3 * width, bound + 1e-3 * width,
                 bound - 0.5 * width, bound + 0.5 * width]
    points = np.concatenate([
        _probe_grid(dtype),
        np.array(near, dtype=np.float64),
        rng.uniform(lower, upper, 512),
        rng.uniform(lower - 2 * width, upper + 2 * width, 512),
        rng.normal(0, 1, 256) * scale * np.array([0.5, 2, 10, 1e4])[rng.integers(0, 4, 256)],
    ])
    with np.errstate(over="ignore"):
        points = points.astype(dtype)
    return points[np.isfinite(points)]


def probe_lambda(layer, name=None, seed=0) -> LambdaVerdict:
    """Decide by behaviour whether `layer` computes clip(x, lower, upper), and its gradient.

    The layer runs on its own input shape (free dimensions filled in) at values inside,
    near and far outside the bounds, of both signs, arranged in two shapes and orders;
    the bounds are read from where it saturates and verified on every point. Errors up
    to about one ulp of x (the float cancellation of `x + stop_gradient(clip(x) - x)`)
    are tolerated and reported; anything larger makes it not a clip.
    """
    name = name or layer.name
    try:
        probe = _LambdaProbe(layer)
    except _NotClip as exc:
        return LambdaVerdict(name, VERDICT_NOT_CLIP, note=str(exc))
    try:
        return _probe(probe, name, np.random.default_rng(seed))
    except _NotClip as exc:
        return LambdaVerdict(name, VERDICT_NOT_CLIP, note=f"{exc}; {_describe(probe)}")


def _probe(probe, name, rng):
    lower, upper = _saturation_bounds(probe)
    if lower == 0 and upper == math.inf:
        raise _NotClip("max(x, 0) is a ReLU, not a truncation: no upper bound; kept")
    points, got, expected = _clip_answers(probe, lower, upper, rng)
    error = np.abs(got - expected)
    worst = int(np.argmax(error))
    max_error = float(error[worst])
    exact = max_error == 0.0
    note = "" if exact else _cancellation_note(points, got, expected,
                                               bound_scale(lower, upper), worst)
    nonfinite, nonfinite_note = _nonfinite_answers(probe, lower, upper)
    gradient, gradient_note = _gradient_mode(probe, lower, upper)
    verdict = VERDICT_CLIP if gradient else VERDICT_OTHER_GRADIENT
    note = "; ".join(filter(None, [note, nonfinite_note, gradient_note]))
    return LambdaVerdict(name, verdict, lower=lower, upper=upper, gradient=gradient, exact=exact,
                         max_probe_error=max_error, max_probe_error_at=float(points[worst]),
                         nonfinite=nonfinite, note=note)


def _saturation_bounds(probe):
    """`(lower, upper)` where the layer saturates, with f(x) = x between them."""
    dtype = probe.dtype
    grid = _probe_grid(dtype)
    y = probe.run(grid).astype(np.float64)
    x = grid.astype(np.float64)
    if not np.all(np.isfinite(y)):
        raise _NotClip("returns inf or NaN for finite inputs")
    tol = _tolerance(grid, dtype)
    above = np.flatnonzero(y < x - tol)
    below = np.flatnonzero(y > x + tol)
    # a side saturates only when f at its far end is off the identity (float rounding of
    # f(x) = x at huge |x| is within the tolerance, so it never fakes a saturated side)
    saturates_above = above.size > 0 and above[-1] == x.size - 1
    saturates_below = below.size > 0 and below[0] == 0
    if not saturates_above and not saturates_below:
        raise _NotClip("saturates on neither side (no lower or upper saturation level; "
                       "f(x) = x at large |x|)")
    # the level is read where the saturated run at each far end begins (points off the
    # identity by rounding nearer zero, as in -(relu(-x + 8) - 8), are not part of it)
    upper = _refined_bound(probe, y[_run_end(above, -1)], +1) if saturates_above else math.inf
    lower = _refined_bound(probe, y[_run_end(below, 0)], -1) if saturates_below else -math.inf
    if math.isnan(lower) or math.isnan(upper) or lower == math.inf or upper == -math.inf \
            or not lower < upper:
        raise _NotClip("no saturation level with f(x) = x beside it")
    return _shortest(lower, dtype), _shortest(upper, dtype)


def _run_end(indices, end):
    """The inner end of the run of consecutive `indices` that contains `indices[end]`."""
    step = -1 if end == -1 else 1
    position = len(indices) - 1 if end == -1 else 0
    while 0 <= position + step < len(indices) and \
            indices[position + step] == indices[position] + step:
        position += step
    return int(indices[position])


def _clip_answers(probe, lower, upper, rng):
    """`(points, f(points), clip(points))`; raises _NotClip beyond the cancellation bound or
    when the output depends on the arrangement of the tensor."""
    dtype = probe.dtype
    points = _verification_points(lower, upper, dtype, rng)
    got = probe.run(points).astype(np.float64)
    order = rng.permutation(points.size)
    again = probe.run(points[order], extra_batch=1, free_dim=5).astype(np.float64)
    unshuffled = np.empty_like(again)
    unshuffled[order] = again
    if not np.allclose(unshuffled, got, rtol=1e-6, atol=0, equal_nan=True):
        raise _NotClip("output depends on other elements or on the tensor shape")
    expected = truncated(points, lower, upper).astype(np.float64)
    error = np.abs(got - expected)
    scale = bound_scale(lower, upper)
    allowed = (2 * np.spacing((np.abs(points) + scale).astype(dtype)).astype(np.float64)
               + 2 * float(np.spacing(dtype.type(scale))))
    if np.any(np.isnan(error)) or np.any(error > allowed):
        worst = int(np.nanargmax(np.where(np.isnan(error), np.inf, error - allowed)))
        raise _NotClip(f"f({points[worst]:g}) = {got[worst]:g} where clip(x, {lower:g}, "
                       f"{upper:g}) gives {expected[worst]:g}")
    return points, got, expected


def _cancellation_note(points, got, expected, bound_scale, worst) -> str:
    error = np.abs(got - expected)
    visible = np.flatnonzero(error >= 0.1 * bound_scale) if bound_scale > 0 else []
    shown = visible[np.argmin(np.abs(points[visible]))] if len(visible) else worst
    return (f"float cancellation: f({points[shown]:g}) = {got[shown]:g} where clip gives "
            f"{expected[shown]:g}; max error {float(error[worst]):g} at x = {points[worst]:g}")


def _nonfinite_answers(probe, lower, upper):
    """`({"nan", "inf", "-inf": f(x)}, note)`; the note says where Truncation answers otherwise."""
    dtype = probe.dtype
    legacy = probe.run(np.array([np.nan, np.inf, -np.inf], dtype))
    nonfinite = {label: as_number(value) for label, value in zip(("nan", "inf", "-inf"), legacy)}
    truncation = {"inf": upper, "-inf": lower}
    differs = [f"{k} -> {float(legacy[i]):g} (Truncation: {truncation[k]:g})"
               for i, k in ((1, "inf"), (2, "-inf"))
               if not legacy[i] == dtype.type(truncation[k])]
    return nonfinite, ("legacy " + ", ".join(differs)) if differs else ""


def _gradient_mode(probe, lower, upper):
    """`("ste", "")` for dy/dx = 1 everywhere, `("clip", "")` for 1 inside / 0 outside."""
    lo, hi, width = working_interval(lower, upper)
    inside = lo + width * np.array([0.1, 0.3, 0.5, 0.7, 0.9])
    step = max(1.0, bound_scale(lower, upper))
    outside = np.concatenate([upper + step * np.array([0.5, 2, 100]) if math.isfinite(upper)
                              else [], lower - step * np.array([0.5, 2, 100])
                              if math.isfinite(lower) else []])
    try:
        grad = probe.gradient(np.concatenate([inside, outside]))
    except Exception as exc:
        return None, f"gradient could not be computed ({first_line(exc)})"
    if grad is None:
        return None, "no gradient flows through it"
    g_in, g_out = grad[: inside.size], grad[inside.size:]
    if np.allclose(g_in, 1, atol=1e-6) and np.allclose(g_out, 1, atol=1e-6):
        return "ste", ""
    if np.allclose(g_in, 1, atol=1e-6) and np.allclose(g_out, 0, atol=1e-6):
        return "clip", ""
    return None, (f"gradient is neither straight-through nor masked (inside {g_in.min():g}.."
                  f"{g_in.max():g}, outside {g_out.min():g}..{g_out.max():g}); kept")
