"""Verifying a migrated model against the legacy one on sample inputs (`verify_outputs`).

Three runs per input set (`sample_inputs`: pixel-like, standard normal, huge): the legacy
model with each replaced Lambda's activations checked against the exact clip of what it
received (`_ActivationCheck`), the legacy model with exact clips in their place (must equal
the migrated model: the rebuild kept every layer and weight), and the migrated model.
"""

from __future__ import annotations

import contextlib

import numpy as np

from edgetrunc.migrate.probe import as_number, bound_scale, truncated

VERIFY_SIDE = 256
VERIFY_BATCH = 2
HUGE_INPUT_SCALE = 1e7
CANCELLATION_NOTE = (
    "the legacy x + stop_gradient(clip(x) - x) loses the bound to float cancellation "
    "when |x| is much larger than the bound (off by up to one ulp of x, e.g. 4.0 "
    "instead of 3.0 at x = 3e7); Truncation returns the exact clip"
)


def _sample_shape(shape):
    rank = len(shape)
    dims = [VERIFY_BATCH]
    for axis, dim in enumerate(shape[1:], start=1):
        if dim is not None:
            dims.append(dim)
        elif rank >= 3 and axis == rank - 1:
            dims.append(1)
        else:
            dims.append(VERIFY_SIDE)
    return tuple(dims)


def sample_inputs(model, seed=0) -> dict:
    """Named input sets for `model`: pixel-like, standard normal and huge (x1e7) values."""
    rng = np.random.default_rng(seed)
    sets = {"pixels": [], "normal": [], "huge": []}
    for spec in model.inputs:
        shape = _sample_shape(tuple(spec.shape))
        dtype = np.dtype(spec.dtype)
        pixels = rng.integers(0, 256, shape)
        sets["pixels"].append(pixels.astype(dtype))
        if dtype.kind == "f":
            sets["normal"].append(rng.normal(0, 1, shape).astype(dtype))
            sets["huge"].append((rng.normal(0, 1, shape) * HUGE_INPUT_SCALE).astype(dtype))
    return {name: arrays for name, arrays in sets.items() if len(arrays) == len(model.inputs)}


def model_outputs(model, arrays) -> list:
    """Every output of `model` on `arrays` (one array per input), as float64 NumPy arrays."""
    import warnings

    import keras

    feed = arrays[0] if len(arrays) == 1 else arrays
    with warnings.catch_warnings():  # Keras 2 configs list the one input: [x] expected
        warnings.filterwarnings("ignore", message="The structure of `inputs`")
        result = model(feed, training=False)
    return [np.asarray(keras.ops.convert_to_numpy(t), np.float64) for t in keras.tree.flatten(result)]


def max_diff(a, b) -> float:
    """Largest |a - b| over all outputs; equal values (NaN, inf included) count as 0 and a
    NaN facing a number as inf."""
    worst = 0.0
    for x, y in zip(a, b):
        with np.errstate(invalid="ignore"):
            diff = np.abs(x - y)
        same = (x == y) | (np.isnan(x) & np.isnan(y))
        diff = np.where(same, 0.0, np.where(np.isnan(diff), np.inf, diff))
        worst = max(worst, float(np.max(diff, initial=0.0)))
    return worst


def _finite_max_abs(arrays) -> float:
    return max([float(np.max(np.abs(a[np.isfinite(a)]), initial=0.0)) for a in arrays],
               default=0.0)


class _ActivationCheck:
    """Wraps a legacy Lambda's function: returns its output and records how far it is
    from the exact clip of the activation it received, against the cancellation bound."""

    def __init__(self, fn, lower, upper):
        self.fn, self.lower, self.upper = fn, lower, upper
        self.max_error = 0.0
        self.max_input = 0.0
        self.violations = 0
        self.nonfinite_differences = 0

    def __call__(self, x, **kwargs):
        from keras import ops

        y = self.fn(x, **kwargs)
        xs = np.asarray(ops.convert_to_numpy(x))
        ys = np.asarray(ops.convert_to_numpy(y)).astype(np.float64)
        expected = truncated(xs, self.lower, self.upper).astype(np.float64)
        finite = np.isfinite(xs)
        with np.errstate(invalid="ignore", over="ignore"):
            error = np.abs(ys - expected)[finite]
            scale = bound_scale(self.lower, self.upper)
            allowed = (2 * np.spacing((np.abs(xs[finite]).astype(np.float64) + scale)
                                      .astype(xs.dtype)).astype(np.float64)
                       + 2 * float(np.spacing(xs.dtype.type(scale))))
        self.violations += int(np.sum(~(error <= allowed)))
        self.nonfinite_differences += int(np.sum(~finite & ~np.isnan(xs)
                                                 & (ys != expected)))
        self.max_error = max(self.max_error, float(np.max(error, initial=0.0)))
        self.max_input = max(self.max_input, _finite_max_abs([xs]))
        return y

    def report(self) -> dict:
        return {"max_abs_error_vs_exact_clip": self.max_error,
                "max_abs_input": self.max_input,
                "beyond_cancellation_bound": self.violations,
                "infinite_inputs_answered_differently": self.nonfinite_differences}


