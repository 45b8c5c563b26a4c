"""The ONNX inspector: reads a written `.onnx` back and checks its truncation mapping.

The model must pass `onnx.checker`; each truncation is one Clip named `<layer>/Clip` with
scalar constant bounds equal to the layer's (no Max/Min pair left), whose output is quantized
with range `[lower, upper]` in int8; in int8 a Clip may also be folded into its producer's
QuantizeLinear. A broken rule raises InputError naming the layer. Op counts come from
`runtime.metadata.onnx_ops`.
"""

from __future__ import annotations

import numpy as np

from edgetrunc.errors import InputError
from edgetrunc.export.candidates import match_clips, range_mismatch
from edgetrunc.export.onnx.graph import CLIP_SUFFIX, Graph, load_onnx_proto
from edgetrunc.export.onnx.integer import (compute_ops, float_nodes, output_meaning,
                                           require_full_integer)
from edgetrunc.runtime.layer_names import layers_in
from edgetrunc.runtime.metadata import onnx_ops
from edgetrunc.runtime.onnx_runner import io_quantization


def _value_info(v, quantization):
    from onnx import helper

    dims = []
    for d in v.type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or -1))
    dtype = helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name
    info = {"name": v.name, "shape": dims, "dtype": dtype}
    if dtype in ("int8", "uint8") and v.name in quantization:
        info["scale"], info["zero_point"] = quantization[v.name]
    return info


def _folded(model, graph, t, precision) -> str:
    quant = next((n for n in model.graph.node if n.name == f"{t['layer']}/QuantizeLinear"), None)
    if quant is None and precision == "int8-full":  # the quantizer dropped the Clip
        quant = next((n for n in model.graph.node if n.op_type == "QuantizeLinear"
                      and layers_in(n.input[0], [t["layer"]])), None)
        if quant is None:
            raise InputError(f"{t['layer']}: no Clip and no int8 output of the truncation in "
                             "the full-integer ONNX graph")
    if quant is None:
        return "folded into the producer's QuantizeLinear (calibrated range)"
    _check_range(graph, t, quant)
    return "folded into the producer's int8 output (range [lower, upper])"


def _check_clip(graph, t, clip, leftovers, precision) -> str:
    node = clip.ops[0]
    for which, position in (("min", 1), ("max", 2)):
        if len(node.input) <= position or node.input[position] not in graph.consts:
            raise InputError(f"{t['layer']}: Clip {which} bound is not a scalar initializer")
        value = graph.consts[node.input[position]]
        if np.size(value) != 1 or np.ndim(value) != 0:
            raise InputError(f"{t['layer']}: Clip {which} bound is not a scalar")
    if (np.float32(clip.lower), np.float32(clip.upper)) != (
            np.float32(t["lower"]), np.float32(t["upper"])):
        raise InputError(f"{t['layer']}: Clip bounds [{clip.lower:g}, {clip.upper:g}]; "
                         f"expected [{t['lower']:g}, {t['upper']:g}]")
    if match_clips([t], leftovers)[0] is not None:
        raise InputError(f"{t['layer']}: a Max/Min pair with its bounds is still in the graph")
    return _check_int8_clip(graph, t, clip) if precision.startswith("int8") else "Clip"


def inspect_onnx(model, truncations, precision) -> dict:
    """Check the truncation mapping of a written ONNX model (proto, bytes or path); raise
    InputError naming the layer if a rule breaks. Returns `{"ops", "truncations", "inputs",
    "outputs"}`."""
    import onnx

    model = load_onnx_proto(model)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise InputError(f"onnx: model fails onnx.checker ({str(exc).splitlines()[0]})") from None
    graph = Graph(model)
    quantization = io_quantization(model)
    clips = graph.clip_candidates()
    leftovers = graph.minmax_candidates()
    mapping = []
    for t in truncations:
        mine = [c for c in clips if c.ops[0].name == f"{t['layer']}{CLIP_SUFFIX}"]
        if not mine and precision.startswith("int8") and match_clips([t], leftovers)[0] is None:
            mapping.append({**t, "mapped_to": _folded(model, graph, t, precision)})
            continue
        if len(mine) != 1:
            raise InputError(f"{t['layer']}: expected one Clip node named "
                             f"'{t['layer']}{CLIP_SUFFIX}', found {len(mine)}")
        mapping.append({**t, "mapped_to": _check_clip(graph, t, mine[0], leftovers, precision)})
    report = {
        "ops": onnx_ops(model),
        "truncations": mapping,
        "inputs": [_value_info(v, quantization) for v in model.graph.input],
        "outputs": [_value_info(v, quantization) for v in model.graph.output],
    }
    if precision == "int8-full":
        require_full_integer(model)
        report["integer"] = {"float_tensors_outside_qdq": len(float_nodes(model)),
                             "compute_ops_between_qdq": compute_ops(model),
                             "output": output_meaning(model)}
    return report


def _check_int8_clip(graph, t, clip):
    """The Clip's output must be quantized with range [lower, upper] (to within half a step)."""
    readers = graph.consumers.get(clip.output, [])
    quant = [n for n in readers if n.op_type == "QuantizeLinear"]
    if not quant:
        raise InputError(f"{t['layer']}: Clip output is not quantized in the int8 ONNX graph")
    _check_range(graph, t, quant[0])
    return "Clip (QDQ int8, range [lower, upper])"


def _check_range(graph, t, node):
    scale = float(np.asarray(graph.consts[node.input[1]]).reshape(()))
    zero_point = np.asarray(graph.consts[node.input[2]])
    zp, limits = int(zero_point.reshape(())), np.iinfo(zero_point.dtype)  # int8 or uint8
    low, high = (int(limits.min) - zp) * scale, (int(limits.max) - zp) * scale
    if range_mismatch(low, high, t, scale):
        raise InputError(f"{t['layer']}: int8 range [{low:g}, {high:g}] of the Clip output; "
                         f"expected [{t['lower']:g}, {t['upper']:g}]")
