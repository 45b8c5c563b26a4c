"""Exact layout rewrites of the float one-channel convolutions at the front of a TFLite model.

A convolution with one input channel (a fixed high-pass filter such as KV, the first
convolution of a steganalysis CNN) wastes most of XNNPACK's vector lanes: there is one
multiply per tap and nothing to vectorize across. `pack_convolution_chains` runs each chain
of such convolutions in a space-to-depth layout instead: SPACE_TO_DEPTH(2) -> CONV_2D ... ->
DEPTH_TO_SPACE(2). Every 2x2 block of pixels becomes 4 channels, a k x k kernel becomes a
(2 * ceil(k / 4) + 1)-square kernel over blocks (3x3 for k = 3 or 5) with 4 input and 4 * Cout
output channels, and the taps a pixel cannot reach are exact zeros: the sums are the same
products plus exact zeros, 1.44 times the multiply-adds of a 5x5 kernel, in a shape that
XNNPACK's convolution runs several times faster. The SAME zero padding of the packed
kernel pads whole blocks of zeros, so consecutive one-channel convolutions stay packed
between them.

`elementwise_before_unpack` then moves the elementwise ops that read a DEPTH_TO_SPACE
(a truncation's MAXIMUM/MINIMUM or its saturating int8 QUANTIZE, an activation) before it:
the same op on the same values in another order, and the unpacking then moves int8 values
(a quarter of the bytes) when the truncation quantizes.

Tensors keep their names: the packed values carry the name the converter gave them, and an
unpacked copy is named `<name>/depth_to_space`. Per-layer parity reads packed values back
through the space-to-depth view (`parity._layer_stats.reference_views`).
"""

from __future__ import annotations

import copy

import numpy as np

from edgetrunc.export.blocks import BLOCK, space_to_depth_kernel
from edgetrunc.export.tflite import graph as tg
from edgetrunc.export.tflite.integer import packed_int8_operands
from edgetrunc.runtime.layer_names import SATURATION_MARK

# Ops that act on each element alone: one variable input of the output's shape, any other
# input a scalar constant. DEQUANTIZE and CAST are left out: after them the unpacking would
# move more bytes, not fewer.
ELEMENTWISE = ("MAXIMUM", "MINIMUM", "TANH", "LOGISTIC", "RELU", "RELU6", "RELU_N1_TO_1",
               "RELU_0_TO_1", "LEAKY_RELU", "ELU", "HARD_SWISH", "ABS", "QUANTIZE")
UNPACKED_SUFFIX = "/depth_to_space"


def _spatial(graph, tensor) -> tuple | None:
    """`(H, W)` of a 4-D tensor whose spatial size is fixed, else None."""
    t = graph.g.tensors[tensor]
    shape = [int(d) for d in t.shape] if t.shape is not None else []
    signature = [int(d) for d in t.shapeSignature] if t.shapeSignature is not None and len(
        t.shapeSignature) else shape
    if len(shape) != 4 or any(d < 1 for d in signature[1:3]):
        return None
    return shape[1], shape[2]


def _packable(graph, op, block: int) -> bool:
    """A float (or int8: full-integer) CONV_2D of one input channel, constant weights of its
    type with odd sides, stride 1, no dilation, SAME padding, over an image whose sides
    divide by `block`."""
    schema = tg.schema_module()
    if graph.op_name(op) != "CONV_2D" or len(op.inputs) < 2:
        return False
    x, w = int(op.inputs[0]), int(op.inputs[1])
    xt, wt = graph.g.tensors[x], graph.g.tensors[w]
    options, size = op.builtinOptions, _spatial(graph, x)
    wshape = [int(d) for d in wt.shape] if wt.shape is not None else []
    return (size is not None and size[0] % block == 0 and size[1] % block == 0
            and int(xt.type) in (schema.TensorType.FLOAT32, schema.TensorType.INT8)
            and int(xt.shape[3]) == 1 and int(wt.type) == int(xt.type)
            and graph.constant(w) is not None
            and len(wshape) == 4 and wshape[1] % 2 == 1 and wshape[2] % 2 == 1
            and options.padding == schema.Padding.SAME and options.strideW == 1
            and options.strideH == 1 and options.dilationWFactor == 1
            and options.dilationHFactor == 1)


