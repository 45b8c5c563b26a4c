"""The ONNX rewrites: each one a pass over a `ModelProto`, run in the order the lists give.

As in tf2onnx's optimizer list, each pipeline reads top to bottom:

- `FP32_PASSES`, on tf2onnx's graph: `rewrite_clips` (each truncation's Max/Min pair becomes
  one `Clip` with scalar float bounds, named `<layer>/Clip`: ONNX Runtime refuses non-scalar
  Clip bounds), `canonical_names` (the same model always gives the same bytes),
  `name_batch_dimension` (the free batch dimension is called "N").
- `FP32_LAYOUT_PASSES`, on float graphs (a QDQ graph is left as it is), skipped with
  `literal=True` (`export.onnx.packing`): `pack_front_end` (each chain of one-channel
  convolutions over 2x2 blocks of pixels: the same products plus exact zeros),
  `activations_before_unpack` (the truncation's Clip and the activation on the packed
  values) and `pools_as_convolutions` (a VALID AveragePool and the per-channel Mul / Add
  after it as convolutions over the packed values; the same sums up to rounding).
- `INT8_QUANTIZED_PASSES`, on onnxruntime's truncation-aware QDQ graph:
  `quantize_clip_outputs` (the truncated tensor is int8 with range `[lower, upper]`).

A pass is `pass_(model, context) -> bool`: it edits the `ModelProto` in place and says
whether it changed it; `export.passes.run_passes` runs a list in order and notes in
`context.applied` the name of each pass that changed the model. `PassContext` holds what
they read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from edgetrunc.errors import InputError
from edgetrunc.export.candidates import match_clips
from edgetrunc.export.onnx import packing
from edgetrunc.export.onnx.graph import CLIP_SUFFIX, Graph
from edgetrunc.export.passes import layout_pass


@dataclass
class PassContext:
    """The truncations of the model; `clip_outputs` (`{layer: Clip output name}` of the fp32
    graph) and `ranges` (`{layer: int8 range}`, where it is not `[lower, upper]`: the
    calibrated open side of a one-sided clip) and `unsigned` (uint8 activations) for
    `quantize_clip_outputs`; `literal`: skip the layout rewrites; `applied`: the
    names of the passes that changed the model, in order."""

    truncations: list
    clip_outputs: dict = field(default_factory=dict)
    ranges: dict = field(default_factory=dict)
    literal: bool = False
    unsigned: bool = False
    applied: list = field(default_factory=list)


def rewrite_clips(model, context: PassContext) -> bool:
    """Replace each truncation's Max/Min pair by one Clip with scalar float bounds (a
    one-sided truncation's single Min or Max by a Clip whose open side is -inf or inf)."""
    from onnx import helper, numpy_helper

    candidates = Graph(model).minmax_candidates()
    for t, index in zip(context.truncations, match_clips(context.truncations, candidates)):
        if index is None:
            raise InputError(f"{t['layer']}: no Max/Min pair with bounds [{t['lower']:g}, "
                             f"{t['upper']:g}] in the ONNX graph from tf2onnx")
        c = candidates[index]
        bounds = [f"{t['layer']}/clip_min", f"{t['layer']}/clip_max"]
        # an open side is an explicit -inf / inf: onnxruntime's default for an absent bound
        # is the largest float, which would turn -inf into -3.4e38
        model.graph.initializer.extend([
            numpy_helper.from_array(np.array(t["lower"], np.float32), bounds[0]),
            numpy_helper.from_array(np.array(t["upper"], np.float32), bounds[1])])
        clip = helper.make_node("Clip", [c.input, *bounds], [c.output],
                                name=f"{t['layer']}{CLIP_SUFFIX}")
        position = list(model.graph.node).index(c.ops[0])
        for node in c.ops:
            model.graph.node.remove(node)
        model.graph.node.insert(position, clip)
    _drop_unused_initializers(model)
    return True


def _drop_unused_initializers(model):
    used = {name for node in model.graph.node for name in node.input}
    used |= {o.name for o in model.graph.output}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def canonical_names(model, context: PassContext) -> bool:
    """Renumber tf2onnx's counter-suffixed names (`new_shape__78`) in graph order, so the same
    model always gives the same bytes (the counters depend on what ran before)."""
    pattern = re.compile(r"^(.*?)__\d+((?::\d+)?)$")
    mapping = {}

    def rename(name):
        if not name or name in mapping:
            return mapping.get(name, name)
        match = pattern.match(name)
        if match is None:
            return name
        mapping[name] = f"{match.group(1)}__{len(mapping) + 1}{match.group(2)}"
        return mapping[name]

    graph = model.graph
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = rename(name)
        for i, name in enumerate(node.output):
            node.output[i] = rename(name)
        node.name = rename(node.name)
    for tensor in graph.initializer:
        tensor.name = rename(tensor.name)
    for value in [*graph.value_info, *graph.input, *graph.output]:
        value.name = rename(value.name)
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and pattern.match(dim.dim_param):
                dim.dim_param = rename(dim.dim_param)
    return bool(mapping)


