"""Golden outputs: the outputs of every runner on fixed inputs, kept in one `.npz`, compared later.

`save_golden(path, ...)` writes, atomically and never over an existing file unless `force`,
the inputs (`x`, `labels`, `names`, so the file is also an `--inputs FILE.npz`), every
runner's outputs (Keras and each artifact, keyed by the artifact's file name), optionally every layer's output
on the per-layer samples (Keras's, and each artifact's tensor mapped to the layer), and a JSON `meta`: the model's name and
input shape, each artifact's hash and precision, and the toolchain's versions
(`_version.package_versions`). `load_golden(path)` reads it back (`Golden`), refusing a file
that is not one. `compare_golden(golden, ...)` judges today's outputs against the stored ones
with the same comparison function as Keras against an artifact, and, when outputs moved, names
what changed since the file was written: a TensorFlow, LiteRT, ONNX Runtime or tf2onnx version,
the artifact's bytes. No TensorFlow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgetrunc import _log
from edgetrunc._io import atomic_path, check_output, sha256_file
from edgetrunc._version import package_versions
from edgetrunc.errors import InputError

GOLDEN_FORMAT = 1
KERAS = "keras"
# what a failure names when outputs moved (the distributions that compute the outputs)
WATCHED = ("tensorflow", "tensorflow-cpu", "keras", "ai-edge-litert", "onnxruntime", "tf2onnx", "onnx",
           "numpy")


@dataclass
class Golden:
    """A golden file read back: inputs, `{runner: {output: array}}`, `{runner: {layer: array}}`, meta."""

    path: Path
    meta: dict
    x: np.ndarray
    outputs: dict
    layers: dict = field(default_factory=dict)

    def check_model(self, name: str, shape) -> None:
        """InputError unless the file was written for a model of this name and input shape."""
        model = self.meta.get("model", {})
        want = (model.get("name"), [int(d) for d in model.get("input_shape", [])])
        got = (name, [int(d) for d in shape])
        if want != got:
            raise InputError(f"{self.path}: golden outputs of model '{want[0]}' {want[1]}; this "
                             f"model is '{got[0]}' {got[1]}. Write a golden file for it with "
                             "parity --save-outputs")

    def runner_outputs(self, runner: str) -> dict:
        key = golden_key(runner)
        if key not in self.outputs:
            known = ", ".join(sorted(self.outputs)) or "none"
            raise InputError(f"{self.path}: no golden outputs for {key} (the file holds: {known}); "
                             "write them with parity --save-outputs")
        return self.outputs[key]


def golden_key(runner: str) -> str:
    """The name a runner's outputs go under: 'keras', or the artifact's file name."""
    return KERAS if runner == KERAS else Path(str(runner)).name


def _artifact_entry(path: str, precision: str) -> dict:
    entry = {"precision": precision}
    if Path(path).is_file():
        entry["sha256"] = sha256_file(path)
    return entry


def save_golden(path, data, results, model_info: dict, precisions: dict, layer_outputs=None,
                force: bool = False, protect=()) -> dict:
    """Write the golden file of a run (`data`: `InputSet`, `results`: `RunResults` whose first
    runner is Keras); returns its `meta`. An existing file is replaced only with `force`."""
    target = Path(path)
    check_output(target, protect)
    if target.exists() and not force:
        raise InputError(f"{path}: golden file exists; pass force=True to replace it")
    runners = {}
    arrays = {"x": np.ascontiguousarray(data.x, np.float32),
              "labels": np.asarray(data.labels, np.int64), "names": np.array(data.names)}
    for i, result in enumerate(results.results):
        key = golden_key(result.runner)
        entry = {} if key == KERAS else _artifact_entry(result.runner, precisions.get(result.runner, "fp32"))
        entry["outputs"] = list(result.outputs)
        runners[key] = entry
        for j, value in enumerate(result.outputs.values()):
            arrays[f"out{i}_{j}"] = np.asarray(value, np.float32)
    layer_names = {}
    for i, (runner, values) in enumerate((layer_outputs or {}).items()):
        layer_names[runner] = list(values)
        for j, name in enumerate(values):
            arrays[f"layer{i}_{j}"] = np.asarray(values[name], np.float32)
    meta = {"format": GOLDEN_FORMAT, "model": model_info, "runners": runners,
            "layers": layer_names, "versions": package_versions(WATCHED)}
    with atomic_path(target, protect) as tmp:
        with open(tmp, "wb") as stream:
            np.savez_compressed(stream, meta=np.array(json.dumps(meta)), **arrays)
    return meta


def load_golden(path) -> Golden:
    """Read a golden file (InputError naming the file when it is missing or not one)."""
    from edgetrunc.runtime.recorded import _read_npz, load_inputs

    data = _read_npz(path, "golden outputs")
    meta = None
    if "meta" in data and data["meta"].dtype.kind in "US" and data["meta"].size == 1:
        try:
            meta = json.loads(str(data["meta"].reshape(()).item()))
        except ValueError:
            meta = None
    if not isinstance(meta, dict) or meta.get("format") != GOLDEN_FORMAT:
        raise InputError(f"{path}: not a golden outputs file; expected one written by "
                         "parity --save-outputs")
    x, _, _ = load_inputs(path)
    outputs = {}
    try:
        for i, (key, entry) in enumerate(meta["runners"].items()):
            outputs[key] = {name: data[f"out{i}_{j}"] for j, name in enumerate(entry["outputs"])}
        layers = {runner: {name: data[f"layer{i}_{j}"] for j, name in enumerate(names)}
                  for i, (runner, names) in enumerate(meta.get("layers", {}).items())}
    except (KeyError, TypeError, AttributeError):
        raise InputError(f"{path}: golden file is incomplete (outputs listed in its meta are "
                         "missing); write it again with parity --save-outputs --force") from None
    return Golden(Path(path), meta, x, outputs, layers)


def version_changes(meta: dict, today: dict | None = None) -> list:
    """`["tensorflow 2.20.0 -> 2.21.0", ...]`: the watched versions that differ from the file's."""
    today = package_versions(WATCHED) if today is None else today
    then = meta.get("versions", {})
    changes = []
    for name in WATCHED:
        if then.get(name) != today.get(name) and (name in then or name in today):
            changes.append(f"{name} {then.get(name, 'absent')} -> {today.get(name, 'absent')}")
    return changes


