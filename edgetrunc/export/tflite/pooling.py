"""int8 average pooling as an int8 depthwise convolution, for the truncation-aware int8 model.

XNNPACK runs AVERAGE_POOL_2D in float only, so the int8 model pools between a DEQUANTIZE and
a QUANTIZE (`passes.float_islands`), often followed by a float batch normalization (MUL and
ADD per channel, `INT8_FLOAT_TYPES`): four passes over the tensor in float. A VALID pool
divides every window by the same count, so DEQUANTIZE -> AVERAGE_POOL_2D (VALID) -> [MUL by
a per-channel or scalar constant] -> [ADD of one] -> QUANTIZE is one DEPTHWISE_CONV_2D over
the int8 input: each channel's taps are `scale_c / (kh * kw)`, stored per channel as +-127
(exact: the taps of a channel are equal), and its bias is the added constant in int32. The
int32 sum of the window is exact; the one rounding left is the requantization to the
QUANTIZE's int8 output, which the float chain does too. A SAME pool (whose border windows
hold fewer pixels) is left as it is.

The output tensor is named after the ops it replaces (`;`-joined, as the converter names
fused ops), so per-layer parity and the profile still find the pooling and the
normalization layers.
"""

from __future__ import annotations

import numpy as np

from edgetrunc.export.tflite import graph as tg

DEPTHWISE_VERSION = 6  # int8 with per-channel weights and optional dilation


def _single_reader(graph, tensor, outputs) -> int | None:
    readers = graph.consumers.get(int(tensor), [])
    return readers[0] if len(readers) == 1 and int(tensor) not in outputs else None


def _channel_constant(graph, op, source, channels) -> np.ndarray | None:
    """The per-channel (or scalar) constant that `op` combines with `source`, as `[C]`."""
    if graph.fused_activation(op) not in (None, "NONE") or len(op.inputs) != 2:
        return None
    (other,) = [int(t) for t in op.inputs if int(t) != int(source)] or [None]
    value = None if other is None else graph.constant(other)
    if value is None or value.size not in (1, channels):
        return None
    return np.broadcast_to(value.reshape(-1), (channels,)).astype(np.float64)


def _match(graph, index, outputs):
    """`(ops, pool, input, output, scale[C], shift[C])` of the chain starting at DEQUANTIZE
    `index`, or None."""
    schema = tg.schema_module()
    dequantize = graph.g.operators[index]
    source = int(dequantize.inputs[0])
    tensor = graph.g.tensors[source]
    if tensor.type != schema.TensorType.INT8 or tensor.shape is None or len(tensor.shape) != 4:
        return None
    channels = int(tensor.shape[3])
    scale, shift = np.ones(channels), np.zeros(channels)
    ops, current = [index], int(dequantize.outputs[0])
    reader = _single_reader(graph, current, outputs)
    if reader is None or graph.op_name(graph.g.operators[reader]) != "AVERAGE_POOL_2D":
        return None
    pool = graph.g.operators[reader]
    options = pool.builtinOptions
    if options.padding != schema.Padding.VALID or graph.fused_activation(pool) not in (None, "NONE"):
        return None
    ops.append(reader)
    current = int(pool.outputs[0])
    for kind in ("MUL", "ADD"):
        reader = _single_reader(graph, current, outputs)
        if reader is None or graph.op_name(graph.g.operators[reader]) != kind:
            continue
        value = _channel_constant(graph, graph.g.operators[reader], current, channels)
        if value is None:
            return None
        if kind == "MUL":
            scale = value
        else:
            shift = value
        ops.append(reader)
        current = int(graph.g.operators[reader].outputs[0])
    reader = _single_reader(graph, current, outputs)
    if reader is None or graph.op_name(graph.g.operators[reader]) != "QUANTIZE":
        return None
    ops.append(reader)
    target = int(graph.g.operators[reader].outputs[0])
    if graph.g.tensors[target].type != schema.TensorType.INT8:
        return None
    return ops, pool, source, target, scale, shift


def _quantized_constant(graph, name, values, tensor_type, scales, dimension):
    index = tg.const_tensor(graph, name, values, tensor_type)
    q = tg.quantization_parameters()
    q.scale = [float(s) for s in scales]
    q.zeroPoint = [0] * len(scales)
    q.quantizedDimension = dimension
    graph.g.tensors[index].quantization = q
    return index


def _depthwise(graph, pool, source, target, scale, shift, name):
    """The DEPTHWISE_CONV_2D op replacing the chain (see the module docstring)."""
    schema = tg.schema_module()
    options = pool.builtinOptions
    kh, kw = int(options.filterHeight), int(options.filterWidth)
    taps = scale / (kh * kw)
    step = np.where(taps != 0, np.abs(taps) / 127.0, 1.0)
    weights = np.broadcast_to(np.round(taps / step).astype(np.int8), (1, kh, kw, len(taps)))
    q_in = graph.g.tensors[source].quantization
    bias_step = float(q_in.scale[0]) * step
    bias = np.round(shift / bias_step).astype(np.int32)
    w = _quantized_constant(graph, f"{name}/depthwise_weights", np.ascontiguousarray(weights),
                            schema.TensorType.INT8, step, 3)
    b = _quantized_constant(graph, f"{name}/depthwise_bias", bias, schema.TensorType.INT32,
                            bias_step, 0)
    op = tg.new_op(tg.opcode_index(graph.model, "DEPTHWISE_CONV_2D", DEPTHWISE_VERSION),
                   [source, w, b], [target])
    op.builtinOptionsType = schema.BuiltinOptions.DepthwiseConv2DOptions
    op.builtinOptions = schema.DepthwiseConv2DOptionsT()
    op.builtinOptions.padding = schema.Padding.VALID
    op.builtinOptions.strideH, op.builtinOptions.strideW = int(options.strideH), int(options.strideW)
    op.builtinOptions.depthMultiplier = 1
    op.builtinOptions.dilationHFactor = op.builtinOptions.dilationWFactor = 1
    return op


def pools_as_depthwise(model_t) -> int:
    """Replace each DEQUANTIZE -> VALID AVERAGE_POOL_2D -> [MUL] -> [ADD] -> QUANTIZE chain
    by one int8 DEPTHWISE_CONV_2D; returns the number replaced."""
    graph = tg.Graph(model_t)
    outputs = set(int(t) for t in graph.g.outputs)
    replaced, drop = {}, set()
    for index, op in enumerate(graph.g.operators):
        if index in drop or graph.op_name(op) != "DEQUANTIZE":
            continue
        found = _match(graph, index, outputs)
        if found is None:
            continue
        ops, pool, source, target, scale, shift = found
        names = [graph.tensor_name(int(graph.g.operators[i].outputs[0])) for i in ops[2:-1]]
        names.append(graph.tensor_name(int(pool.outputs[0])))
        name = ";".join(n.removesuffix("/float") for n in names)
        replaced[ops[-1]] = _depthwise(graph, pool, source, target, scale, shift, name)
        graph.g.tensors[target].name = name
        drop.update(ops[:-1])
    graph.g.operators = [replaced.get(i, op) for i, op in enumerate(graph.g.operators)
                         if i not in drop]
    return len(replaced)
