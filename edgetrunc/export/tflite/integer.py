"""Full-integer TFLite: the passes that make an int8 graph exact where it can be, and its proof.

A full-integer model (`precision="int8-full"`) has int8 input and output tensors and no
float tensor anywhere, so that integer-only targets (Arm Ethos-U NPUs, TFLite Micro on
Cortex-M) run all of it. Three things keep it faithful to the float model:

- `pin_pixel_input` (calibrated model): the input range is exactly `[0, 255]`, so the int8
  input has scale 1 and zero point -128: a pixel value p is stored as p - 128, no loss.
- `exact_filter_ranges` (calibrated model): a convolution whose weights are integer
  multiples of one step per output channel (the KV kernel is k/12, SRM banks are small
  rationals; `exact_steps`) is noted, and when it reads the pixel input with one step for
  every channel, its output range is set to `[-128, 127]` times that step: its int8 output
  holds the filter's residual exactly, saturating beyond +-127 steps.
- `exact_filter_weights` (quantized model): those convolutions get that step as their
  per-channel weight scale, so their int8 weights are the exact integers (the converter's
  `max|w| / 127` would round 8/12 to 85/127), the int32 bias requantized to match.

`float_tensors` lists what is not integer; `require_full_integer` turns the first one into
the one-line error naming the layer (a model with an op that has no integer kernel gets no
half-integer file).
"""

from __future__ import annotations

import numpy as np

from edgetrunc.errors import InputError
from edgetrunc.export.blocks import space_to_depth_kernel
from edgetrunc.export.tflite import graph as tg
from edgetrunc.models._filters import exact_steps
from edgetrunc.runtime.layer_names import first_layer

PIXEL_RANGE = (0.0, 255.0)
_CONVOLUTIONS = {"CONV_2D": 0, "DEPTHWISE_CONV_2D": 3}  # op -> output-channel axis of its weights


def _set_range(graph, tensor: int, low: float, high: float) -> None:
    if graph.g.tensors[tensor].quantization is None:
        graph.g.tensors[tensor].quantization = tg.quantization_parameters()
    q = graph.g.tensors[tensor].quantization
    q.min, q.max = [float(low)], [float(high)]


def pin_pixel_input(model_t, context) -> bool:
    """Set the range of every graph input to the pixel range [0, 255] (scale 1, zero point -128)."""
    graph = tg.Graph(model_t)
    for index in graph.g.inputs:
        _set_range(graph, int(index), *PIXEL_RANGE)
    return bool(len(graph.g.inputs))


def exact_filter_ranges(model_t, context) -> bool:
    """Note each convolution with exact steps (`context.exact_filters`: output tensor name ->
    (float weights, steps)); one that reads the pixel input with one step gets the output
    range of +-127 steps (see the module docstring)."""
    graph = tg.Graph(model_t)
    inputs = {int(i) for i in graph.g.inputs}
    changed = False
    for op in graph.g.operators:
        axis = _CONVOLUTIONS.get(graph.op_name(op))
        weights = graph.constant(int(op.inputs[1])) if axis is not None else None
        if weights is None or len(op.inputs) < 2:
            continue
        shape = tuple(int(d) for d in graph.g.tensors[int(op.inputs[1])].shape)
        weights = weights.reshape(shape)
        steps = exact_steps(weights, axis)
        if steps is None:
            continue
        output = int(op.outputs[0])
        context.exact_filters[graph.tensor_name(output)] = (weights, steps)
        bias = graph.constant(int(op.inputs[2])) if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
        if (int(op.inputs[0]) in inputs and np.allclose(steps, steps[0], rtol=1e-6)
                and (bias is None or not np.any(bias))
                and graph.fused_activation(op) in (None, "NONE")):
            _set_range(graph, output, -128 * steps[0], 127 * steps[0])
            changed = True
    return changed


def _requantize_bias(graph, op, steps) -> None:
    if len(op.inputs) < 3 or op.inputs[2] < 0:
        return
    bias = int(op.inputs[2])
    values = graph.constant(bias)
    if values is None:
        return
    input_scale = float(graph.g.tensors[int(op.inputs[0])].quantization.scale[0])
    bias_steps = input_scale * np.asarray(steps, np.float64)
    data = np.round(values.reshape(-1) / bias_steps).astype(np.int32)
    _write_constant(graph, bias, data, bias_steps, 0)


def _write_constant(graph, tensor: int, data: np.ndarray, scales, dimension: int) -> None:
    buffer = tg.schema_module().BufferT()
    buffer.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
    graph.model.buffers.append(buffer)
    graph.g.tensors[tensor].buffer = len(graph.model.buffers) - 1
    q = tg.quantization_parameters()
    q.scale = [float(s) for s in scales]
    q.zeroPoint = [0] * len(q.scale)
    q.quantizedDimension = dimension
    graph.g.tensors[tensor].quantization = q


def exact_filter_weights(model_t, context) -> bool:
    """Store the weights of each convolution noted by `exact_filter_ranges` as exact integers
    with its steps as the per-channel scale; the int32 bias follows."""
    if not context.exact_filters:
        return False
    graph = tg.Graph(model_t)
    changed = False
    for op in graph.g.operators:
        axis = _CONVOLUTIONS.get(graph.op_name(op))
        found = context.exact_filters.get(graph.tensor_name(int(op.outputs[0])))
        if axis is None or found is None:
            continue
        weights, steps = found
        tensor = graph.g.tensors[int(op.inputs[1])]
        if tensor.type != tg.schema_module().TensorType.INT8:
            continue
        view = [1] * weights.ndim
        view[axis] = len(steps)
        data = np.round(weights / np.reshape(steps, view)).astype(np.int8)
        _requantize_bias(graph, op, steps)
        _write_constant(graph, int(op.inputs[1]), data, steps, axis)
        changed = True
    return changed