@dataclass
class GoldenComparison:
    """Today's outputs of one runner against its golden outputs."""

    runner: str
    comparison: object  # OutputComparison
    changes: list = field(default_factory=list)  # what changed since the file was written
    moved_layer: str | None = None

    @property
    def passed(self) -> bool:
        return self.comparison.passed and self.moved_layer is None

    @property
    def failures(self) -> list:
        if self.passed:
            return []
        what = self.comparison.failures[:1] or [f"layer {self.moved_layer} moved"]
        since = ("; changed since the golden file: " + ", ".join(self.changes)) if self.changes else \
            "; no toolchain version or artifact changed since the golden file"
        return [f"{self.runner}: outputs moved from the golden outputs ({what[0]}){since}"]

    def to_dict(self) -> dict:
        return {"runner": self.runner, "passed": self.passed, "changes": self.changes,
                "moved_layer": self.moved_layer, **{k: v for k, v in self.comparison.to_dict().items()
                                                    if k != "passed"}}


def _changes(golden: Golden, runner: str, versions: list) -> list:
    entry = golden.meta["runners"].get(golden_key(runner), {})
    changes = list(versions)
    if entry.get("sha256") and Path(runner).is_file() and sha256_file(runner) != entry["sha256"]:
        changes.append(f"{golden_key(runner)} bytes (sha256)")
    return changes


