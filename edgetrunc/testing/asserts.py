"""`assert_parity` and `assert_truncations_exported`: parity as assertions in a user's tests.

Every failure is an `AssertionError`. A parity failure's message is the summary a person
needs (`parity_summary`): per failing artifact its failures, the worst sample and its error
against the tolerance, the worst layer and the first divergent one (per-layer runs), moved
golden outputs with what changed in the toolchain. Bad input (a missing artifact, a golden file
of another model, inputs of the wrong shape) is one line. Artifacts given as bytes (or an ONNX
`ModelProto`) are written to a temporary folder for the run and removed afterwards.
"""

from __future__ import annotations

import json
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from edgetrunc.errors import InputError

RECENT_REPORTS: list = []  # reports of the running test, read by the pytest plugin's --parity-html


def _as_list(artifacts) -> list:
    if artifacts is None:
        return []
    if isinstance(artifacts, (str, Path, bytes, bytearray, memoryview)) or hasattr(artifacts, "SerializeToString"):
        return [artifacts]
    return list(artifacts)


def _content(artifact) -> bytes | None:
    if hasattr(artifact, "SerializeToString"):
        return artifact.SerializeToString()
    if isinstance(artifact, (bytes, bytearray, memoryview)):
        return bytes(artifact)
    return None


@contextmanager
def artifact_paths(artifacts):
    """Paths of `artifacts` (paths, bytes or ONNX protos); bytes live in a temporary folder
    while the block runs."""
    from edgetrunc.runtime.metadata import is_tflite

    items = _as_list(artifacts)
    with tempfile.TemporaryDirectory(prefix="edgetrunc-artifacts-") as folder:
        paths = []
        for i, artifact in enumerate(items):
            content = _content(artifact)
            if content is None:
                paths.append(Path(artifact))
                continue
            path = Path(folder) / f"artifact{i}.{'tflite' if is_tflite(content) else 'onnx'}"
            path.write_bytes(content)
            paths.append(path)
        yield paths


@contextmanager
def _assertions():
    """InputError (bad input) as a one-line AssertionError."""
    try:
        yield
    except InputError as exc:
        raise AssertionError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None


def assert_parity(model, artifacts=(), *, inputs="mix", samples: int = 64, atol: float | None = None,
                  rtol: float | None = None, per_layer: bool = False, strict_layers: bool = False,
                  strict_nan: bool = False, probes: bool = True, seed: int = 0,
                  per_layer_samples: int = 8, golden=None, threads: int | None = None, **options):
    """Assert that every artifact computes what the Keras `model` computes; return the
    `ParityReport` when it does.

    `model`: a `.keras` path or a `keras.Model`; `artifacts`: one or more `.tflite` / `.onnx`
    paths or bytes, or `.npz` outputs recorded on a device (`edgetrunc run`, with
    `inputs=` the inputs file given to it). The tolerances and options have the command
    line's defaults and meanings (`atol` / `rtol`: None is the precision's default;
    `strict_layers`: a divergent layer fails even when the outputs pass). `golden`: a file
    written by `parity --save-outputs`; the run takes its inputs and also fails where today's
    Keras or artifacts moved from its outputs. Other keywords go to `check_parity`.
    """
    from edgetrunc.parity.check import check_parity

    if strict_layers:
        per_layer = True
    with _assertions(), artifact_paths(artifacts) as paths:
        if not paths and golden is None:
            raise InputError("artifacts: expected one or more .tflite / .onnx paths or bytes")
        report = check_parity(model, paths, samples=samples, inputs=inputs, per_layer=per_layer,
                              probes=probes, strict_nan=strict_nan, atol=atol, rtol=rtol, seed=seed,
                              per_layer_samples=per_layer_samples, strict_layers=strict_layers,
                              threads=threads, load_outputs=golden, **options)
    RECENT_REPORTS.append(report)
    if not report.passed:
        raise AssertionError(parity_summary(report))
    return report


def _worst_sample(report, artifact):
    errors = report.output_errors.get(artifact.path)
    samples = len(report.inputs.x)
    if errors is None or not samples or errors.size % samples:
        return None
    per_sample = np.nan_to_num(errors.reshape(samples, -1), nan=np.inf).max(axis=1)
    index = int(np.argmax(per_sample))
    return index, report.inputs.names[index], float(per_sample[index])


def _layer_lines(artifact) -> list:
    from edgetrunc.parity.per_layer import LAYER_TOLERANCES
    from edgetrunc.parity.compare import tolerance_key

    compared = [layer for layer in artifact.layers if layer.status == "compared"]
    if not compared:
        return []
    bound = LAYER_TOLERANCES[tolerance_key(artifact.precision)]
    error = lambda layer: float("inf") if layer.normalized_error is None else layer.normalized_error  # noqa: E731
    worst = max(compared, key=error)
    lines = [f"worst layer: {worst.layer} (normalized error {error(worst):.3g}, bound {bound:g})"]
    if artifact.first_divergent_layer:
        lines.append(f"first divergent layer: {artifact.first_divergent_layer}")
    return lines


