"""One artifact recorded on two machines (`edgetrunc run`), compared output by output and
tensor by tensor: "x86-64 vs aarch64 (Cortex-A76)" side by side. No TensorFlow.

Both recordings must come from the same artifact (same SHA-256) and the same inputs (matched
row by row through the input hashes). Outputs are judged by the artifact's precision: float
artifacts by the fp32 element rule (`compare.default_tolerance`), int8 artifacts by the
quantization grid: every output element within `max_steps` (1) steps of the reference, a step
being the scale of the last quantized tensor before the output (from the recorded tensors).
Where both recordings hold intermediate tensors (`edgetrunc run --intermediates N`), each
tensor is compared too (normalized error `max|a - b| / max|b|`, and in steps of its scale for
an int8 tensor), and the largest difference is named with its layer (the first one its name
mentions, `runtime.layer_names`; a tensor outside any layer by its own name).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from edgetrunc.errors import InputError
from edgetrunc.parity.compare import default_tolerance, tolerance_key
from edgetrunc.runtime.host import where_label
from edgetrunc.runtime.layer_names import first_layer
from edgetrunc.runtime.recorded import RecordedRunner


@dataclass
class TensorDifference:
    name: str
    layer: str
    max_abs: float
    normalized: float
    scale: float | None = None

    @property
    def steps(self) -> float | None:
        return self.max_abs / self.scale if self.scale else None


@dataclass
class RecordingComparison:
    artifact: str
    precision: str
    reference: str  # where-label of the reference recording
    other: str
    samples: int
    outputs: dict  # name -> {"max_abs", "mean_abs", "step", "steps", "failed_elements"}
    tensors: list = field(default_factory=list)  # TensorDifference, every compared tensor
    failures: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def largest_tensor(self) -> TensorDifference | None:
        """The tensor with the largest normalized difference."""
        return max(self.tensors, key=lambda t: t.normalized, default=None)

    def most_steps(self) -> TensorDifference | None:
        """The int8 tensor whose difference spans the most steps of its scale."""
        return max((t for t in self.tensors if t.steps is not None), key=lambda t: t.steps, default=None)

    def to_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "tensors"}
        out.update({"passed": self.passed, "tensors_compared": len(self.tensors),
                    "tensors": [{**asdict(t), "steps": t.steps} for t in self.tensors]})
        for key, tensor in (("largest_tensor", self.largest_tensor()), ("most_steps", self.most_steps())):
            out[key] = {**asdict(tensor), "steps": tensor.steps} if tensor else None
        return out


def output_steps(tensors: dict) -> dict:
    """`{output index: scale}`: the scale of the last quantized tensor before each output (in
    execution order), for the recorded tensor descriptions `tensors` (`RecordedRunner.tensors`)."""
    described = sorted((item for item, _ in tensors.values()), key=lambda t: t.get("order", 0))
    steps, last = {}, None
    for item in described:
        if item.get("output_index") is not None and last:
            steps[int(item["output_index"])] = last
        if item.get("scale"):
            last = float(item["scale"])
    return steps


def _compare_outputs(result, ref, other, steps: dict, int8: bool, max_steps: float) -> None:
    tol = default_tolerance(result.precision)
    rows = ref.row_hashes()
    wanted, got_all = ref.outputs_of(rows), other.outputs_of(rows)
    for position, (name, want) in enumerate(wanted.items()):
        if name not in got_all:
            result.failures.append(f"output {name!r} is missing from the {result.other} recording")
            continue
        got = got_all[name]
        diff = np.abs(got.astype(np.float64) - want)
        step = steps.get(position) if int8 else None
        if int8 and step:
            bad = int((diff > max_steps * step * (1 + 1e-6)).sum())
        else:
            bad = int((~((diff <= tol.atol) | (diff <= tol.rtol * np.abs(want)))).sum())
        result.outputs[name] = {"max_abs": float(diff.max(initial=0.0)), "mean_abs": float(diff.mean()),
                                "step": step, "steps": float(diff.max(initial=0.0) / step) if step else None,
                                "failed_elements": bad}
        if bad:
            rule = (f"{max_steps:g} quantization step ({step:.3g})" if int8 and step
                    else f"atol {tol.atol:g} / rtol {tol.rtol:g}")
            result.failures.append(f"output {name!r}: {bad} element(s) beyond {rule} of {result.reference}")


def _compare_tensors(result, ref_tensors: dict, other_tensors: dict) -> None:
    for name, (item, value) in ref_tensors.items():
        if name not in other_tensors or other_tensors[name][1].shape != value.shape:
            continue
        diff = float(np.abs(other_tensors[name][1].astype(np.float64) - value).max(initial=0.0))
        peak = float(np.abs(value).max(initial=0.0))
        result.tensors.append(TensorDifference(name=name, layer=first_layer([name]) or name,
                                               max_abs=diff, normalized=diff / peak if peak else diff,
                                               scale=item.get("scale") or None))


def compare_recordings(reference, other, max_steps: float = 1.0) -> RecordingComparison:
    """Compare the recording `other` (e.g. made on aarch64) with `reference` (e.g. x86-64) of
    the same artifact on the same inputs; InputError when they are not."""
    ref, oth = RecordedRunner(reference), RecordedRunner(other)
    if ref.record.get("artifact_sha256") != oth.record.get("artifact_sha256"):
        raise InputError(f"{other}: recorded from another artifact than {reference} "
                         "(SHA-256 differs); compare recordings of one artifact")
    precision = str(ref.record.get("precision", "fp32"))
    int8 = tolerance_key(precision) == "int8"
    ref_tensors, other_tensors = ref.tensors(), oth.tensors()
    result = RecordingComparison(
        artifact=str(ref.record.get("artifact")), precision=precision,
        reference=where_label(ref.record.get("where")), other=where_label(oth.record.get("where")),
        samples=len(ref.row_hashes()), outputs={})
    steps = output_steps(ref_tensors)
    if int8 and not steps:
        raise InputError(f"{reference}: an int8 recording without its tensors; record it with "
                         "edgetrunc run --intermediates 1 to know the output's quantization step")
    _compare_outputs(result, ref, oth, steps, int8, max_steps)
    _compare_tensors(result, ref_tensors, other_tensors)
    return result


def _fmt(value, spec=".2e") -> str:
    return "-" if value is None else format(value, spec)


def side_by_side(comparisons: list) -> str:
    """Plain-text table: one row per (artifact, machine pair), `x86-64 (...) vs aarch64 (...)`,
    with the output difference and the layer of the largest tensor difference."""
    from edgetrunc._text import table

    rows = []
    for c in comparisons:
        out_abs = max((o["max_abs"] for o in c.outputs.values()), default=None)
        steps = [o["steps"] for o in c.outputs.values() if o["steps"] is not None]
        largest = c.largest_tensor()
        rows.append([c.artifact, c.precision, f"{c.reference} vs {c.other}", c.samples,
                     _fmt(out_abs), _fmt(max(steps) if steps else None, ".2f"),
                     f"{largest.layer} ({largest.name[:48]})" if largest else "-",
                     _fmt(largest.normalized if largest else None),
                     _fmt(largest.steps if largest else None, ".2f"),
                     "PASS" if c.passed else "FAIL"])
    return table(["artifact", "prec", "machines", "inputs", "output max abs", "output steps",
                  "largest layer difference (tensor)", "norm err", "steps", "verdict"], rows)


def per_layer(comparison: RecordingComparison) -> str:
    """Plain-text table of every tensor compared, in execution order, for one machine pair."""
    from edgetrunc._text import table

    rows = [[t.layer, t.name[:72], _fmt(t.max_abs), _fmt(t.normalized), _fmt(t.steps, ".2f")]
            for t in comparison.tensors]
    return (f"per layer: {comparison.artifact}, {comparison.reference} vs {comparison.other}\n"
            + table(["layer", "tensor", "max abs", "norm err", "steps"], rows))
