"""`check_parity`: the whole parity run (inputs, runners, comparison, per-layer, probes) as one report.

Loads the Keras reference and every artifact (bad or mismatched files raise `InputError`
before anything runs), builds the inputs, runs every backend batched through the
`Comparator`, judges each artifact with the `CompareFunc`, optionally maps every layer and
probes every Truncation, and returns a `ParityReport` whose `to_dict()` is the JSON report.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from edgetrunc import _log
from edgetrunc._io import check_run_paths
from edgetrunc.data.stego_cache import DEFAULT_EMBEDDING
from edgetrunc.errors import InputError
from edgetrunc.metrics import nearly_constant
from edgetrunc.parity.comparator import DEFAULT_BATCH_SIZE, Comparator
from edgetrunc.parity.compare import CompareFunc
from edgetrunc.parity.golden import check_golden_target, golden_outputs, load_golden
from edgetrunc.parity.input_feeds import check_artifact_input, reference_shapes, sample_dims
from edgetrunc.parity.inputs import parity_inputs, protected_inputs
from edgetrunc.parity.results import ArtifactReport, ParityReport

PER_LAYER_SAMPLES = 8
BATCH_BYTES = 256 * 2 ** 20  # Keras layer outputs of one batch of the output comparison


def _artifact_format(path: Path):
    from edgetrunc.runtime import formats

    fmt = formats.find(path)
    if fmt is None:
        recorded = "".join(f" (or {f.suffix} {f.description})" for f in formats.formats()
                           if not f.has_model)
        raise InputError(f"{path}: expected a {' or '.join(formats.suffixes(runnable=True))} "
                         f"artifact{recorded}, got '{path.suffix.lower() or 'no suffix'}'")
    return fmt


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
    from edgetrunc.runtime import RunnerOptions

    threads = threads or usable_cores()
    runners = []
    for path in map(Path, paths):
        fmt = _artifact_format(path)
        if not fmt.has_model:  # recorded outputs
            runners.append(fmt.open(path))
            continue
        runner = fmt.open(path, RunnerOptions(threads=threads, **fmt.shared_cores))
        check_artifact_input(runner, expected_shape)
        runners.append(runner)
    return runners


def _check_tolerances(atol, rtol) -> None:
    for value, name in ((atol, "atol"), (rtol, "rtol")):
        if value is not None and not (np.isfinite(value) and value >= 0):
            raise InputError(f"{name}: expected a finite number >= 0; got {value}", param=name)


def _open_reference(model, threads, batch_size, custom_objects=None, trust_lambda=False):
    """`(KerasRunner, input shape)`: `(S, S, C)` of an image model (`image_geometry`: a free
    size is 256x256), else the model's own input shape, whose dimensions must then be fixed."""
    from edgetrunc.data.geometry import image_geometry
    from edgetrunc.keras.runner import KerasRunner

    keras_runner = KerasRunner(model, threads=threads, batch_size=batch_size,
                               custom_objects=custom_objects, trust_lambda=trust_lambda)
    if len(keras_runner.input_names()) > 1:
        return keras_runner, reference_shapes(keras_runner)
    geometry = image_geometry(keras_runner)
    if geometry is not None:
        return keras_runner, geometry.shape
    shape = tuple(keras_runner.metadata().inputs[0].shape[1:])
    if len(shape) == 3:  # an image of other channels or a non-square one: free sides 256
        shape = tuple(d if d is not None else default for d, default in zip(shape, (256, 256, 1)))
    if any(d is None for d in shape):
        raise InputError(f"{keras_runner.path}: model input {[None, *shape]} has free dimensions "
                         "and is not an image; parity needs fixed input dimensions")
    return keras_runner, shape