def _artifact_lines(report, artifact) -> list:
    name = Path(artifact.path).name
    comparison, tolerance = artifact.comparison, artifact.tolerance
    lines = [f"{name} ({artifact.format} {artifact.precision}): " + "; ".join(comparison.failures)]
    bounds = f"atol {tolerance['atol']:g}, rtol {tolerance['rtol']:g}" if tolerance else "no bounds"
    worst = _worst_sample(report, artifact)
    if worst is not None:
        lines.append(f"worst sample: {worst[1]} (#{worst[0]}), max abs error {worst[2]:.3g} ({bounds})")
    else:
        lines.append(f"max abs error {comparison.max_abs_error:.3g} ({bounds})")
    return lines + _layer_lines(artifact)


def parity_summary(report) -> str:
    """What failed in a `ParityReport`, for a person reading a test failure."""
    failing = [a for a in report.artifacts if not a.passed]
    head = (f"parity failed: {len(failing)} of {len(report.artifacts)} artifact(s) against "
            f"{Path(str(report.reference['path'])).name} on {len(report.inputs.x)} inputs "
            f"({report.inputs.kind})")
    lines = [head]
    for artifact in failing:
        lines += ["  " + line for line in _artifact_lines(report, artifact)]
    lines += [f"  probe {failure}" for failure in report.probe_failures]
    lines += [f"  golden {failure}" for item in report.golden for failure in item.failures]
    return "\n".join(lines)


def _truncations(content: bytes, model, artifact_name: str) -> tuple:
    from edgetrunc.runtime.metadata import read_metadata

    metadata = read_metadata(content) or {}
    if model is not None:
        from edgetrunc.keras.load import load_keras_model
        from edgetrunc.keras.truncations import find_truncations

        loaded = load_keras_model(model) if isinstance(model, (str, Path)) else model
        truncations = find_truncations(loaded)
    else:
        truncations = metadata.get("truncations")
    if not truncations:
        raise AssertionError(f"{artifact_name}: no truncation to check (none recorded in the artifact's "
                             "metadata; pass model= the Keras model it was converted from)")
    return truncations, metadata.get("precision")


def _manifest_ops(artifact) -> dict | None:
    """The op counts `manifest.json` beside a path artifact lists for it, else None."""
    if _content(artifact) is not None:
        return None
    manifest = Path(artifact).parent / "manifest.json"
    try:
        entries = json.loads(manifest.read_text())["artifacts"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return next((e.get("ops") for e in entries if e.get("path") == Path(artifact).name), None)


def _custom_ops(ops: dict) -> list:
    return [name for name in ops if name.startswith("CUSTOM") or "Flex" in name]


def assert_truncations_exported(artifact, model=None, *, ops: dict | None = None,
                                precision: str | None = None) -> dict:
    """Assert, as one check, that every truncation of the model became the expected clip ops in
    `artifact` (path or bytes of a `.tflite` / `.onnx`), that its op counts are `ops` (default:
    those `manifest.json` beside the artifact lists, when there is one) and that it holds no
    custom or Flex op. The truncations come from `model` when given, else from the artifact's
    embedded metadata. Returns the inspection (`{"ops", "truncations", "inputs", "outputs"}`)."""
    from edgetrunc.runtime.metadata import is_tflite

    name = "artifact" if _content(artifact) is not None else str(artifact)
    with _assertions():
        content = _content(artifact)
        if content is None:
            from edgetrunc._io import require_file

            content = require_file(artifact, "artifact (.tflite or .onnx)").read_bytes()
        truncations, embedded_precision = _truncations(content, model, name)
        precision = precision or embedded_precision or "fp32"
        if is_tflite(content):
            from edgetrunc.export.tflite.inspect import inspect_tflite as inspect
        else:
            from edgetrunc.export.onnx.inspect import inspect_onnx as inspect
        found = inspect(content, truncations, precision)
    mapped = {t["layer"]: t.get("mapped_to") for t in found["truncations"]}
    missing = [t["layer"] for t in truncations if not mapped.get(t["layer"])]
    assert not missing, f"{name}: truncation(s) not mapped to clip ops: {', '.join(missing)}"
    custom = _custom_ops(found["ops"] or {})
    assert not custom, f"{name}: custom op(s) {', '.join(custom)}; expected builtin ops only"
    expected = ops if ops is not None else _manifest_ops(artifact)
    if expected is not None and dict(expected) != dict(found["ops"] or {}):
        changed = sorted(set(expected) | set(found["ops"] or {}))
        diff = [f"{op} {expected.get(op, 0)} -> {(found['ops'] or {}).get(op, 0)}" for op in changed
                if expected.get(op, 0) != (found["ops"] or {}).get(op, 0)]
        raise AssertionError(f"{name}: op counts differ from the expected ones: {', '.join(diff)}")
    return found
