"""The ONNX rewrites for speed: the one-channel front end over 2x2 blocks, and the VALID pool
after it as convolutions (NCHW; the TFLite ones are `export.tflite.packing` and `.pooling`).

ONNX Runtime's blocked (NCHWc) convolutions pad channels to their block (16 with AVX-512),
and each change between the blocked layout and plain NCHW is a reorder pass over the
tensor. Over 2x2 blocks of pixels packed into channels, the seed-block convolution, the
truncation, the activation and the pool all stay in the blocked layout:

- `pack_convolution_chains`: each chain of float one-channel Convs with at least
  `PACK_MIN_OUTPUTS` outputs (stride 1, SAME, odd kernels, even fixed sides) becomes
  SpaceToDepth(2) -> Conv ... -> DepthToSpace(2, "DCR"), with the kernels of
  `blocks.space_to_depth_kernel`: the same products plus exact zeros; only where the two
  passes below remove that DepthToSpace (ONNX Runtime's moves single floats in NCHW).
- `elementwise_before_unpack`: a Clip, Tanh, Relu or Sigmoid that alone reads the unpacking
  runs before it (the same op on the same values).
- `pools_as_convolutions`: AveragePool (VALID) -> [Mul per channel] ->
  [Add per channel]. After an unpacking whose block is the stride, and with at most
  `DENSE_MAX_CHANNELS` channels: a depthwise Conv summing each window over the packed blocks
  (`blocks.window_taps`), then a 1x1 Conv adding a block's partial sums times
  scale / (kh * kw) plus the shift. Otherwise one depthwise Conv with those taps. The same
  sums in another order (rounding-level differences).

A QDQ (int8) graph is left as it is: there the truncation's Clip feeds a QuantizeLinear,
so the unpacking would stay before it, and ONNX Runtime's DepthToSpace moves single floats
in NCHW: the packed int8 model ran 0.84x as fast as the unpacked one.

Packed tensors keep the names tf2onnx gave them (per-layer parity reads them through its
space-to-depth view); an unpacked copy is `<name>/depth_to_space`, packed window sums
`<pool output>/window_sums`.
"""

from __future__ import annotations

import numpy as np

from edgetrunc.export.blocks import BLOCK, space_to_depth_kernel, window_taps
from edgetrunc.export.onnx.graph import Graph

DENSE_MAX_CHANNELS = 8
# Only a one-channel Conv with at least this many outputs is packed. ONNX Runtime's blocked
# kernel sums a packed Conv's taps input channel by input channel, i.e. by position in the
# block; for a one-output high-pass filter such as KV, whose taps alternate in sign, that
# adds the same-sign taps first and the larger partial sums round more: on photos tlunet's
# output moved 2.9e-4 from Keras (the shipped artifacts' bound is 1e-4) against 8e-6 with the
# front end left as it is, for 1.30x instead of 1.15x the speed. Each output of the 8-output
# seed-block Conv adds only the taps of one filter per block position, as before.
PACK_MIN_OUTPUTS = 8
UNPACKED_SUFFIX = "/depth_to_space"
ELEMENTWISE = ("Clip", "Tanh", "Relu", "Sigmoid")


def value_shapes(model) -> dict:
    """`{tensor name: [dims]}` from ONNX shape inference (None for a free dimension)."""
    from onnx import shape_inference

    inferred = shape_inference.infer_shapes(model)
    shapes = {}
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return shapes