def _bounded_batch_size(keras_runner, shape, batch_size: int) -> int:
    """`batch_size`, or fewer inputs per call when one input's layer outputs are large (a
    512x512 or a deep net): every runner keeps buffers sized by the batches it ran."""
    per_input = keras_runner.layer_output_bytes(sample_dims(shape))
    bounded = max(1, min(int(batch_size), BATCH_BYTES // max(per_input, 1)))
    if bounded < batch_size:
        _log.info(f"parity: batches of {bounded} input(s) ({per_input / 2 ** 20:.0f} MB of layer "
                  "outputs per input)")
        keras_runner.batch_size = bounded
    return bounded


def _save_inputs(path, data, protect) -> None:
    from edgetrunc.runtime.recorded import save_inputs

    save_inputs(path, data.x, data.labels, data.names, protect=protect)
    _log.info(f"parity: wrote the inputs to {path} (for edgetrunc run on a device)")


def _judged_precisions(keras_model, precisions: dict, warnings: list) -> dict:
    """The precision whose tolerances apply to each artifact: fp32 artifacts of a
    mixed-precision model are judged like fp16."""
    from edgetrunc.keras.precision import reduced_precision_layers

    reduced = reduced_precision_layers(keras_model)
    if not reduced:
        return dict(precisions)
    warnings.append(f"the Keras model computes in reduced precision ({len(reduced)} layer(s), "
                    f"e.g. {reduced[0]}: a mixed-precision policy): fp32 artifacts are judged "
                    "with the fp16 tolerances")
    return {key: "fp16" if value == "fp32" else value for key, value in precisions.items()}


def _constant_reference_warnings(reference, samples: int, warnings: list) -> None:
    probability = reference.probability
    if probability is not None and nearly_constant(probability):
        warnings.append(f"reference outputs are nearly constant (stego probability std "
                        f"{float(np.std(probability)):.2e} over {samples} inputs): "
                        "agreement proves little; use a trained model and real images")
    if probability is None:
        first = next(iter(reference.outputs.values()))
        if first.size > 1 and float(np.std(first)) < 1e-6:
            warnings.append("reference outputs are nearly constant: agreement proves little")


def _artifact_report(runner, comparison, precision: str, tolerance: dict, result) -> ArtifactReport:
    meta = runner.metadata()
    return ArtifactReport(str(runner.path), meta.format, precision, comparison, tolerance,
                          _samples_per_second(runner, result),
                          metadata={"backend": meta.backend, "layout": meta.layout,
                                    "threads": runner.threads,
                                    "input": meta.inputs[0].shape and list(meta.inputs[0].shape),
                                    **({"inputs": {name: list(info.shape) for name, info in zip(
                                        runner.input_names(), meta.inputs)}}
                                       if len(meta.inputs) > 1 else {}),
                                    "where": _where(runner)})


def _where(runner) -> dict:
    """Where the artifact's outputs were computed: the recording's machine, else this one."""
    from edgetrunc.runtime.host import where_it_ran

    recorded = (runner.metadata().recorded or {}).get("where")
    return recorded if isinstance(recorded, dict) else where_it_ran()


def _compare_layers(reports: list, runners: list, keras_runner, batch, strict_layers: bool,
                    warnings: list) -> None:
    """Map every artifact's tensors to the Keras layers and name each one's first divergent layer
    (the Keras layer outputs computed once for all of them)."""
    from edgetrunc.parity.per_layer import compare_artifacts_layers

    local = []
    for report, runner in zip(reports, runners):
        fmt = _artifact_format(runner.path)
        if not fmt.intermediates:
            what = "recorded outputs hold" if not fmt.has_model else f"a {fmt.name} runner keeps"
            warnings.append(f"{runner.path.name}: {what} no intermediates; no per-layer comparison")
        else:
            local.append((report, runner))
    if not local:
        return
    _log.info(f"parity: per-layer comparison of {', '.join(r.path.name for _, r in local)}")
    found = compare_artifacts_layers(keras_runner, [(r.path, rep.format, rep.precision) for rep, r in local],
                                     batch, threads=local[0][1].threads)
    for (report, runner), (layers, first) in zip(local, found):
        report.layers, report.first_divergent_layer = layers, first
        _judge_layers(report, runner, strict_layers, warnings)


def _judge_layers(report: ArtifactReport, runner, strict_layers: bool, warnings: list) -> None:
    unmapped = [layer.layer for layer in report.layers if layer.status == "unmapped"]
    if unmapped:
        warnings.append(f"{runner.path.name}: layers without an artifact tensor: {', '.join(unmapped)}")
    comparison = report.comparison
    if report.first_divergent_layer and strict_layers:
        comparison.failures.append(f"layer {report.first_divergent_layer} diverges beyond the "
                                   "per-layer bound (strict_layers=True)")
    elif report.first_divergent_layer and comparison.passed:
        warnings.append(f"{runner.path.name}: outputs within tolerance but layer "
                        f"{report.first_divergent_layer} diverges beyond the per-layer bound "
                        "(strict_layers=True makes it a failure)")


def _compare_layer_groups(data, reports, runners, precisions, keras_runner, samples, strict_layers,
                          warnings) -> None:
    """Per-layer comparison, one pass of Keras for every artifact that compares on the same
    inputs: the float artifacts on the first inputs, the int8 ones inside their calibration
    domain (`per_layer_batch`)."""
    groups = {}
    for report, runner in zip(reports, runners):
        kind = "int8" if precisions[str(runner.path)].startswith("int8") else "float"
        if kind not in groups:
            groups[kind] = (per_layer_batch(data, precisions[str(runner.path)], samples,
                                            runner.path.name, warnings), [], [])
        groups[kind][1].append(report)
        groups[kind][2].append(runner)
    for batch, group_reports, group_runners in groups.values():
        _compare_layers(group_reports, group_runners, keras_runner, batch, strict_layers, warnings)


def per_layer_batch(data, precision: str, samples: int, name: str, warnings: list):
    """The inputs compared layer by layer: the first `samples`; for an int8 artifact the first
    ones inside its calibration domain (photos: covers, stego, a folder), not random images,
    whose noise drives int8 tensors to their range edges (errors that are not int8 rounding).
    With no photo among the inputs, one warning says so."""
    count = max(1, min(int(samples), len(data.x)))
    if not precision.startswith("int8"):
        return data.x[:count]
    inside = [i for i, label in enumerate(data.names) if not str(label).startswith("random#")]
    if inside:
        return data.x[inside[:count]]
    warnings.append(f"{name}: int8 per-layer comparison on random images, which leave the "
                    "calibration domain (photos): their noise saturates int8 ranges, so layer "
                    "errors there are not int8 rounding; use inputs=covers")
    return data.x[:count]


def _probe_truncations(keras_model, reports: list, runners: list, shape, strict_nan: bool,
                       warnings: list) -> list:
    """Probe every Truncation in each (format, precision, opset) of the local artifacts."""
    from edgetrunc.export.formats import export_format
    from edgetrunc.parity.probes import run_probes

    local = []
    for report, runner in zip(reports, runners):
        fmt = _artifact_format(runner.path)
        if not fmt.has_model:  # recorded outputs: no model there
            continue
        if fmt.export is None or not fmt.probe_backends:
            warnings.append(f"{runner.path.name}: the {fmt.name} format has no exporter to "
                            "probe its truncations with; no probes")
        else:
            local.append(report)
    opset = {r.path: export_format(r.format).export.opset(r.path) or 0 for r in local}
    configurations = sorted({(r.format, r.precision, opset[r.path]) for r in local},
                            key=lambda c: (c[0], c[1], c[2] or 0))
    _log.info("parity: truncation probes")
    probe_results = run_probes(keras_model, configurations, shape)
    for probe in probe_results:
        if probe.nan_deviations and not strict_nan:
            warnings.append(f"{probe.layer} [{probe.backend}, {probe.precision}]: NaN input gives "
                            f"{next(v['got'] for v in probe.values if v['status'] == 'nan')} "
                            "instead of NaN (warning; strict_nan=True makes it a failure)")
    return probe_results


def _reference_entry(keras_runner, result) -> dict:
    from edgetrunc._io import sha256_file

    reference = {"path": str(keras_runner.path), "format": "keras",
                 "backend": keras_runner.metadata().backend,
                 "samples_per_second": result.samples_per_second}
    if Path(str(keras_runner.path)).is_file():
        reference["sha256"] = sha256_file(keras_runner.path)
    return reference


def _attach_outputs(report: ParityReport, runners: list, results) -> None:
    """Keep each artifact's stego probability and output errors for the plots."""
    ref_first = next(iter(results.reference.outputs.values()))
    for runner in runners:
        key = str(runner.path)
        report.probabilities[key] = results[key].probability
        got_first = next(iter(results[key].outputs.values()))
        if ref_first.shape == got_first.shape:
            report.output_errors[key] = np.abs(ref_first.astype(np.float64) - got_first).ravel()


def check_parity(model, artifacts, samples: int = 64, inputs: str = "mix", per_layer: bool = False,
                 probes: bool = True, strict_nan: bool = False, atol: float | None = None,
                 rtol: float | None = None, seed: int = 0, batch_size: int = DEFAULT_BATCH_SIZE,
                 per_layer_samples: int = PER_LAYER_SAMPLES, compare_func=None,
                 threads: int | None = None, save_inputs=None, strict_layers: bool = False,
                 embedding: str = DEFAULT_EMBEDDING, stego_cache=None,
                 workers: int | None = None, custom_objects=None, trust_lambda: bool = False,
                 save_outputs=None, load_outputs=None, force: bool = False) -> ParityReport:
    """Compare the Keras `model` (path or `keras.Model`) with every artifact path; see the module
    docstring. `embedding` (lsbm, hill, suniward, wow) makes the stego inputs; the
    content-adaptive ones come from the stego cache (`stego_cache`, filled by `workers`).
    `custom_objects`: a dict or the path of your own `.py` file (run) the model needs;
    `trust_lambda`: load the model's Lambda layers (their stored code runs).
    `save_outputs` writes every runner's outputs as golden outputs (`parity.golden`; an existing
    file only with `force`); `load_outputs` runs on a golden file's inputs and compares every
    runner with its golden outputs too (then no artifact is needed)."""
    from edgetrunc.data.stego_cache import StegoSettings

    start = time.perf_counter()
    if not artifacts and load_outputs is None:
        raise InputError("no artifact given; expected one or more .tflite / .onnx files")
    _check_tolerances(atol, rtol)
    golden = _load_golden(load_outputs)
    inputs = inputs if golden is None else str(load_outputs)
    protect = protected_inputs(model, artifacts, inputs)
    check_run_paths({"save_inputs": save_inputs, "save_outputs": save_outputs,  # before any work
                     "stego_cache": stego_cache}, {"input": protect}, folders=("stego_cache",))
    check_golden_target(save_outputs, force)
    stego = StegoSettings.of_run(embedding, stego_cache, workers)
    keras_runner, shape = _open_reference(model, threads, batch_size, custom_objects, trust_lambda)
    if isinstance(shape, dict) and (golden is not None or save_outputs is not None):
        raise InputError(f"{keras_runner.path}: golden outputs are kept for a model with one "
                         f"input; this one has {len(shape)} ({', '.join(shape)})")
    if golden is not None:
        golden.check_model(keras_runner.model.name, shape)
    batch_size = _bounded_batch_size(keras_runner, shape, batch_size)
    runners = open_artifacts(artifacts, shape, threads)
    data = parity_inputs(inputs, samples, seed, shape, stego=stego)
    _log.info(f"parity: {len(data.x)} inputs ({data.kind}), {len(runners)} artifact(s)")
    if save_inputs is not None:
        _save_inputs(save_inputs, data, protect)

    names = ["keras"] + [str(r.path) for r in runners]
    results = Comparator.run([keras_runner] + runners, data.x, batch_size=batch_size, names=names)
    precisions = {str(r.path): r.metadata().artifact_precision for r in runners}
    warnings = []
    judged = _judged_precisions(keras_runner.model, precisions, warnings)
    compare_func = compare_func or CompareFunc.simple(atol=atol, rtol=rtol)
    comparisons = Comparator.compare_accuracy(results, compare_func, labels=data.labels,
                                              precisions=judged)
    _constant_reference_warnings(results.reference, len(data.x), warnings)

    reports = []
    for runner in runners:
        key = str(runner.path)
        tolerance = (compare_func.tolerance_for(judged[key]).to_dict()
                     if hasattr(compare_func, "tolerance_for") else {})
        reports.append(_artifact_report(runner, comparisons[key], precisions[key], tolerance, results[key]))
    if per_layer:
        _compare_layer_groups(data, reports, runners, precisions, keras_runner, per_layer_samples,
                              strict_layers, warnings)

    probe_results = _probe_truncations(keras_runner.model, reports, runners, shape, strict_nan,
                                       warnings) if probes else []
    report = ParityReport(_reference_entry(keras_runner, results.reference), data, reports,
                          probe_results, warnings, strict_nan, per_layer,
                          time.perf_counter() - start, results.reference.probability)
    _attach_outputs(report, runners, results)
    if golden is not None or save_outputs is not None:
        golden_outputs(report, keras_runner, runners, results, judged, compare_func,
                        data.x[:max(1, min(per_layer_samples, len(data.x)))], golden,
                        save_outputs, force, protect)
    return report


def _load_golden(path):
    return None if path is None else load_golden(path)