@contextlib.contextmanager
def _swapped_functions(layers_and_functions):
    saved = [(layer, layer.function) for layer, _ in layers_and_functions]
    try:
        for layer, fn in layers_and_functions:
            layer.function = fn
        yield
    finally:
        for layer, fn in saved:
            layer.function = fn


def _exact_clip(lower, upper):
    from edgetrunc.layers import truncate_as

    def clip(x, **kwargs):
        return truncate_as(x, lower, upper)

    return clip


def verify_outputs(legacy, migrated, replaced, seed=0) -> dict:
    """Compare the migrated model with the legacy one on sample inputs.

    `replaced` lists `(lambda_layer, verdict)`. Three runs per input set: the legacy model
    as is (each replaced Lambda's output checked against the exact clip of what it
    received), the legacy model with exact clips in place of those Lambdas (must equal
    the migrated model: proves the rebuild kept every layer and weight), and the
    migrated model.
    """
    sets = sample_inputs(legacy, seed)
    checks = {id(layer): _ActivationCheck(layer.function, v.lower, v.upper) for layer, v in replaced}
    shape = [list(_sample_shape(tuple(spec.shape))) for spec in legacy.inputs]
    report = {"inputs": {name: shape for name in sets}, "max_abs_diff": {},
              "rebuild_max_abs_diff": {}, "expected_difference": None, "passed": True}
    scale = _compare_on_sets(legacy, migrated, replaced, checks, sets, report)
    rebuild = max(report["rebuild_max_abs_diff"].values(), default=0.0)
    for key in ("max_abs_diff", "rebuild_max_abs_diff"):
        report[key] = {name: as_number(value) for name, value in report[key].items()}
    report["layers"] = {v.layer: checks[id(layer)].report() for layer, v in replaced}
    report["expected_difference"] = _expected_difference(replaced, checks)
    failures = _failures(report["layers"], rebuild, tolerance=1e-6 * max(1.0, scale))
    report["passed"] = not failures
    report["failures"] = failures
    return report


def _compare_on_sets(legacy, migrated, replaced, checks, sets, report) -> float:
    """Fill `report`'s per-set differences; return the largest finite reference output."""
    scale = 0.0
    for name, arrays in sets.items():
        with _swapped_functions([(layer, checks[id(layer)]) for layer, _ in replaced]):
            legacy_out = model_outputs(legacy, arrays)
        with _swapped_functions([(layer, _exact_clip(v.lower, v.upper)) for layer, v in replaced]):
            reference_out = model_outputs(legacy, arrays)
        migrated_out = model_outputs(migrated, arrays)
        report["max_abs_diff"][name] = max_diff(migrated_out, legacy_out)
        report["rebuild_max_abs_diff"][name] = max_diff(migrated_out, reference_out)
        scale = max(scale, _finite_max_abs(reference_out))
    return scale


def _expected_difference(replaced, checks) -> str | None:
    inexact = [v.layer for layer, v in replaced if checks[id(layer)].max_error > 0]
    infinite = [v.layer for layer, v in replaced if checks[id(layer)].nonfinite_differences]
    expected = []
    if inexact:
        expected.append(f"{', '.join(inexact)}: {CANCELLATION_NOTE}")
    if infinite:
        expected.append(f"{', '.join(infinite)}: overflowed (infinite) activations give NaN "
                        "in the legacy layer (inf - inf) and the bound in Truncation")
    if expected:
        return "; ".join(expected) + "; no other difference is allowed"
    return None


def _failures(layers, rebuild, tolerance) -> list[str]:
    failures = []
    if not rebuild <= tolerance:
        failures.append(f"the rebuilt model differs from the legacy one with exact clips by "
                        f"{rebuild:g} (> {tolerance:g})")
    for layer_name, layer_report in layers.items():
        if layer_report["beyond_cancellation_bound"]:
            failures.append(f"layer '{layer_name}' differs from clip beyond float cancellation "
                            f"on {layer_report['beyond_cancellation_bound']} sample activations")
    return failures
