"""Truncation probes: boundary values fed straight to each Truncation in every backend and delegate.

For each `Truncation` layer of the model (nested models included), a single-layer submodel (the model's input shape,
the layer's own bounds) is converted like the artifacts under test (`edgetrunc.export`, the
same format and precision) and run in Keras, TFLite with XNNPACK, TFLite's built-in kernels
and ONNX Runtime on +-T, +-T +- 1 ulp, 0, +-1e30, +-inf and NaN. The expected output is the
layer's definition: `clip(x, lower, upper)` with NaN kept. Known deviation: TFLite's built-in
MINIMUM / MAXIMUM turn NaN into a bound, XNNPACK and ONNX Runtime keep it. A NaN deviation is
a warning (a failure with `strict_nan`); any other deviation is a failure. int8 artifacts
are not probed: int8 tensors cannot hold NaN or infinity and their truncation is the int8
saturation itself. Imports TensorFlow (conversion) lazily.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from edgetrunc import _log
from edgetrunc._text import json_safe

PROBED_PRECISIONS = ("fp32", "fp16")


def probe_values(lower: float, upper: float) -> list:
    """`[(label, float32 value)]` of the boundary inputs of a clip to `[lower, upper]`; the
    open side of a one-sided clip (an infinite bound) is probed by +-1e30 and +-inf only."""
    lo, hi = np.float32(lower), np.float32(upper)
    up, down = np.float32(np.inf), np.float32(-np.inf)
    upper_side = [("+T", hi), ("+T+ulp", np.nextafter(hi, up)), ("+T-ulp", np.nextafter(hi, down))]
    lower_side = [("-T", lo), ("-T-ulp", np.nextafter(lo, down)), ("-T+ulp", np.nextafter(lo, up))]
    return [
        *(upper_side if np.isfinite(hi) else []), *(lower_side if np.isfinite(lo) else []),
        ("0", np.float32(0.0)), ("+1e30", np.float32(1e30)), ("-1e30", np.float32(-1e30)),
        ("+inf", up), ("-inf", down), ("NaN", np.float32(np.nan)),
    ]


def expected_clip(values: np.ndarray, lower: float, upper: float) -> np.ndarray:
    """The Truncation definition: clip with NaN kept (numpy's minimum/maximum propagate NaN)."""
    return np.minimum(np.maximum(values, np.float32(lower)), np.float32(upper)).astype(np.float32)


@dataclass
class ProbeResult:
    """One Truncation layer in one backend (JSON-ready with `to_dict`)."""

    layer: str
    lower: float
    upper: float
    format: str
    precision: str
    backend: str
    values: list = field(default_factory=list)  # [{"input", "value", "expected", "got", "status"}]
    opset: int | None = None
    nan_deviations: int = 0
    value_deviations: int = 0
    error: str | None = None

    def to_dict(self):
        return asdict(self)


def _submodel(name: str, lower: float, upper: float, input_shape):
    import keras

    from edgetrunc.layers import Truncation

    inputs = keras.Input(tuple(input_shape), name="input")
    outputs = Truncation(lower=lower, upper=upper, name=name)(inputs)
    return keras.Model(inputs, outputs, name=f"probe_{name}")


def _convert(submodel, fmt: str, precision: str, opset: int | None = None):
    """Bytes of the submodel converted the way artifacts are (`edgetrunc.export`, same opset)."""
    from edgetrunc.export.formats import export_format

    with _log.stdout_to_stderr():
        kwargs = {"opset": opset} if opset else {}
        return export_format(fmt).export.artifact(submodel, precision, **kwargs)


def _tolerance(precision: str, expected: np.ndarray) -> np.ndarray:
    if precision == "fp16":
        return np.abs(expected) * 2.0 ** -10
    return np.zeros_like(expected)


def _judge(result: ProbeResult, labels, values, expected, got, precision):
    tolerance = _tolerance(precision, expected)
    for label, value, want, have, tol in zip(labels, values, expected, got, tolerance):
        if np.isnan(want):
            status = "ok" if np.isnan(have) else "nan"
        elif np.isnan(have):
            status = "value"
        else:
            status = "ok" if abs(float(have) - float(want)) <= tol or have == want else "value"
        result.nan_deviations += status == "nan"
        result.value_deviations += status == "value"
        result.values.append({"input": label, "value": json_safe(float(value)),
                              "expected": json_safe(float(want)), "got": json_safe(float(have)),
                              "status": status})


def _probe_shape(model, input_shape, count: int) -> tuple:
    """The probe submodel's input: the model's input shape; for several inputs (`{name:
    shape}`) the first that holds the `count` probe values, else a vector of them."""
    if not isinstance(input_shape, dict):
        return tuple(input_shape or model.inputs[0].shape[1:])
    return next((tuple(shape) for shape in input_shape.values() if np.prod(shape) >= count),
                (count,))


def run_probes(model, configurations, input_shape=None) -> list:
    """Probe every Truncation of `model` for each `(format, precision[, opset])` in `configurations`
    (`input_shape`: the model's sample shape, or `{input name: shape}` for several inputs).

    Returns `ProbeResult`s: one `keras` row per layer, then one per backend and delegate.
    """
    from edgetrunc.keras.runner import KerasRunner
    from edgetrunc.keras.truncations import find_truncations
    from edgetrunc.runtime import RunnerOptions, formats

    results = []
    for found in find_truncations(model):
        name, lower, upper = found["layer"], found["lower"], found["upper"]
        labels, values = zip(*probe_values(lower, upper))
        values = np.array(values, np.float32)
        input_shape = _probe_shape(model, input_shape, len(values))
        size = int(np.prod(input_shape))
        if size < len(values):
            raise ValueError(f"input of {size} elements cannot hold {len(values)} probe values")
        batch = np.zeros((1, *input_shape), np.float32)
        batch.reshape(-1)[:len(values)] = values
        expected = expected_clip(values, lower, upper)
        submodel = _submodel(name, lower, upper, input_shape)

        keras_row = ProbeResult(name, lower, upper, "keras", "fp32", "keras")
        got = next(iter(KerasRunner(submodel).infer(batch).values())).reshape(-1)[:len(values)]
        _judge(keras_row, labels, values, expected, got, "fp32")
        results.append(keras_row)

        for configuration in configurations:
            fmt, precision = configuration[:2]
            backends = formats.get(fmt).probe_backends
            opset = configuration[2] if len(configuration) > 2 and configuration[2] else None
            if precision not in PROBED_PRECISIONS:
                continue
            try:
                content = _convert(submodel, fmt, precision, opset)
            except Exception as exc:  # a conversion failure is reported in the probe table
                for backend in backends:
                    results.append(ProbeResult(name, lower, upper, fmt, precision, backend,
                                               error=f"conversion failed: {str(exc).splitlines()[0][:160]}"))
                continue
            for backend, options in backends.items():
                row = ProbeResult(name, lower, upper, fmt, precision, backend, opset=opset)
                with formats.get(fmt).open(content, RunnerOptions(**options)) as runner:
                    got = next(iter(runner.infer(batch).values())).reshape(-1)[:len(values)]
                _judge(row, labels, values, expected, got, precision)
                results.append(row)
    return results