def _quantized(model) -> bool:
    """A QDQ graph: left as it is (see the module docstring)."""
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _initializers(model) -> dict:
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _packable(node, shapes, weights, block) -> bool:
    """A float Conv of one input channel: constant odd kernel, stride 1, no dilation, SAME,
    over an image whose fixed sides divide by `block`."""
    if node.op_type != "Conv" or len(node.input) < 2:
        return False
    w = weights.get(node.input[1])
    x = shapes.get(node.input[0]) or []
    bias = node.input[2] if len(node.input) > 2 else ""
    if (w is None or w.dtype != np.float32 or w.ndim != 4 or w.shape[1] != 1
            or w.shape[0] < PACK_MIN_OUTPUTS or w.shape[2] % 2 == 0 or w.shape[3] % 2 == 0
            or (bias and bias not in weights)):
        return False
    if len(x) != 4 or x[1] != 1 or not x[2] or not x[3] or x[2] % block or x[3] % block:
        return False
    attrs = _attrs(node)
    same = [w.shape[2] // 2, w.shape[3] // 2] * 2
    return (attrs.get("group", 1) == 1 and list(attrs.get("strides", [1, 1])) == [1, 1]
            and list(attrs.get("dilations", [1, 1])) == [1, 1]
            and (list(attrs.get("pads", [0] * 4)) == same
                 or attrs.get("auto_pad", b"") in (b"SAME_UPPER", b"SAME_LOWER")))


def _chains(graph, shapes, weights, block) -> list:
    """Lists of packable Convs, each one's output read by the next one only."""
    chains, used = [], set()
    for node in graph.graph.node:
        if node.name in used or not _packable(node, shapes, weights, block):
            continue
        chain = [node]
        while True:
            nxt = graph.sole_reader(chain[-1].output[0])
            if nxt is None or not _packable(nxt, shapes, weights, block) \
                    or nxt.input[0] != chain[-1].output[0]:
                break
            chain.append(nxt)
        used.update(n.name for n in chain)
        if chain[-1].output[0] not in graph.outputs:
            chains.append(chain)
    return chains


def _packed_conv(model, conv, source, weights, block):
    """`conv` over the packed `source`; it keeps its name and its output's name."""
    from onnx import helper, numpy_helper

    kernel = weights[conv.input[1]]
    packed = space_to_depth_kernel(kernel.transpose(0, 2, 3, 1), block).transpose(0, 3, 1, 2)
    out = conv.output[0]
    inputs = [source, f"{out}/packed_kernel"]
    model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(packed),
                                                           inputs[1]))
    if len(conv.input) > 2 and conv.input[2]:
        inputs.append(f"{out}/packed_bias")
        bias = np.tile(weights[conv.input[2]].astype(np.float32), block * block)
        model.graph.initializer.append(numpy_helper.from_array(bias, inputs[2]))
    ch, cw = packed.shape[2], packed.shape[3]
    return helper.make_node("Conv", inputs, [out], name=conv.name or out, kernel_shape=[ch, cw],
                            pads=[ch // 2, cw // 2, ch // 2, cw // 2])


def _rename_readers(model, old: str, new: str, skip=()) -> None:
    for node in model.graph.node:
        if node.name in skip:
            continue
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def _replace_nodes(model, replacements: dict, drop: set) -> None:
    """Rebuild the node list: a node named in `replacements` becomes its list of nodes."""
    nodes = []
    for node in model.graph.node:
        if node.name in replacements:
            nodes += replacements[node.name]
        elif node.name not in drop:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.value_info[:]  # shapes changed under kept names; inference redoes them


def pack_convolution_chains(model, block: int = BLOCK) -> int:
    """Run over packed blocks every chain of float one-channel Convs whose values nothing has
    to unpack once `elementwise_before_unpack` and `pools_as_convolutions` ran (a trial on a
    copy says which); returns the number of Convs rewritten. ONNX Runtime's DepthToSpace
    moves single floats in NCHW: a Ye-Net-size model (30 filters, 2x2 pools) whose unpacking
    stays ran 0.91x as fast packed."""
    import onnx

    if _quantized(model):
        return 0
    trial = onnx.ModelProto()
    trial.CopyFrom(model)
    unpackings = _pack(trial, block, ())
    if not unpackings:
        return 0
    elementwise_before_unpack(trial)
    rewrite_pools_as_convolutions(trial)
    stays = {n.name for n in trial.graph.node if n.op_type == "DepthToSpace"}
    if not set(unpackings) - stays:
        return 0
    return sum(_pack(model, block, stays).values())


def _pack(model, block: int, skip) -> dict:
    """Pack every chain whose unpacking is not named in `skip`; returns `{unpacking node name:
    number of Convs}` of the chains packed."""
    from onnx import helper

    _name_nodes(model)
    weights = _initializers(model)
    shapes = value_shapes(model)
    _drop_identity_reshapes(model, shapes, weights)
    chains = [c for c in _chains(Graph(model), shapes, weights, block)
              if f"{c[-1].name}/depth_to_space" not in skip]
    replacements, drop, renames = {}, set(), []
    for chain in chains:
        x, out = chain[0].input[0], chain[-1].output[0]
        current = f"{x}/space_to_depth"
        nodes = [helper.make_node("SpaceToDepth", [x], [current], blocksize=block,
                                  name=f"{chain[0].name}/space_to_depth")]
        for conv in chain:
            nodes.append(_packed_conv(model, conv, current, weights, block))
            current = conv.output[0]
        nodes.append(helper.make_node("DepthToSpace", [out], [out + UNPACKED_SUFFIX],
                                      blocksize=block, mode="DCR",
                                      name=f"{chain[-1].name}/depth_to_space"))
        replacements[chain[-1].name] = nodes
        drop.update(n.name for n in chain[:-1])
        renames.append((out, {n.name for n in nodes}))
    if chains:
        _replace_nodes(model, replacements, drop)
        for out, readers_kept in renames:
            _rename_readers(model, out, out + UNPACKED_SUFFIX, readers_kept)
    return {f"{c[-1].name}/depth_to_space": len(c) for c in chains}


def _drop_identity_reshapes(model, shapes, weights) -> int:
    """Remove each Reshape of a 4-D tensor to its own shape (tf2onnx leaves one between two
    one-channel convolutions: NCHW -> NHWC -> NCHW of one channel); its readers read its
    input. Returns the number removed."""
    outputs = {o.name for o in model.graph.output}
    drop = []
    for node in model.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.output[0] in outputs:
            continue
        source, target = shapes.get(node.input[0]) or [], weights.get(node.input[1])
        if (len(source) != 4 or target is None or target.size != 4 or None in source[1:]
                or int(target[0]) not in (-1, 0) or list(target[1:]) != source[1:]):
            continue
        drop.append(node)
    for node in drop:
        _rename_readers(model, node.output[0], node.input[0])
        model.graph.node.remove(node)
    return len(drop)


def _name_nodes(model) -> None:
    """Give every unnamed node its first output's name (node names key the rewrites)."""
    for node in model.graph.node:
        if not node.name:
            node.name = node.output[0]


def elementwise_before_unpack(model) -> int:
    """Move each elementwise op that alone reads a DepthToSpace before it (see the module
    docstring), as long as there is one; returns the number moved."""
    moved = 0
    while True:
        graph = Graph(model)
        found = None
        for unpack in (n for n in model.graph.node if n.op_type == "DepthToSpace"):
            act = graph.sole_reader(unpack.output[0])
            if (act is not None and act.op_type in ELEMENTWISE
                    and act.output[0] not in graph.outputs
                    and not any(name in graph.producer for name in act.input[1:] if name)
                    and not any(r.op_type == "QuantizeLinear"
                                for r in graph.consumers.get(act.output[0], []))):
                found = unpack, act
                break
        if found is None:
            return moved
        unpack, act = found
        result = act.output[0]
        act.input[0] = unpack.input[0]
        unpack.input[0], unpack.output[0] = result, result + UNPACKED_SUFFIX
        _rename_readers(model, result, result + UNPACKED_SUFFIX, {unpack.name})
        nodes = [n for n in model.graph.node if n.name != act.name]
        position = next(i for i, n in enumerate(nodes) if n.name == unpack.name)
        nodes.insert(position, act)
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        moved += 1


def _channel_constant(weights, node, source, channels):
    """The per-channel (or scalar) constant `node` combines with `source`, as `[C]`."""
    others = [name for name in node.input if name != source]
    if len(node.input) != 2 or len(others) != 1 or others[0] not in weights:
        return None
    value = np.asarray(weights[others[0]], np.float64)
    if value.size == 1:
        return np.full(channels, float(value.reshape(())))
    if value.size == channels and value.ndim >= 3 and value.shape[-3] == channels:
        return value.reshape(-1)
    return None


def _match_pool(graph, weights, shapes, pool):
    """`(nodes, unpack, scale, shift)` of the chain at AveragePool `pool`, or None."""
    attrs = _attrs(pool)
    kernel = list(attrs.get("kernel_shape", []))
    strides = list(attrs.get("strides", [1] * len(kernel)))
    shape = shapes.get(pool.input[0]) or []
    if (len(kernel) != 2 or len(shape) != 4 or not shape[1] or any(attrs.get("pads", [0]))
            or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID")
            or attrs.get("ceil_mode", 0) or any(d != 1 for d in attrs.get("dilations", [1]))):
        return None
    channels = shape[1]
    scale, shift, nodes, current = np.ones(channels), np.zeros(channels), [pool], pool.output[0]
    for kind in ("Mul", "Add"):
        reader = graph.sole_reader(current)
        if reader is None or reader.op_type != kind:
            continue
        value = _channel_constant(weights, reader, current, channels)
        if value is None:
            break
        scale, shift = (value, shift) if kind == "Mul" else (scale, value)
        nodes.append(reader)
        current = reader.output[0]
    unpack = graph.producer.get(pool.input[0])
    if (unpack is None or unpack.op_type != "DepthToSpace" or channels > DENSE_MAX_CHANNELS
            or _attrs(unpack).get("mode", b"DCR") != b"DCR"
            or strides != [_attrs(unpack)["blocksize"]] * 2):
        unpack = None
    if unpack is None and len(nodes) == 1:
        return None
    return nodes, unpack, scale, shift


def _pool_convs(model, nodes, unpack, scale, shift) -> list:
    from onnx import helper, numpy_helper

    pool, target = nodes[0], nodes[-1].output[0]
    attrs = _attrs(pool)
    kh, kw = attrs["kernel_shape"]
    channels = len(scale)

    def constant(name, value):
        model.graph.initializer.append(numpy_helper.from_array(
            np.ascontiguousarray(value, dtype=np.float32), name))
        return name

    base = pool.output[0]
    if unpack is None:
        taps = np.broadcast_to((scale / (kh * kw))[:, None, None, None], (channels, 1, kh, kw))
        return [helper.make_node(
            "Conv", [pool.input[0], constant(f"{base}/depthwise_weights", taps),
                     constant(f"{base}/bias", shift)], [target], name=pool.name,
            kernel_shape=[kh, kw], strides=list(attrs.get("strides", [1, 1])), group=channels)]
    block = int(_attrs(unpack)["blocksize"])
    pattern = window_taps(kh, kw, block, channels).transpose(2, 0, 1)[:, None]
    combine = np.tile(np.diag(scale / (kh * kw)), (1, block * block))[:, :, None, None]
    sums = f"{base}/window_sums"
    return [helper.make_node("Conv", [unpack.input[0], constant(f"{base}/window_taps", pattern)],
                             [sums], name=pool.name, kernel_shape=list(pattern.shape[2:]),
                             group=pattern.shape[0]),
            helper.make_node("Conv", [sums, constant(f"{base}/combine_weights", combine),
                                      constant(f"{base}/bias", shift)], [target],
                             name=f"{pool.name}/combine", kernel_shape=[1, 1])]


def rewrite_pools_as_convolutions(model) -> int:
    """Replace each VALID AveragePool chain of a float graph by its convolutions (see the
    module docstring); returns the number replaced."""
    if _quantized(model):
        return 0
    _name_nodes(model)
    graph, weights, shapes = Graph(model), _initializers(model), value_shapes(model)
    replacements, drop = {}, set()
    for pool in [n for n in model.graph.node if n.op_type == "AveragePool"]:
        found = _match_pool(graph, weights, shapes, pool)
        if found is None:
            continue
        nodes, unpack, scale, shift = found
        replacements[nodes[-1].name] = _pool_convs(model, nodes, unpack, scale, shift)
        drop.update(n.name for n in nodes[:-1])
        reader = None if unpack is None else graph.sole_reader(unpack.output[0])
        if reader is not None and reader.name == pool.name:
            drop.add(unpack.name)
    if replacements:
        _replace_nodes(model, replacements, drop)
    return len(replacements)