def compare_golden(golden: Golden, results, compare_func, precisions: dict, activations: dict,
                   layer_outputs=None) -> list:
    """`GoldenComparison` of every runner of `results` against its golden outputs (the Keras
    runner judged as fp32); per layer, where `layer_outputs` (`{runner key: {layer: array}}`)
    and the file hold a runner's layers, the first layer whose normalized error exceeds the
    precision's layer bound is named."""
    from edgetrunc.parity.comparator import detector_probability
    from edgetrunc.parity.compare import tolerance_key
    from edgetrunc.parity.per_layer import LAYER_TOLERANCES

    versions = version_changes(golden.meta)
    found = []
    for result in results.results:
        stored = golden.runner_outputs(result.runner)
        activation = activations.get(result.runner)
        try:
            comparison = compare_func(stored, result.outputs, precision=precisions.get(result.runner, "fp32"),
                                      reference_probability=detector_probability(stored, "golden", activation),
                                      candidate_probability=result.probability)
        except InputError as exc:
            raise InputError(f"{golden.path}: {golden_key(result.runner)}: {exc}") from None
        item = GoldenComparison(golden_key(result.runner), comparison)
        key = golden_key(result.runner)
        if key in (layer_outputs or {}) and key in golden.layers:
            bound = LAYER_TOLERANCES[tolerance_key(precisions.get(result.runner, "fp32"))]
            item.moved_layer = _first_moved_layer(golden.layers[key], layer_outputs[key], bound)
        if not item.passed:
            item.changes = _changes(golden, result.runner, versions)
        found.append(item)
    return found


def _first_moved_layer(stored: dict, today: dict, bound: float) -> str | None:
    from edgetrunc.parity._layer_stats import ErrorStats

    for name, value in today.items():
        if name not in stored or stored[name].shape != value.shape:
            continue
        stats = ErrorStats(full=False)
        stats.add(stored[name], value)
        if not stats.normalized <= bound:
            return name
    return None


def check_golden_target(path, force: bool) -> None:
    if path is not None and Path(path).exists() and not force:
        raise InputError(f"{path}: golden file exists; pass force=True to replace it")


def golden_outputs(report, keras_runner, runners, results, judged, compare_func, per_layer_batch,
                    golden, save_outputs, force, protect) -> None:
    """Compare every runner with the golden outputs, then write today's when asked. The Keras
    layer outputs (per-layer runs) are computed once for both."""
    from edgetrunc.runtime.scoring import runner_activation

    layers = {}
    stored = golden.layers.get(KERAS) if golden is not None else None
    if report.per_layer or stored:
        count = len(next(iter(stored.values()))) if stored else len(per_layer_batch)
        layers[KERAS] = keras_runner.layer_outputs(report.inputs.x[:count])
        for artifact, runner in zip(report.artifacts, runners):
            if artifact.layers:
                layers[golden_key(str(runner.path))] = _mapped_values(
                    runner, artifact, report.inputs.x[:count])
    if golden is not None:
        activations = {str(r.path): runner_activation(r) for r in runners}
        activations["keras"] = runner_activation(keras_runner)
        report.golden = compare_golden(golden, results, compare_func, judged, activations,
                                                   layers)
    if save_outputs is not None:
        model_info = {"name": keras_runner.model.name,
                      "input_shape": [int(d) for d in report.inputs.x.shape[1:]]}
        save_golden(save_outputs, report.inputs, results, model_info, judged,
                                layers if report.per_layer else None, force, protect)
        _log.info(f"parity: wrote the golden outputs to {save_outputs}")


def _mapped_values(runner, artifact, x) -> dict:
    """`{layer: the artifact tensor mapped to it}` on `x`, read in one invocation."""
    from edgetrunc.runtime import open_with_intermediates
    from edgetrunc.runtime.intermediates import intermediate_threads

    keeping = open_with_intermediates(runner.path, threads=intermediate_threads(runner.threads))
    keeping.infer(x)
    values = keeping.intermediates()
    return {layer.layer: values[layer.tensor] for layer in artifact.layers
            if layer.status in ("compared", "folded") and layer.tensor in values}