def _raw_constant(graph, tensor: int, dtype) -> np.ndarray:
    t = graph.g.tensors[tensor]
    data = bytes(bytearray(graph.model.buffers[t.buffer].data))
    return np.frombuffer(data, dtype).reshape([int(d) for d in t.shape])


def _tiled_quantization(quantization, repeats: int):
    q = tg.quantization_parameters()
    q.scale = [float(s) for s in np.tile(np.asarray(quantization.scale, np.float64), repeats)]
    q.zeroPoint = [int(z) for z in np.tile(np.asarray(quantization.zeroPoint, np.int64), repeats)]
    q.quantizedDimension = int(quantization.quantizedDimension)
    return q


def packed_int8_operands(graph, op, block: int) -> list:
    """`[kernel, bias]` tensors of an int8 one-channel CONV_2D run over `block` x `block`
    blocks (`export.tflite.packing`): the int8 weights rearranged as exact integers
    (`space_to_depth_kernel`), their per-channel scales and the int32 bias repeated for each
    position in the block, so that each packed output channel sums the same integer products
    (plus exact zeros) and is requantized with its original channel's multiplier: the
    packed convolution's int8 output is the original's, bit for bit."""
    schema = tg.schema_module()
    w = int(op.inputs[1])
    kernel = _raw_constant(graph, w, np.int8)
    repeats = block * block
    name = graph.tensor_name(int(op.outputs[0]))
    packed = space_to_depth_kernel(kernel.astype(np.float32), block).astype(np.int8)
    weights = tg.const_tensor(graph, f"{name}/packed_kernel", packed, schema.TensorType.INT8)
    graph.g.tensors[weights].quantization = _tiled_quantization(graph.g.tensors[w].quantization, repeats)
    operands = [weights]
    if len(op.inputs) > 2 and int(op.inputs[2]) >= 0:
        b = int(op.inputs[2])
        bias = tg.const_tensor(graph, f"{name}/packed_bias",
                               np.tile(_raw_constant(graph, b, np.int32), repeats),
                               schema.TensorType.INT32)
        graph.g.tensors[bias].quantization = _tiled_quantization(graph.g.tensors[b].quantization, repeats)
        operands.append(bias)
    return operands


def float_tensors(graph) -> list:
    """`[(op index, tensor index)]` of every float activation read or written by an op."""
    floats = (tg.schema_module().TensorType.FLOAT32, tg.schema_module().TensorType.FLOAT16)
    found = []
    for index, op in enumerate(graph.g.operators):
        for t in [*op.inputs, *op.outputs]:
            if t >= 0 and graph.g.tensors[int(t)].type in floats:
                found.append((index, int(t)))
    return found


def output_meaning(graph) -> str:
    """What a detector's int8 output holds: the stego logit (FULLY_CONNECTED, one unit, the
    quantization-aware model's output) or probabilities (SOFTMAX / LOGISTIC, steps of 1/256)."""
    tensor = int(graph.g.outputs[0])
    producer = graph.producer.get(tensor)
    kind = graph.op_name(graph.g.operators[producer]) if producer is not None else None
    if kind in ("SOFTMAX", "LOGISTIC"):
        return f"stego probability ({kind}, int8 steps of 1/256)"
    columns = int(graph.g.tensors[tensor].shape[-1])
    return ("stego logit z_stego - z_cover (int8; probability = sigmoid, decision at logit >= 0)"
            if columns == 1 else f"logits of {columns} classes (int8; probability = softmax)")


def require_full_integer(content: bytes, layer_names=()) -> None:
    """Raise InputError naming the first layer whose op keeps a float tensor (no integer
    kernel) or an input / output that is not integer; return quietly for a full-integer model."""
    graph = tg.Graph(tg.read_model(content))
    integer = (tg.schema_module().TensorType.INT8, tg.schema_module().TensorType.UINT8)
    for kind, tensors in (("input", graph.g.inputs), ("output", graph.g.outputs)):
        for t in tensors:
            if graph.g.tensors[int(t)].type not in integer:
                raise InputError(f"{graph.tensor_name(int(t))}: the model's {kind} is not "
                                 "int8 after full-integer quantization; expected int8 input and output")
    found = float_tensors(graph)
    conversions = ("QUANTIZE", "DEQUANTIZE")  # the float op itself is named, not its converters
    found.sort(key=lambda item: graph.op_name(graph.g.operators[item[0]]) in conversions)
    for op_index, tensor in found[:1]:
        op = graph.g.operators[op_index]
        kind = graph.op_name(op)
        names = [graph.tensor_name(int(t)) for t in [*op.outputs, *op.inputs] if t >= 0]
        layer = first_layer(names, layer_names)
        where = f"layer '{layer}'" if layer else f"tensor '{graph.tensor_name(tensor)}'"
        raise InputError(f"{where}: {kind} has no int8 kernel (a float tensor is left after "
                         "full-integer quantization); expected a model of ops with integer kernels")