def name_batch_dimension(model, context: PassContext) -> bool:
    """Call the free first dimension of every graph input and output "N"."""
    changed = False
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "N"
            changed = True
    return changed


def quantize_clip_outputs(model, context: PassContext) -> bool:
    """Give each truncation Clip whose output is still float a QuantizeLinear/DequantizeLinear
    pair with range exactly [lower, upper] (scale (upper - lower) / 255): the truncated
    tensor is int8 with 255 levels, as in the TFLite int8 artifact (a one-sided clip: from
    its finite bound to the calibrated value on the open side, `context.ranges`). A Clip that onnxruntime
    folded into its (quantized) producer leaves that QuantizeLinear, with the overridden
    range [lower, upper]; it is named `<layer>/QuantizeLinear` for the inspector."""
    graph = Graph(model)
    changed = False
    for t in context.truncations:
        clip = next((n for n in model.graph.node if n.name == f"{t['layer']}{CLIP_SUFFIX}"), None)
        if clip is None:
            quant = next((n for n in graph.consumers.get(context.clip_outputs[t["layer"]], [])
                          if n.op_type == "QuantizeLinear"), None)
            if quant is not None:
                quant.name = f"{t['layer']}/QuantizeLinear"
                changed = True
            continue
        if not any(r.op_type == "QuantizeLinear" for r in graph.consumers.get(clip.output[0], [])):
            _insert_qdq_after(model, graph, t, clip,
                              context.ranges.get(t["layer"], (t["lower"], t["upper"])),
                              context.unsigned)
            graph.refresh()
            changed = True
    return changed


def _insert_qdq_after(model, graph, t, clip, int8_range, unsigned=False):
    from onnx import helper, numpy_helper

    out = clip.output[0]
    readers = graph.consumers.get(out, [])
    if any(o.name == out for o in model.graph.output):  # keep the graph output's name
        clip.output[0] = f"{out}/unquantized"
        readers, out = [], clip.output[0]
    low, high = int8_range
    scale = np.float32((high - low) / 255.0)
    dtype = np.uint8 if unsigned else np.int8
    limits = np.iinfo(dtype)
    zero = dtype(np.clip(np.round(int(limits.min) - low / scale), limits.min, limits.max))
    names = {k: f"{t['layer']}/truncated_{k}" for k in ("scale", "zero_point", "q", "dq")}
    if out.endswith("/unquantized"):
        names["dq"] = out[:-len("/unquantized")]
    model.graph.initializer.extend([numpy_helper.from_array(np.array(scale), names["scale"]),
                                    numpy_helper.from_array(np.array(zero), names["zero_point"])])
    quant = helper.make_node("QuantizeLinear", [out, names["scale"], names["zero_point"]],
                             [names["q"]], name=f"{t['layer']}/QuantizeLinear")
    dequant = helper.make_node("DequantizeLinear", [names["q"], names["scale"],
                                                    names["zero_point"]],
                               [names["dq"]], name=f"{t['layer']}/DequantizeLinear")
    for reader in readers:
        for i, name in enumerate(reader.input):
            if name == out:
                reader.input[i] = names["dq"]
    position = list(model.graph.node).index(clip) + 1
    model.graph.node.insert(position, dequant)
    model.graph.node.insert(position, quant)


def _pools_as_convolutions(model) -> int:
    rewritten = packing.rewrite_pools_as_convolutions(model)
    if rewritten:
        _drop_unused_initializers(model)
    return rewritten


pack_front_end = layout_pass(
    "pack_front_end", packing.pack_convolution_chains,
    "run every chain of float one-channel Convs over 2x2 blocks of pixels "
    "(`packing.pack_convolution_chains`).")
activations_before_unpack = layout_pass(
    "activations_before_unpack", packing.elementwise_before_unpack,
    "run the Clip and activations that follow a packed chain before its unpacking "
    "(`packing.elementwise_before_unpack`).")
pools_as_convolutions = layout_pass(
    "pools_as_convolutions", _pools_as_convolutions,
    "each VALID AveragePool of a float graph, with the per-channel Mul / Add after it, "
    "becomes convolutions (`packing.rewrite_pools_as_convolutions`).")


FP32_PASSES = [rewrite_clips, canonical_names, name_batch_dimension]
# Skipped with `literal=True`; they leave a QDQ (int8) graph as it is.
FP32_LAYOUT_PASSES = [pack_front_end, activations_before_unpack, pools_as_convolutions]
INT8_QUANTIZED_PASSES = [quantize_clip_outputs]
