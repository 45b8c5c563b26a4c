"""The ONNX rewrites: each one a pass over a `ModelProto`, run in the order the lists give.

As in tf2onnx's optimizer list, each pipeline reads top to bottom:

- `FP32_PASSES`, on tf2onnx's graph: `rewrite_clips` (each truncation's Max/Min pair becomes
  one `Clip` with scalar float bounds, named `<layer>/Clip`: ONNX Runtime refuses non-scalar
  Clip bounds), `canonical_names` (the same model always gives the same bytes),
  `name_batch_dimension` (the free batch dimension is called "N").
- `FP32_LAYOUT_PASSES`, on the float convolutions of either precision, skipped with
  `literal=True`: `pack_front_end` (a one-channel convolution with at least
  `PACK_MIN_OUTPUTS` outputs runs over `PACK` rows packed into channels: the same products
  plus exact zeros). `activations_before_unpack` (its elementwise activations on the packed
  tensor, before the unpacking) is written but off: it hides the truncation's output from
  per-layer parity.
- `INT8_QUANTIZED_PASSES`, on onnxruntime's truncation-aware QDQ graph:
  `quantize_clip_outputs` (the truncated tensor is int8 with range `[lower, upper]`).

A pass is `pass_(model, context) -> bool`: it edits the `ModelProto` in place and says
whether it changed it; `run_passes` runs a list in order and notes in `context.applied` the
name of each pass that changed the model. `PassContext` holds what they read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from edgetrunc.errors import InputError
from edgetrunc.export.candidates import match_clips
from edgetrunc.export.onnx.graph import CLIP_SUFFIX, Graph


@dataclass
class PassContext:
    """The truncations of the model; `clip_outputs` (`{layer: Clip output name}` of the fp32
    graph) for `quantize_clip_outputs`; `literal`: skip the layout rewrites; `applied`: the
    names of the passes that changed the model, in order."""

    truncations: list
    clip_outputs: dict = field(default_factory=dict)
    literal: bool = False
    applied: list = field(default_factory=list)


def run_passes(model, passes, context: PassContext) -> bool:
    """Run `passes` in order over `model`; whether one changed it."""
    changed = False
    for rewrite in passes:
        if rewrite(model, context):
            changed = True
            context.applied.append(rewrite.__name__)
    return changed


def rewrite_clips(model, context: PassContext) -> bool:
    """Replace each truncation's Max/Min pair by one Clip with scalar float bounds."""
    from onnx import helper, numpy_helper

    candidates = Graph(model).minmax_candidates()
    for t, index in zip(context.truncations, match_clips(context.truncations, candidates)):
        if index is None:
            raise InputError(f"{t['layer']}: no Max/Min pair with bounds [{t['lower']:g}, "
                             f"{t['upper']:g}] in the ONNX graph from tf2onnx")
        c = candidates[index]
        lo_name, hi_name = f"{t['layer']}/clip_min", f"{t['layer']}/clip_max"
        model.graph.initializer.extend([
            numpy_helper.from_array(np.array(t["lower"], np.float32), lo_name),
            numpy_helper.from_array(np.array(t["upper"], np.float32), hi_name)])
        clip = helper.make_node("Clip", [c.input, lo_name, hi_name], [c.output],
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
    tensor is int8 with 255 levels, as in the TFLite int8 artifact. A Clip that onnxruntime
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
            _insert_qdq_after(model, graph, t, clip)
            graph.refresh()
            changed = True
    return changed


def _insert_qdq_after(model, graph, t, clip):
    from onnx import helper, numpy_helper

    out = clip.output[0]
    readers = graph.consumers.get(out, [])
    if any(o.name == out for o in model.graph.output):  # keep the graph output's name
        clip.output[0] = f"{out}/unquantized"
        readers, out = [], clip.output[0]
    scale = np.float32((t["upper"] - t["lower"]) / 255.0)
    zero = np.int8(np.clip(np.round(-128 - t["lower"] / scale), -128, 127))
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


# Rows per group. tlunet fp32 at 1 thread, min of 50 interleaved runs: literal 2.95 ms, 4 columns
# 2.80 ms, 4 rows 2.86 ms, 2 rows 2.61 ms.
PACK = 2
# Only a one-channel convolution with at least this many outputs is packed. ONNX Runtime's
# NCHWc convolution pads the output channels to its block (16 with AVX-512) either way, so
# packing the one-output fixed front end gained little (3.35 -> 3.30 ms), and its other
# summation order moved tlunet's output by 1.6e-4 against Keras (the shipped artifacts' bound
# is 1e-4); the 8-output seed-block convolution packed moves it by under 1e-5.
PACK_MIN_OUTPUTS = 8


def _value_shapes(model) -> dict:
    """`{tensor name: [dims]}` from ONNX shape inference (None for a free dimension)."""
    from onnx import shape_inference

    inferred = shape_inference.infer_shapes(model)
    shapes = {}
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return shapes


def _packable_conv(node, shapes, weights) -> bool:
    from onnx import helper

    if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in weights:
        return False
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    w = weights[node.input[1]].dims
    x = shapes.get(node.input[0], [])
    if len(w) != 4 or w[1] != 1 or w[0] < PACK_MIN_OUTPUTS or w[2] % 2 == 0 or w[3] % 2 == 0:
        return False
    if len(x) != 4 or x[1] != 1 or not x[2] or not x[3] or x[2] % PACK:
        return False
    same = [w[2] // 2, w[3] // 2] * 2
    return (attrs.get("group", 1) == 1 and list(attrs.get("strides", [1, 1])) == [1, 1]
            and list(attrs.get("dilations", [1, 1])) == [1, 1]
            and (list(attrs.get("pads", [0] * 4)) == same
                 or attrs.get("auto_pad", b"") in (b"SAME_UPPER", b"SAME_LOWER")))


def _packed_weights(kernel):
    """`[Cout, 1, kh, kw]` -> `[PACK * Cout, PACK, 2 * cells + 1, kw]` over packed rows:
    output channel `j * Cout + c` is row `j` of a group of `PACK`, input channel `i` row `i`."""
    c_out, _, kh, kw = kernel.shape
    reach = kh // 2
    cells = -(-reach // PACK)
    packed = np.zeros((PACK * c_out, PACK, 2 * cells + 1, kw), np.float32)
    for j in range(PACK):
        for dy in range(-cells, cells + 1):
            for i in range(PACK):
                row = PACK * dy + i - j + reach
                if 0 <= row < kh:
                    packed[j * c_out:(j + 1) * c_out, i, dy + cells, :] = kernel[:, 0, row, :]
    return packed, cells


def pack_front_end(model, context: PassContext) -> bool:
    """Unless `context.literal`: rewrite each float Conv with one input channel (at least
    `PACK_MIN_OUTPUTS` outputs, stride 1, same padding, H divisible by `PACK`) into Reshape ->
    Transpose -> Conv over `PACK` adjacent rows packed into channels -> Reshape -> Transpose
    -> Reshape, the output under its original name. The sums are the same products plus exact
    zeros; ONNX Runtime's NCHWc convolution pads the outputs to its channel block (16 with
    AVX-512), which `PACK * Cout` outputs fill (8 -> 16 for tlunet's seed block), and the
    activations after it then run on no padding. Rows, not columns: the unpacking Transpose
    moves whole rows."""
    if context.literal:
        return False
    from onnx import helper, numpy_helper

    weights = {t.name: t for t in model.graph.initializer}
    shapes = _value_shapes(model)
    nodes, packed = [], 0
    for node in model.graph.node:
        if not _packable_conv(node, shapes, weights):
            nodes.append(node)
            continue
        _, _, h, w = shapes[node.input[0]]
        kernel = numpy_helper.to_array(weights[node.input[1]]).astype(np.float32)
        c_out, kw = kernel.shape[0], kernel.shape[3]
        packed_kernel, cells = _packed_weights(kernel)
        base, out = node.name or node.output[0], node.output[0]
        names = {k: f"{base}/packed_{k}" for k in ("x_shape", "x", "xt", "kernel", "bias", "y",
                                                   "y_shape", "y5", "yt", "out_shape")}
        initializers = [
            numpy_helper.from_array(np.array([-1, h // PACK, PACK, w], np.int64), names["x_shape"]),
            numpy_helper.from_array(packed_kernel, names["kernel"]),
            numpy_helper.from_array(np.array([-1, PACK, c_out, h // PACK, w], np.int64),
                                    names["y_shape"]),
            numpy_helper.from_array(np.array([-1, c_out, h, w], np.int64), names["out_shape"])]
        conv_inputs = [names["xt"], names["kernel"]]
        if len(node.input) > 2 and node.input[2]:
            bias = numpy_helper.to_array(weights[node.input[2]]).astype(np.float32)
            initializers.append(numpy_helper.from_array(np.tile(bias, PACK), names["bias"]))
            conv_inputs.append(names["bias"])
        model.graph.initializer.extend(initializers)
        nodes += [
            helper.make_node("Reshape", [node.input[0], names["x_shape"]], [names["x"]],
                             name=f"{base}/pack"),
            helper.make_node("Transpose", [names["x"]], [names["xt"]], perm=[0, 2, 1, 3],
                             name=f"{base}/pack_transpose"),
            helper.make_node("Conv", conv_inputs, [names["y"]], name=f"{base}/packed",
                             kernel_shape=[2 * cells + 1, kw], pads=[cells, kw // 2, cells, kw // 2]),
            helper.make_node("Reshape", [names["y"], names["y_shape"]], [names["y5"]],
                             name=f"{base}/unpack_reshape"),
            helper.make_node("Transpose", [names["y5"]], [names["yt"]], perm=[0, 2, 3, 1, 4],
                             name=f"{base}/unpack_transpose"),
            helper.make_node("Reshape", [names["yt"], names["out_shape"]], [out],
                             name=f"{base}/unpack")]
        packed += 1
    if packed:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        _drop_unused_initializers(model)
    return bool(packed)


_ELEMENTWISE = ("Clip", "Tanh", "Relu", "Sigmoid")


def activations_before_unpack(model, context: PassContext) -> bool:
    """Move each elementwise activation (Clip, Tanh, Relu, Sigmoid) that alone reads a packed
    convolution's output ahead of the unpacking Reshape -> Transpose -> Reshape: the same
    values, so the same results bit for bit. ONNX Runtime then fuses the Clip into the
    convolution and runs the Tanh on the packed channels (a multiple of its channel block)
    instead of on a padded block. The activation's output keeps its name, after the unpack."""
    graph = Graph(model)
    outputs = {o.name for o in model.graph.output}
    moved = 0
    for unpack in [n for n in model.graph.node if n.name.endswith("/unpack")]:
        chain = [unpack]
        while len(chain) < 3:
            producer = graph.producer.get(chain[0].input[0])
            if producer is None or producer.op_type not in ("Reshape", "Transpose"):
                break
            chain.insert(0, producer)
        if [n.op_type for n in chain] != ["Reshape", "Transpose", "Reshape"]:
            continue
        while unpack.output[0] not in outputs:
            readers = graph.consumers.get(unpack.output[0], [])
            if len(readers) != 1 or readers[0].op_type not in _ELEMENTWISE:
                break
            act = readers[0]
            if any(name in graph.producer for name in act.input[1:] if name):
                break  # Clip bounds computed in the graph
            if any(r.op_type == "QuantizeLinear" for r in graph.consumers.get(act.output[0], [])):
                break  # int8: the truncation's Clip stays next to its QuantizeLinear
            packed, result = chain[0].input[0], act.output[0]
            act.input[0], act.output[0] = packed, f"{result}/packed"
            chain[0].input[0], unpack.output[0] = act.output[0], result
            names = [n.name for n in chain]
            nodes = [n for n in model.graph.node if n is not act]
            nodes.insert(next(i for i, n in enumerate(nodes) if n.name == names[0]), act)
            del model.graph.node[:]
            model.graph.node.extend(nodes)  # copies: look the chain up again
            by_name = {n.name: n for n in model.graph.node}
            chain = [by_name[name] for name in names]
            unpack = chain[-1]
            graph.refresh()
            moved += 1
    return bool(moved)


FP32_PASSES = [rewrite_clips, canonical_names, name_batch_dimension]
# Skipped with `literal=True`; run on the float convolutions of either precision.
# `activations_before_unpack` is exact and faster, but leaves the truncation's output only in
# the packed layout, where per-layer parity cannot compare it: it stays off until the
# per-layer mapping reads packed tensors.
FP32_LAYOUT_PASSES = [pack_front_end]
INT8_QUANTIZED_PASSES = [quantize_clip_outputs]
