"""The TFLite inspector: reads a written `.tflite` back and checks its truncation mapping.

fp32 / fp16: each truncation is a MAXIMUM+MINIMUM pair with its exact bounds (or a fused
clip activation; a one-sided truncation is one MINIMUM or MAXIMUM). int8: each truncation is the int8 saturation of its producer's output
(range `[lower, upper]` to within half a step; stacked truncations saturate once, to the
intersection of their bounds), or a clip pair / fused activation left in place. A broken
rule raises InputError naming the layer. Op counts come from `runtime.metadata.tflite_ops`.
"""

from __future__ import annotations

import numpy as np

from edgetrunc.errors import InputError
from edgetrunc.export.candidates import (layer_hints, match_clips, range_mismatch,
                                         range_tolerance)
from edgetrunc.export.tflite import graph as tg
from edgetrunc.export.tflite.integer import float_tensors, output_meaning, require_full_integer
from edgetrunc.runtime.layer_names import SATURATION_MARK
from edgetrunc.runtime.metadata import tflite_ops

_FORBIDDEN_OPS = ("IdentityN", "IDENTITY_N")


def tensor_spec(graph: tg.Graph, index) -> dict:
    """`{"name", "shape", "dtype"}` of tensor `index` (plus "scale", "zero_point" if quantized)."""
    t = graph.g.tensors[index]
    shape = [int(d) for d in (t.shapeSignature if t.shapeSignature is not None and len(
        t.shapeSignature) else t.shape)]
    dtype = np.dtype(tg.DTYPES.get(int(t.type), np.float32)).name
    spec = {"name": graph.tensor_name(index), "shape": shape, "dtype": dtype}
    q = t.quantization
    if q is not None and q.scale is not None and len(q.scale):
        spec["scale"] = float(q.scale[0])
        spec["zero_point"] = int(q.zeroPoint[0])
    return spec


def _step_range(spec_q):
    scale = float(spec_q.scale[0])
    zero_point = int(spec_q.zeroPoint[0])
    return (-128 - zero_point) * scale, (127 - zero_point) * scale, scale


def _float_mapping(graph, truncations, precision) -> list:
    candidates = graph.clip_candidates()
    mapping = []
    for t, index in zip(truncations, match_clips(truncations, candidates)):
        if index is None:
            raise InputError(
                f"{t['layer']}: no MAXIMUM+MINIMUM with constant bounds [{t['lower']:g}, "
                f"{t['upper']:g}] (or fused clip activation) in the {precision} TFLite graph")
        mapping.append({**t, "mapped_to": candidates[index].mapped_to})
    return mapping


def _saturation_tensors(graph):
    """`({layer: saturation tensor}, {tensor: [its stacked layers]})` from the tensor names."""
    marked, together = {}, {}
    for i in range(len(graph.g.tensors)):
        for part in graph.tensor_name(i).split(";"):
            if part.startswith(f"{SATURATION_MARK}/"):
                marked[part.split("/", 1)[1]] = i
                together.setdefault(i, []).append(part.split("/", 1)[1])
    return marked, together


def _saturation(graph, t, index, stacked_layers, bounds, left) -> str:
    q = graph.g.tensors[index].quantization
    if q is None or q.scale is None or not len(q.scale):
        raise InputError(f"{t['layer']}: saturation tensor is not quantized")
    low, high, scale = _step_range(q)
    # stacked truncations saturate once, to the intersection of their bounds
    stacked = [bounds[name] for name in stacked_layers if name in bounds]
    lower, upper = max(b[0] for b in stacked), min(b[1] for b in stacked)
    if range_mismatch(low, high, {"lower": lower, "upper": upper}, scale):
        raise InputError(
            f"{t['layer']}: int8 range [{low:g}, {high:g}] of the truncated tensor is "
            f"not [{lower:g}, {upper:g}] to within half a step ({scale:g})")
    if left is not None:
        raise InputError(f"{t['layer']}: MAXIMUM/MINIMUM still present in the int8 graph")
    producer = graph.producer.get(index)
    what = graph.op_name(graph.g.operators[producer]) if producer is not None else "input"
    mapped = f"{what} int8 saturation"
    if len(stacked_layers) > 1:
        mapped += f" (stacked: {' + '.join(stacked_layers)})"
    return mapped