def _chains(graph, block: int) -> list:
    """Lists of op indices: packable convolutions, each one's output read by the next only."""
    chains, used = [], set()
    for index, op in enumerate(graph.g.operators):
        if index in used or not _packable(graph, op, block):
            continue
        chain = [index]
        while True:
            out = int(graph.g.operators[chain[-1]].outputs[0])
            reader = graph.sole_reader(out)
            if reader is None:
                break
            nxt = graph.g.operators[reader]
            if not _packable(graph, nxt, block) or int(nxt.inputs[0]) != out:
                break
            chain.append(reader)
        used.update(chain)
        chains.append(chain)
    return chains


def _packed_twin(graph, tensor, block: int):
    """A `TensorT` like `tensor` (name, type, quantization) in the space-to-depth shape."""
    twin = copy.deepcopy(graph.g.tensors[tensor])
    twin.buffer = 0
    _set_packed_shape(twin, block)
    return twin


def _packed_copy(graph, tensor, block: int, name: str | None = None) -> int:
    """A new tensor like `tensor` in the space-to-depth shape; its index."""
    twin = _packed_twin(graph, tensor, block)
    if name is not None:
        twin.name = name
    graph.g.tensors.append(twin)
    return len(graph.g.tensors) - 1


def _set_packed_shape(t, block: int) -> None:
    n, h, w, c = (int(d) for d in t.shape)
    t.shape = np.array([n, h // block, w // block, block * block * c], np.int32)
    t.shapeSignature = np.array([-1, h // block, w // block, block * block * c], np.int32)


def _block_op(graph, kind: str, source: int, target: int, block: int):
    options = "SpaceToDepthOptions" if kind == "SPACE_TO_DEPTH" else "DepthToSpaceOptions"
    op = tg.builtin_op(graph.model, kind, [source], [target], options)
    op.builtinOptions.blockSize = block
    return op


def _unpacked_name(name: str) -> str:
    kept = [part for part in name.split(";") if SATURATION_MARK not in part]
    return ";".join(kept or [name]) + UNPACKED_SUFFIX


def _pack_conv(graph, op, source: int, block: int) -> int:
    """Point `op` at the packed `source` with the packed kernel and bias; returns its packed output."""
    float32 = tg.schema_module().TensorType.FLOAT32
    if int(graph.g.tensors[source].type) == tg.schema_module().TensorType.INT8:
        op.inputs = np.array([source, *packed_int8_operands(graph, op, block)], np.int32)
        return int(op.outputs[0])
    w = int(op.inputs[1])
    kernel = graph.constant(w).reshape([int(d) for d in graph.g.tensors[w].shape])
    c_out = kernel.shape[0]
    name = graph.tensor_name(int(op.outputs[0]))
    inputs = [source, tg.const_tensor(graph, f"{name}/packed_kernel",
                                      space_to_depth_kernel(kernel.astype(np.float32), block),
                                      float32)]
    if len(op.inputs) > 2 and int(op.inputs[2]) >= 0:
        bias = graph.constant(int(op.inputs[2]))
        bias = np.zeros(c_out) if bias is None else bias
        inputs.append(tg.const_tensor(graph, f"{name}/packed_bias",
                                      np.tile(bias.astype(np.float32), block * block), float32))
    op.inputs = np.array(inputs, np.int32)
    return int(op.outputs[0])


def pack_convolution_chains(model_t, block: int = BLOCK) -> int:
    """Run every chain of float one-channel convolutions in the space-to-depth layout (see
    the module docstring); returns the number of convolutions rewritten."""
    graph = tg.Graph(model_t)
    chains = {chain[0]: chain for chain in _chains(graph, block)}
    members = {i for chain in chains.values() for i in chain}
    operators = []
    for index, op in enumerate(graph.g.operators):
        if index in chains:
            operators += _packed_chain(graph, chains[index], block)
        elif index not in members:
            operators.append(op)
    graph.g.operators = operators
    return len(members)


def _packed_chain(graph, chain, block: int) -> list:
    """SPACE_TO_DEPTH, the chain's convolutions packed, DEPTH_TO_SPACE into the last one's
    output tensor (renamed `<name>/depth_to_space`; the packed values keep the name)."""
    x = int(graph.g.operators[chain[0]].inputs[0])
    current = _packed_copy(graph, x, block, f"{graph.tensor_name(x)}/space_to_depth")
    ops = [_block_op(graph, "SPACE_TO_DEPTH", x, current, block)]
    for member in chain:
        conv = graph.g.operators[member]
        out = _pack_conv(graph, conv, current, block)
        if member == chain[-1]:
            current = _packed_copy(graph, out, block)
            graph.g.tensors[out].name = _unpacked_name(graph.tensor_name(out))
            conv.outputs = np.array([current], np.int32)
        else:  # read by the next convolution only: packed in place
            _set_packed_shape(graph.g.tensors[out], block)
            current = out
        ops.append(conv)
    return ops + [_block_op(graph, "DEPTH_TO_SPACE", current, out, block)]


def _reads_elementwise(graph, op, source: int) -> bool:
    """`op` computes each element of its one output from the same element of `source`."""
    if graph.op_name(op) not in ELEMENTWISE or len(op.outputs) != 1:
        return False
    others = [int(t) for t in op.inputs if t >= 0 and int(t) != source]
    if len(others) != len(op.inputs) - 1 or any(
            (value := graph.constant(t)) is None or value.size != 1 for t in others):
        return False
    src, out = graph.g.tensors[source], graph.g.tensors[int(op.outputs[0])]
    return out.shape is not None and list(out.shape) == list(src.shape)


def elementwise_before_unpack(model_t) -> int:
    """Move each elementwise op that alone reads a DEPTH_TO_SPACE before it (see the module
    docstring), as long as there is one; returns the number of ops moved."""
    graph = tg.Graph(model_t)
    moved = 0
    while True:
        found = None
        for index, op in enumerate(graph.g.operators):
            if graph.op_name(op) != "DEPTH_TO_SPACE":
                continue
            unpacked = int(op.outputs[0])
            reader = graph.sole_reader(unpacked)
            if reader is not None and _reads_elementwise(
                    graph, graph.g.operators[reader], unpacked) and int(
                    graph.g.operators[reader].outputs[0]) not in graph.outputs:
                found = index, reader
                break
        if found is None:
            return moved
        _move_before(graph, *found)
        moved += 1


def _move_before(graph, unpack_index: int, op_index: int) -> None:
    """Run op `op_index` on the packed input of DEPTH_TO_SPACE `unpack_index`, then unpack its
    result into its own output tensor (renamed); the unpacked tensor it read is reused as
    its packed output."""
    unpack, op = graph.g.operators[unpack_index], graph.g.operators[op_index]
    packed, unpacked, result = int(unpack.inputs[0]), int(unpack.outputs[0]), int(op.outputs[0])
    block = int(unpack.builtinOptions.blockSize)
    graph.g.tensors[unpacked] = _packed_twin(graph, result, block)
    op.inputs = np.array([packed if int(t) == unpacked else int(t) for t in op.inputs], np.int32)
    op.outputs = np.array([unpacked], np.int32)
    unpack.inputs = np.array([unpacked], np.int32)
    unpack.outputs = np.array([result], np.int32)
    graph.g.tensors[result].name = _unpacked_name(graph.tensor_name(unpacked))
    operators = [o for i, o in enumerate(graph.g.operators) if i != op_index]
    operators.insert(unpack_index, op)
    graph.g.operators = operators
    graph.refresh()
