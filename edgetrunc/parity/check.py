"""`check_parity`: the whole parity run (inputs, runners, comparison, per-layer, probes) as one report.

Loads the Keras reference and every artifact (bad or mismatched files raise `InputError`
before anything runs), builds the inputs, runs every backend batched through the
`Comparator`, judges each artifact with the `CompareFunc`, optionally maps every layer and
probes every Truncation, and returns a `ParityReport` whose `to_dict()` is the JSON report.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgetrunc import _log
from edgetrunc.errors import InputError
from edgetrunc.parity.comparator import DEFAULT_BATCH_SIZE, Comparator
from edgetrunc.parity.compare import DECISION_THRESHOLD, CompareFunc, nearly_constant
from edgetrunc.parity.inputs import parity_inputs

PER_LAYER_SAMPLES = 8
ARTIFACT_SUFFIXES = (".tflite", ".onnx", ".npz")  # .npz: outputs recorded on a device


@dataclass
class ArtifactReport:
    path: str
    format: str
    precision: str
    comparison: object  # OutputComparison
    tolerance: dict
    samples_per_second: float
    layers: list = field(default_factory=list)
    first_divergent_layer: str | None = None
    metadata: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.comparison.passed

    def to_dict(self) -> dict:
        stats = self.comparison.to_dict()
        out = {"path": self.path, "format": self.format, "precision": self.precision,
               "passed": self.passed}
        out.update({k: v for k, v in stats.items() if k != "passed"})
        out.update({"tolerance": self.tolerance, "samples_per_second": self.samples_per_second,
                    "first_divergent_layer": self.first_divergent_layer,
                    "layers": [layer.to_dict() for layer in self.layers],
                    "runtime": self.metadata})
        return out


@dataclass
class ParityReport:
    reference: dict
    inputs: object  # InputSet
    artifacts: list
    probes: list
    warnings: list
    strict_nan: bool
    per_layer: bool
    seconds: float
    reference_probability: np.ndarray | None = None
    probabilities: dict = field(default_factory=dict)
    output_errors: dict = field(default_factory=dict)

    @property
    def probe_failures(self) -> list:
        failures = []
        for probe in self.probes:
            if probe.error:
                failures.append(f"{probe.layer} [{probe.backend} {probe.precision}]: {probe.error}")
            if probe.value_deviations:
                failures.append(f"{probe.layer} [{probe.backend} {probe.precision}]: "
                                f"{probe.value_deviations} boundary value(s) deviate")
            if probe.nan_deviations and self.strict_nan:
                failures.append(f"{probe.layer} [{probe.backend} {probe.precision}]: NaN not propagated "
                                "(--strict-nan)")
        return failures

    @property
    def passed(self) -> bool:
        return all(a.passed for a in self.artifacts) and not self.probe_failures

    def disagreements(self, path: str, limit: int = 20) -> list:
        """Inputs whose decision differs between Keras and the artifact (largest gap first)."""
        ref, got = self.reference_probability, self.probabilities.get(path)
        if ref is None or got is None:
            return []
        flipped = np.flatnonzero((ref >= DECISION_THRESHOLD) != (got >= DECISION_THRESHOLD))
        flipped = flipped[np.argsort(-np.abs(ref[flipped] - got[flipped]))][:limit]
        labels = self.inputs.labels
        return [{"input": self.inputs.names[i], "label": int(labels[i]) if labels[i] >= 0 else None,
                 "keras": float(ref[i]), "artifact": float(got[i])} for i in flipped]

    def to_dict(self) -> dict:
        artifacts = []
        for a in self.artifacts:
            entry = a.to_dict()
            entry["disagreements"] = self.disagreements(a.path)
            artifacts.append(entry)
        return {
            "passed": self.passed,
            "reference": self.reference,
            "samples": int(len(self.inputs.x)),
            "inputs": self.inputs.describe(),
            "per_layer": self.per_layer,
            "strict_nan": self.strict_nan,
            "artifacts": artifacts,
            "probes": [p.to_dict() for p in self.probes],
            "probe_failures": self.probe_failures,
            "warnings": list(self.warnings),
            "seconds": round(self.seconds, 3),
        }


def _artifact_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in ARTIFACT_SUFFIXES:
        raise InputError(f"{path}: expected a .tflite or .onnx artifact (or .npz outputs recorded by "
                         f"edgetrunc run), got '{suffix or 'no suffix'}'")
    return suffix[1:]


def _check_input_shape(runner, expected: tuple) -> None:
    meta = runner.metadata()
    shape = meta.inputs[0].shape
    if len(shape) != 4:
        raise InputError(f"{runner.path}: artifact input has shape {list(shape)}; expected "
                         f"[N, {', '.join(map(str, expected))}] like the Keras model")
    hwc = tuple(shape[1:]) if meta.layout == "NHWC" else (shape[2], shape[3], shape[1])
    if any(a is not None and b is not None and a != b for a, b in zip(hwc, expected)):
        shown = ", ".join("?" if d is None else str(d) for d in hwc)
        raise InputError(f"{runner.path}: artifact input is [N, {shown}] ({meta.layout}); the Keras "
                         f"model takes [N, {', '.join(map(str, expected))}]")


def artifact_precision(runner) -> str:
    """The precision the exporter recorded in the artifact, else the one read from its graph."""
    meta = runner.metadata()
    recorded = (meta.extra.get("embedded") or meta.extra.get("metadata_props") or {}).get("precision")
    return recorded if recorded in ("fp32", "fp16", "int8") else meta.precision


def _samples_per_second(runner, result) -> float:
    """Throughput of a backend here; for recorded outputs, the one measured on the device."""
    if runner.format == "recorded":
        return float(runner.record.get("samples_per_second") or float("nan"))
    return result.samples_per_second


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def open_artifacts(paths, expected_shape, threads=None) -> list:
    """Create a runner for every artifact (InputError on a missing, corrupt or mismatched file).

    `threads` defaults to every usable core: the backends run one after another, so each may
    take the whole machine (TFLite's own default is one thread). ONNX Runtime's workers do not
    spin between runs, which would take cores from the backend that runs next.
    """
    from edgetrunc.runtime import open_runner

    threads = threads or usable_cores()
    runners = []
    for path in map(Path, paths):
        fmt = _artifact_format(path)
        if fmt == "npz":
            from edgetrunc.runtime.recorded import RecordedRunner

            runners.append(RecordedRunner(path))
            continue
        options = {"spin": False} if fmt == "onnx" else {}
        runner = open_runner(path, threads=threads, **options)
        _check_input_shape(runner, expected_shape)
        runners.append(runner)
    return runners


def check_parity(model, artifacts, samples: int = 64, inputs: str = "mix", per_layer: bool = False,
                 probes: bool = True, strict_nan: bool = False, atol: float | None = None,
                 rtol: float | None = None, seed: int = 0, batch_size: int = DEFAULT_BATCH_SIZE,
                 per_layer_samples: int = PER_LAYER_SAMPLES, compare_func=None,
                 threads: int | None = None, save_inputs=None, strict_layers: bool = False) -> ParityReport:
    """Compare the Keras `model` (path or `keras.Model`) with every artifact path; see the module docstring."""
    from edgetrunc._io import sha256_file
    from edgetrunc.parity.keras_runner import KerasRunner

    start = time.perf_counter()
    if not artifacts:
        raise InputError("no artifact given; expected one or more .tflite / .onnx files")
    for value, option in ((atol, "--atol"), (rtol, "--rtol")):
        if value is not None and not (np.isfinite(value) and value >= 0):
            raise InputError(f"{option}: expected a finite number >= 0; got {value}")
    keras_runner = KerasRunner(model, threads=threads, batch_size=batch_size)
    shape = tuple(keras_runner.metadata().inputs[0].shape[1:])
    if len(shape) != 3:
        raise InputError(f"{keras_runner.path}: model input {list(shape)}; expected an image [H, W, C]")
    shape = tuple(d if d is not None else default for d, default in zip(shape, (256, 256, 1)))
    runners = open_artifacts(artifacts, shape, threads)
    data = parity_inputs(inputs, samples, seed, shape)
    _log.info(f"parity: {len(data.x)} inputs ({data.kind}), {len(runners)} artifact(s)")
    if save_inputs is not None:
        from edgetrunc.runtime.recorded import save_inputs as write_inputs

        write_inputs(save_inputs, data.x, data.labels, data.names,
                     protect=[str(model)] if isinstance(model, (str, Path)) else [])
        _log.info(f"parity: wrote the inputs to {save_inputs} (for edgetrunc run on a device)")

    names = ["keras"] + [str(r.path) for r in runners]
    results = Comparator.run([keras_runner] + runners, data.x, batch_size=batch_size, names=names)
    precisions = {str(r.path): artifact_precision(r) for r in runners}
    warnings = []
    judged = dict(precisions)  # the precision whose tolerances apply
    from edgetrunc.keras.precision import reduced_precision_layers

    reduced = reduced_precision_layers(keras_runner.model)
    if reduced:
        judged = {key: "fp16" if value == "fp32" else value for key, value in precisions.items()}
        warnings.append(f"the Keras model computes in reduced precision ({len(reduced)} layer(s), "
                        f"e.g. {reduced[0]}: a mixed-precision policy): fp32 artifacts are judged "
                        "with the fp16 tolerances")
    compare_func = compare_func or CompareFunc.simple(atol=atol, rtol=rtol)
    comparisons = Comparator.compare_accuracy(results, compare_func, labels=data.labels,
                                              precisions=judged)

    reference_probability = results.reference.probability
    if reference_probability is not None and nearly_constant(reference_probability):
        warnings.append(f"reference outputs are nearly constant (stego probability std "
                        f"{float(np.std(reference_probability)):.2e} over {len(data.x)} inputs): "
                        "agreement proves little; use a trained model and real images")
    if reference_probability is None:
        first = next(iter(results.reference.outputs.values()))
        if first.size > 1 and float(np.std(first)) < 1e-6:
            warnings.append("reference outputs are nearly constant: agreement proves little")

    layer_outputs = None
    per_layer_batch = data.x[:max(1, min(per_layer_samples, len(data.x)))]
    reports = []
    for runner in runners:
        key = str(runner.path)
        meta = runner.metadata()
        comparison = comparisons[key]
        precision = precisions[key]
        report = ArtifactReport(key, meta.format, precision, comparison,
                                compare_func.tolerance_for(judged[key]).to_dict()
                                if hasattr(compare_func, "tolerance_for") else {},
                                _samples_per_second(runner, results[key]),
                                metadata={"backend": meta.extra.get("backend"),
                                          "layout": meta.layout, "threads": runner.threads,
                                          "input": meta.inputs[0].shape and list(meta.inputs[0].shape)})
        if per_layer and runner.format == "recorded":
            warnings.append(f"{runner.path.name}: recorded outputs hold no intermediates; "
                            "no per-layer comparison")
        elif per_layer:
            from edgetrunc.parity.per_layer import compare_artifact_layers

            if layer_outputs is None:
                layer_outputs = keras_runner.layer_outputs(per_layer_batch)
            _log.info(f"parity: per-layer comparison of {runner.path.name}")
            report.layers, report.first_divergent_layer = compare_artifact_layers(
                keras_runner, runner.path, meta.format, precision, per_layer_batch, layer_outputs)
            unmapped = [layer.layer for layer in report.layers if layer.status == "unmapped"]
            if unmapped:
                warnings.append(f"{runner.path.name}: layers without an artifact tensor: {', '.join(unmapped)}")
            if report.first_divergent_layer and strict_layers:
                comparison.failures.append(f"layer {report.first_divergent_layer} diverges beyond the "
                                           "per-layer bound (--strict-layers)")
            elif report.first_divergent_layer and comparison.passed:
                warnings.append(f"{runner.path.name}: outputs within tolerance but layer "
                                f"{report.first_divergent_layer} diverges beyond the per-layer bound "
                                "(--strict-layers makes it a failure)")
        reports.append(report)

    probe_results = []
    if probes:
        from edgetrunc.parity.probes import onnx_opset, run_probes

        local = [r for r, runner in zip(reports, runners) if runner.format != "recorded"]  # no model there
        configurations = sorted({(r.format, r.precision, onnx_opset(r.path) if r.format == "onnx" else 0)
                                 for r in local}, key=lambda c: (c[0], c[1], c[2] or 0))
        _log.info("parity: truncation probes")
        probe_results = run_probes(keras_runner.model, configurations, shape)
        for probe in probe_results:
            if probe.nan_deviations and not strict_nan:
                warnings.append(f"{probe.layer} [{probe.backend}, {probe.precision}]: NaN input gives "
                                f"{next(v['got'] for v in probe.values if v['status'] == 'nan')} "
                                "instead of NaN (warning; --strict-nan makes it a failure)")

    reference = {"path": str(keras_runner.path), "format": "keras",
                 "backend": keras_runner.metadata().extra.get("backend"),
                 "samples_per_second": results.reference.samples_per_second}
    if Path(str(keras_runner.path)).is_file():
        reference["sha256"] = sha256_file(keras_runner.path)
    report = ParityReport(reference, data, reports, probe_results, warnings, strict_nan, per_layer,
                          time.perf_counter() - start, reference_probability)
    for runner in runners:
        key = str(runner.path)
        report.probabilities[key] = results[key].probability
        ref_first = next(iter(results.reference.outputs.values()))
        got_first = next(iter(results[key].outputs.values()))
        if ref_first.shape == got_first.shape:
            report.output_errors[key] = np.abs(ref_first.astype(np.float64) - got_first).ravel()
    return report