def _int8_mapping(graph, truncations) -> list:
    marked, together = _saturation_tensors(graph)
    bounds = {t["layer"]: (t["lower"], t["upper"]) for t in truncations}
    leftovers = graph.clip_candidates()
    mapping = []
    for t in truncations:
        left = match_clips([t], leftovers, atol=range_tolerance(t))[0]
        if t["layer"] in marked:
            index = marked[t["layer"]]
            mapped = _saturation(graph, t, index, together[index], bounds, left)
        elif left is not None:
            kind = "int8" if int(graph.g.tensors[leftovers[left].output].type) == 9 else "float"
            mapped = f"{leftovers[left].mapped_to} ({kind})"
        else:
            raise InputError(f"{t['layer']}: truncation neither removed into int8 saturation "
                             "nor present as MAXIMUM/MINIMUM in the int8 graph")
        mapping.append({**t, "mapped_to": mapped})
    return mapping


def inspect_tflite(content, truncations, precision) -> dict:
    """Check the truncation mapping of a written `.tflite` model (bytes or path); raise
    InputError naming the layer if a rule breaks. Returns `{"ops", "truncations", "inputs",
    "outputs"}`."""
    if not isinstance(content, (bytes, bytearray)):
        with open(content, "rb") as fh:
            content = fh.read()
    graph = tg.Graph(tg.read_model(content))
    ops = tflite_ops(content)
    bad = [name for name in ops if name.startswith("CUSTOM") or name in _FORBIDDEN_OPS
           or "Flex" in name]
    if bad:
        raise InputError(f"tflite: non-builtin op(s) {', '.join(bad)}; expected builtin ops only")
    if precision in ("fp32", "fp16"):
        mapping = _float_mapping(graph, truncations, precision)
    else:
        mapping = _int8_mapping(graph, truncations)
    report = {
        "ops": ops,
        "truncations": mapping,
        "inputs": [tensor_spec(graph, i) for i in graph.g.inputs],
        "outputs": [tensor_spec(graph, i) for i in graph.g.outputs],
    }
    if precision == "int8-full":
        require_full_integer(content)
        report["integer"] = {"float_tensors": len(float_tensors(graph)),
                             "tensor_types": sorted({np.dtype(tg.DTYPES.get(int(t.type), np.float32)).name
                                                     for t in graph.g.tensors}),
                             "output": output_meaning(graph)}
    return report


def lost_truncation(graph, candidates, t) -> str:
    """Why truncation `t` has no clip with its bounds after quantization, in one line.

    An int8 CONCATENATION's inputs take its output's scale (the quantizer's same-scale
    rule, carried back through the ops between that keep one scale, such as pooling), so a
    truncation feeding one keeps its bounds only when that range is exactly `[lower,
    upper]`; otherwise its clip constants round to other steps and the int8 graph no longer
    computes clip(x, lower, upper)."""
    for c in candidates:
        if c.kind != "minmax" or t["layer"] not in layer_hints(c.names, [t]):
            continue
        concat = _same_scale_concatenation(graph, int(c.output))
        if concat is not None:
            scale = float(graph.g.tensors[int(c.output)].quantization.scale[0])
            return (f"{t['layer']}: int8 TFLite cannot keep this truncation: it feeds the "
                    f"concatenation {concat}, whose int8 inputs share its scale ({scale:.4g}), "
                    f"so the bounds [{t['lower']:g}, {t['upper']:g}] become [{c.lower:.4g}, "
                    f"{c.upper:.4g}]; convert it to fp32/fp16 TFLite or ONNX, or truncate "
                    "after the concatenation")
    return f"{t['layer']}: truncation ops not found after quantization"


def _same_scale_concatenation(graph, tensor):
    """The output name of the CONCATENATION that `tensor` reaches through readers whose
    output keeps its int8 scale, or None."""
    scale = graph.g.tensors[tensor].quantization
    scale = None if scale is None or scale.scale is None else float(scale.scale[0])
    frontier, seen = [tensor], set()
    while frontier and scale is not None:
        for index in graph.consumers.get(frontier.pop(), []):
            op = graph.g.operators[index]
            out = int(op.outputs[0])
            q = graph.g.tensors[out].quantization
            if index in seen or q is None or q.scale is None or float(q.scale[0]) != scale:
                continue
            seen.add(index)
            if graph.op_name(op) == "CONCATENATION":
                return graph.tensor_name(out)
            frontier.append(out)
    return None
