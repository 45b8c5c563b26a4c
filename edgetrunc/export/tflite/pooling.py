"""VALID average pools, and the per-channel affine after them, as convolutions.

XNNPACK runs AVERAGE_POOL_2D in float only (the int8 model pools between a DEQUANTIZE and a
QUANTIZE, `passes.float_islands`) and slowly on few channels, and a batch normalization
after the pool is two more passes over the tensor (MUL and ADD per channel). A VALID pool
divides every window by the same count, so the chain

    [DEQUANTIZE] -> AVERAGE_POOL_2D (VALID) -> [MUL per channel] -> [ADD per channel] -> [QUANTIZE]

is a convolution with the taps `scale_c / (kh * kw)` and the bias `shift_c`. Which one
depends on the precision, on the channel count C and on whether the pool reads a
DEPTH_TO_SPACE whose block is the pool's stride (the unpacking that `packing` leaves after
the seed block of a steganalysis CNN):

| chain | C <= `DENSE_MAX_CHANNELS` | more channels |
|---|---|---|
| int8, reads a DEPTH_TO_SPACE | int8 CONV_2D over the packed blocks | int8 DEPTHWISE_CONV_2D |
| int8 | int8 CONV_2D with diagonal taps | int8 DEPTHWISE_CONV_2D |
| float, reads a DEPTH_TO_SPACE | float DEPTHWISE_CONV_2D window sums over the packed blocks, then a 1x1 CONV_2D adding the block's partial sums | float DEPTHWISE_CONV_2D |
| float, with a MUL or an ADD | float DEPTHWISE_CONV_2D | float DEPTHWISE_CONV_2D |

A packed form reads the packed values, and the DEPTH_TO_SPACE goes when nothing else reads
it. A float pool alone, and every SAME pool (its border windows hold fewer pixels), stay.
Why the dense forms: XNNPACK's int8 depthwise kernels work on 16 or more channels per
vector, so at 8 channels half the lanes idle; an int8 convolution doing C times the
multiply-adds runs on the int8 GEMM kernels instead and is faster on few channels
(BENCHMARKS.md, "Export").

Exactness. int8: the taps of a channel are equal, stored as +-127 with a per-channel scale
(exact), the zero taps add exact zeros, and the int32 window sum is exact; the one rounding
left is the requantization to the QUANTIZE's output, which the float chain does too, so
every int8 form gives the same bytes. Float: the same window sum in another order, scaled
once instead of twice: rounding-level differences (about 1e-7 relative), within the fp32
per-layer tolerance that parity checks.

The output tensor is named after the ops it replaces (`;`-joined, as the converter names
fused ops), so per-layer parity and the profile still find the pooling and the
normalization layers; packed window sums are `<name>/window_sums`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgetrunc.export.blocks import window_taps
from edgetrunc.export.tflite import graph as tg

DENSE_MAX_CHANNELS = 8
DEPTHWISE_INT8_VERSION = 6  # int8 with per-channel weights and optional dilation
CONV_INT8_VERSION = 3  # int8 with per-channel weights


@dataclass
class PoolChain:
    """One matched chain: the ops it replaces, what it reads and writes, its affine."""

    ops: list  # op indices, in order: [DEQUANTIZE], pool, [MUL], [ADD], [QUANTIZE]
    pool: object
    source: int  # the int8 tensor before the DEQUANTIZE, or the pool's float input
    target: int  # the chain's last output
    scale: np.ndarray
    shift: np.ndarray
    quantized: bool
    unpack: int | None = None  # a DEPTH_TO_SPACE writing `source`, block = the pool's stride

    @property
    def window(self) -> tuple:
        options = self.pool.builtinOptions
        return int(options.filterHeight), int(options.filterWidth)

    @property
    def strides(self) -> tuple:
        options = self.pool.builtinOptions
        return int(options.strideH), int(options.strideW)


def _channel_constant(graph, op, source, channels) -> np.ndarray | None:
    """The per-channel (or scalar) constant that `op` combines with `source`, as `[C]`."""
    if graph.fused_activation(op) not in (None, "NONE") or len(op.inputs) != 2:
        return None
    (other,) = [int(t) for t in op.inputs if int(t) != int(source)] or [None]
    value = None if other is None else graph.constant(other)
    if value is None or value.size not in (1, channels):
        return None
    return np.broadcast_to(value.reshape(-1), (channels,)).astype(np.float64)


def _pool_input(graph, index):
    """`(ops, source, quantized)` of what pool `index` reads, or None if it cannot be matched."""
    schema = tg.schema_module()
    x = int(graph.g.operators[index].inputs[0])
    producer = graph.producer.get(x)
    if producer is not None and graph.op_name(graph.g.operators[producer]) == "DEQUANTIZE":
        inner = int(graph.g.operators[producer].inputs[0])
        q = graph.g.tensors[inner].quantization
        if (graph.g.tensors[inner].type == schema.TensorType.INT8 and graph.sole_reader(x) == index
                and q is not None and q.scale is not None and len(q.scale) == 1):
            return [producer, index], inner, True
    if graph.g.tensors[x].type != schema.TensorType.FLOAT32:
        return None
    return [index], x, False


def _unpack(graph, source, stride) -> int | None:
    """The DEPTH_TO_SPACE that writes `source` with block `stride`, if any."""
    producer = graph.producer.get(int(source))
    if producer is None or graph.op_name(graph.g.operators[producer]) != "DEPTH_TO_SPACE":
        return None
    return producer if int(graph.g.operators[producer].builtinOptions.blockSize) == stride else None


def match_pool(graph, index) -> PoolChain | None:
    """The chain starting at AVERAGE_POOL_2D `index` (see the module docstring), or None."""
    schema = tg.schema_module()
    pool = graph.g.operators[index]
    options = pool.builtinOptions
    shape = graph.g.tensors[int(pool.inputs[0])].shape
    if (options.padding != schema.Padding.VALID or graph.fused_activation(pool) not in (None, "NONE")
            or shape is None or len(shape) != 4):
        return None
    found = _pool_input(graph, index)
    if found is None:
        return None
    ops, source, quantized = found
    channels = int(shape[3])
    scale, shift = np.ones(channels), np.zeros(channels)
    current = int(pool.outputs[0])
    for kind in ("MUL", "ADD"):
        reader = graph.sole_reader(current)
        if reader is None or graph.op_name(graph.g.operators[reader]) != kind:
            continue
        value = _channel_constant(graph, graph.g.operators[reader], current, channels)
        if value is None:
            break
        scale, shift = (value, shift) if kind == "MUL" else (scale, value)
        ops.append(reader)
        current = int(graph.g.operators[reader].outputs[0])
    if quantized:
        reader = graph.sole_reader(current)
        if reader is None or graph.op_name(graph.g.operators[reader]) != "QUANTIZE":
            return None
        ops.append(reader)
        current = int(graph.g.operators[reader].outputs[0])
        if graph.g.tensors[current].type != schema.TensorType.INT8:
            return None
    stride = int(options.strideH) if int(options.strideH) == int(options.strideW) else 0
    unpack = _unpack(graph, source, stride) if channels <= DENSE_MAX_CHANNELS else None
    if not quantized and unpack is None and len(ops) == 1:
        return None  # a float pool alone: nothing to fuse
    return PoolChain(ops, pool, source, current, scale, shift, quantized, unpack)


def _int8_weights(graph, chain: PoolChain, name: str, layout: str) -> int:
    """int8 taps +-127 with the per-channel scale `|scale_c| / (kh * kw) / 127`, as a
    depthwise `[1, kh, kw, C]`, a dense diagonal `[C, kh, kw, C]` or a packed
    `[C, ceil(kh / b), ceil(kw / b), b * b * C]` kernel."""
    schema = tg.schema_module()
    kh, kw = chain.window
    q, step = _int8_taps(chain)
    channels = len(q)
    if layout == "depthwise":
        values, dimension = np.broadcast_to(q, (1, kh, kw, channels)), 3
    elif layout == "diagonal":
        values, dimension = np.einsum("c,hw,cd->chwd", q, np.ones((kh, kw)), np.eye(channels)), 0
    else:
        block = chain.strides[0]
        pattern = window_taps(kh, kw, block, channels)  # [ch, cw, b*b*C]
        owner = np.tile(np.eye(channels), (1, block * block))  # [C, b*b*C]
        values, dimension = q[:, None, None, None] * pattern[None] * owner[:, None, None, :], 0
    index = tg.const_tensor(graph, f"{name}/{layout}_weights",
                            np.ascontiguousarray(values.astype(np.int8)), schema.TensorType.INT8)
    _quantize_per_channel(graph, index, step, dimension)
    return index


def _int8_taps(chain: PoolChain) -> tuple:
    """`(taps, scales)` per channel: `scale_c / (kh * kw)` is `taps_c * scales_c`, taps +-127
    (0 for a zero scale, whose step is then 1)."""
    kh, kw = chain.window
    taps = chain.scale / (kh * kw)
    step = np.where(taps != 0, np.abs(taps) / 127.0, 1.0)
    return np.round(taps / step), step


def _quantize_per_channel(graph, tensor: int, scales, dimension: int) -> None:
    q = tg.quantization_parameters()
    q.scale = [float(s) for s in scales]
    q.zeroPoint = [0] * len(q.scale)
    q.quantizedDimension = dimension
    graph.g.tensors[tensor].quantization = q


def _int8_bias(graph, chain: PoolChain, name: str) -> int:
    """int32 bias `shift_c` in steps of the input scale times the weight scale of channel c."""
    _, step = _int8_taps(chain)
    bias_step = float(graph.g.tensors[chain.source].quantization.scale[0]) * step
    index = tg.const_tensor(graph, f"{name}/bias", np.round(chain.shift / bias_step).astype(np.int32),
                            tg.schema_module().TensorType.INT32)
    _quantize_per_channel(graph, index, bias_step, 0)
    return index


def _float(graph, name: str, values) -> int:
    return tg.const_tensor(graph, name, np.ascontiguousarray(values, dtype=np.float32),
                           tg.schema_module().TensorType.FLOAT32)


def _conv_op(graph, kind: str, inputs, output: int, strides=(1, 1), version: int = 1):
    """A CONV_2D or DEPTHWISE_CONV_2D with VALID padding, no dilation and no activation."""
    options = "Conv2DOptions" if kind == "CONV_2D" else "DepthwiseConv2DOptions"
    op = tg.builtin_op(graph.model, kind, inputs, [output], options, version)
    if kind != "CONV_2D":
        op.builtinOptions.depthMultiplier = 1
    op.builtinOptions.padding = tg.schema_module().Padding.VALID
    op.builtinOptions.strideH, op.builtinOptions.strideW = strides
    op.builtinOptions.dilationHFactor = op.builtinOptions.dilationWFactor = 1
    return op


def _int8_ops(graph, chain: PoolChain, name: str) -> list:
    channels = len(chain.scale)
    bias = _int8_bias(graph, chain, name)
    if channels > DENSE_MAX_CHANNELS:
        weights = _int8_weights(graph, chain, name, "depthwise")
        return [_conv_op(graph, "DEPTHWISE_CONV_2D", [chain.source, weights, bias], chain.target,
                         chain.strides, DEPTHWISE_INT8_VERSION)]
    if chain.unpack is None:
        weights = _int8_weights(graph, chain, name, "diagonal")
        return [_conv_op(graph, "CONV_2D", [chain.source, weights, bias], chain.target,
                         chain.strides, CONV_INT8_VERSION)]
    packed = int(graph.g.operators[chain.unpack].inputs[0])
    weights = _int8_weights(graph, chain, name, "packed")
    return [_conv_op(graph, "CONV_2D", [packed, weights, bias], chain.target,
                     version=CONV_INT8_VERSION)]


def _float_ops(graph, chain: PoolChain, name: str) -> list:
    kh, kw = chain.window
    channels = len(chain.scale)
    if chain.unpack is None:
        taps = np.broadcast_to(chain.scale / (kh * kw), (1, kh, kw, channels))
        inputs = [chain.source, _float(graph, f"{name}/depthwise_weights", taps),
                  _float(graph, f"{name}/bias", chain.shift)]
        return [_conv_op(graph, "DEPTHWISE_CONV_2D", inputs, chain.target, chain.strides)]
    block = chain.strides[0]
    packed = int(graph.g.operators[chain.unpack].inputs[0])
    pattern = window_taps(kh, kw, block, channels)
    sums = tg.float_twin(graph, chain.target, "window_sums")
    n, h, w, _ = (int(d) for d in graph.g.tensors[chain.target].shape)
    graph.g.tensors[sums].name = f"{name}/window_sums"
    graph.g.tensors[sums].shape = np.array([n, h, w, pattern.shape[2]], np.int32)
    graph.g.tensors[sums].shapeSignature = np.array([-1, h, w, pattern.shape[2]], np.int32)
    window = _conv_op(graph, "DEPTHWISE_CONV_2D", [
        packed, _float(graph, f"{name}/window_taps", pattern[None]),
        _float(graph, f"{name}/window_bias", np.zeros(pattern.shape[2]))], sums)
    combine = np.tile(np.diag(chain.scale / (kh * kw)), (1, block * block))[:, None, None, :]
    add = _conv_op(graph, "CONV_2D", [
        sums, _float(graph, f"{name}/combine_weights", combine),
        _float(graph, f"{name}/bias", chain.shift)], chain.target)
    return [window, add]


def _fused_name(graph, chain: PoolChain) -> str:
    """The output names of the normalization ops and the pool, `;`-joined (float twins'
    suffixes dropped)."""
    pool_index = chain.ops[1] if chain.quantized else chain.ops[0]
    after = chain.ops[chain.ops.index(pool_index) + 1:len(chain.ops) - (1 if chain.quantized else 0)]
    names = [graph.tensor_name(int(graph.g.operators[i].outputs[0])) for i in after]
    names.append(graph.tensor_name(int(chain.pool.outputs[0])))
    return ";".join(n.removesuffix("/float") for n in names)


def rewrite_pools_as_convolutions(model_t) -> int:
    """Replace each VALID average pool chain by its convolutions (see the module docstring);
    returns the number of chains replaced."""
    graph = tg.Graph(model_t)
    replaced, drop = {}, set()
    for index, op in enumerate(graph.g.operators):
        if index in drop or graph.op_name(op) != "AVERAGE_POOL_2D":
            continue
        chain = match_pool(graph, index)
        if chain is None:
            continue
        name = _fused_name(graph, chain)
        build = _int8_ops if chain.quantized else _float_ops
        replaced[chain.ops[-1]] = build(graph, chain, name)
        graph.g.tensors[chain.target].name = name
        drop.update(chain.ops[:-1])
        if chain.unpack is not None and graph.sole_reader(chain.source) == chain.ops[0]:
            drop.add(chain.unpack)
    if not replaced:
        return 0
    operators = []
    for index, op in enumerate(graph.g.operators):
        if index in replaced:
            operators += replaced[index]
        elif index not in drop:
            operators.append(op)
    graph.g.operators = operators
    graph.refresh()
    graph.remove_unread(("DEQUANTIZE",))
    return len(replaced)
