"""Reading and editing TFLite flatbuffers through TensorFlow's own object API.

This module owns everything that looks inside a `.tflite` file: op names and counts,
constant values (following fp16/int8 DEQUANTIZE of weights), producers and consumers,
the clip candidates (MAXIMUM/MINIMUM pairs with constant bounds, or a fused RELU6 /
RELU_N1_TO_1 / RELU_0_TO_1 activation), removal of ops with consumers rewired, and the
metadata buffer. It uses `tensorflow.lite.tools.flatbuffer_utils` and the generated schema;
there is no hand-written flatbuffer parser.
"""

from __future__ import annotations

import json

import numpy as np

METADATA_NAME = "edgetrunc"
SATURATION_MARK = "edgetrunc_clip_by_saturation"

_FUSED_CLIPS = {  # fused activation name -> (lower, upper)
    "RELU6": (0.0, 6.0),
    "RELU_N1_TO_1": (-1.0, 1.0),
    "RELU_0_TO_1": (0.0, 1.0),
}
_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 9: np.int8,
           7: np.int16}


def _schema():
    from tensorflow.lite.python import schema_py_generated as schema

    return schema


def _utils():
    from tensorflow.lite.tools import flatbuffer_utils

    return flatbuffer_utils


def _enum_names(enum_cls):
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_")}


def read_model(content):
    """Parse `.tflite` bytes (or a path) into a mutable `ModelT`."""
    if not isinstance(content, (bytes, bytearray)):
        with open(content, "rb") as fh:
            content = fh.read()
    return _utils().convert_bytearray_to_object(bytearray(content))


def write_model(model_t) -> bytes:
    return bytes(_utils().convert_object_to_bytearray(model_t))


class Graph:
    """The main subgraph of a `ModelT` with names, producers and consumers resolved."""

    def __init__(self, model_t):
        self.model = model_t
        self.g = model_t.subgraphs[0]
        self._builtin = _enum_names(_schema().BuiltinOperator)
        self._activation = _enum_names(_schema().ActivationFunctionType)
        self.refresh()

    def refresh(self):
        self.producer = {}
        self.consumers = {}
        for index, op in enumerate(self.g.operators):
            for t in op.outputs:
                self.producer[int(t)] = index
            for t in op.inputs:
                if t >= 0:
                    self.consumers.setdefault(int(t), []).append(index)

    def op_name(self, op) -> str:
        code = self.model.operatorCodes[op.opcodeIndex]
        builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
        name = self._builtin.get(builtin, str(builtin))
        if name == "CUSTOM":
            custom = code.customCode.decode() if isinstance(code.customCode, bytes) else str(
                code.customCode)
            return f"CUSTOM:{custom}"
        return name

    def tensor_name(self, index) -> str:
        name = self.g.tensors[index].name
        return name.decode() if isinstance(name, bytes) else str(name)

    def fused_activation(self, op) -> str | None:
        options = op.builtinOptions
        value = getattr(options, "fusedActivationFunction", None) if options is not None else None
        if not value:
            return None
        return self._activation.get(int(value), str(value))

    def ops(self) -> dict:
        counts = {}
        for op in self.g.operators:
            name = self.op_name(op)
            counts[name] = counts.get(name, 0) + 1
        return dict(sorted(counts.items()))

    def constant(self, index):
        """The value of tensor `index` if it is a constant (through a DEQUANTIZE), else None."""
        tensor = self.g.tensors[index]
        data = self.model.buffers[tensor.buffer].data if tensor.buffer < len(self.model.buffers) else None
        if data is not None and len(data):
            dtype = _DTYPES.get(int(tensor.type))
            if dtype is None:
                return None
            values = np.frombuffer(bytes(bytearray(data)), dtype=dtype).astype(np.float64)
            q = tensor.quantization
            if dtype in (np.int8, np.uint8, np.int16) and q is not None and q.scale is not None \
                    and len(q.scale):
                scale = np.asarray(q.scale, np.float64)
                zero = np.asarray(q.zeroPoint, np.float64)
                if scale.size > 1 and tensor.shape is not None and len(tensor.shape):
                    view = [1] * len(tensor.shape)
                    view[int(q.quantizedDimension)] = scale.size
                    values = values.reshape(tuple(int(d) for d in tensor.shape))
                    scale, zero = scale.reshape(view), zero.reshape(view)
                values = (values - zero) * scale
            return values
        producer = self.producer.get(int(index))
        if producer is not None:
            op = self.g.operators[producer]
            if self.op_name(op) == "DEQUANTIZE":
                return self.constant(op.inputs[0])
        return None

    def scalar(self, index):
        value = self.constant(index)
        if value is None or value.size != 1:
            return None
        return float(value.reshape(()))

    def clip_candidates(self) -> list[dict]:
        """Every MAXIMUM->MINIMUM (or MINIMUM->MAXIMUM) pair with scalar constant bounds, and
        every op with a fused RELU6 / RELU_N1_TO_1 / RELU_0_TO_1 activation, in graph order."""
        found = []
        used = set()
        for index, op in enumerate(self.g.operators):
            name = self.op_name(op)
            activation = self.fused_activation(op)
            if activation in _FUSED_CLIPS:
                lower, upper = _FUSED_CLIPS[activation]
                found.append({"kind": "fused", "ops": [index], "lower": lower, "upper": upper,
                              "mapped_to": f"{name}+{activation}",
                              "names": [self.tensor_name(t) for t in op.outputs],
                              "input": None, "output": int(op.outputs[0])})
                continue
            if name not in ("MAXIMUM", "MINIMUM") or index in used:
                continue
            first = self._bounded(op)
            if first is None:
                continue
            consumers = self.consumers.get(int(op.outputs[0]), [])
            if len(consumers) != 1:
                continue
            second_op = self.g.operators[consumers[0]]
            second_name = self.op_name(second_op)
            if second_name == name or second_name not in ("MAXIMUM", "MINIMUM"):
                continue
            second = self._bounded(second_op)
            if second is None or second[0] != int(op.outputs[0]):
                continue
            lower = first[1] if name == "MAXIMUM" else second[1]
            upper = second[1] if name == "MAXIMUM" else first[1]
            used.update({index, consumers[0]})
            found.append({"kind": "minmax", "ops": [index, consumers[0]], "lower": lower,
                          "upper": upper, "mapped_to": f"{name}+{second_name}",
                          "names": [self.tensor_name(op.outputs[0]),
                                    self.tensor_name(second_op.outputs[0])],
                          "input": first[0], "output": int(second_op.outputs[0]),
                          "bound_tensors": {name: first[2], second_name: second[2]}})
        return found

    def _bounded(self, op):
        """`(variable input, constant bound)` of a binary MINIMUM/MAXIMUM, else None."""
        if len(op.inputs) != 2:
            return None
        a, b = int(op.inputs[0]), int(op.inputs[1])
        ca, cb = self.scalar(a), self.scalar(b)
        if cb is not None and ca is None:
            return a, cb, b
        if ca is not None and cb is None:
            return b, ca, a
        return None

    def set_float32_constant(self, index, value):
        """Make tensor `index` an fp32 constant holding exactly `value` (a scalar or an array
        of the tensor's size); the DEQUANTIZE that produced it is removed."""
        schema = _schema()
        tensor = self.g.tensors[index]
        shape = tuple(int(d) for d in (tensor.shape if tensor.shape is not None else ()))
        value = np.asarray(value, np.float32)
        data = value.reshape(shape) if value.size == int(np.prod(shape)) else np.full(shape, value)
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(np.ascontiguousarray(data, np.float32).tobytes(), np.uint8)
        self.model.buffers.append(buffer)
        tensor.buffer = len(self.model.buffers) - 1
        tensor.type = schema.TensorType.FLOAT32
        tensor.quantization = None
        producer = self.producer.get(int(index))
        if producer is not None:
            self.g.operators = [op for i, op in enumerate(self.g.operators) if i != producer]
        self.refresh()

    def ancestors(self, tensor_index) -> set[int]:
        """Indices of every op that `tensor_index` depends on."""
        seen, stack = set(), [int(tensor_index)]
        while stack:
            producer = self.producer.get(stack.pop())
            if producer is None or producer in seen:
                continue
            seen.add(producer)
            stack.extend(int(t) for t in self.g.operators[producer].inputs if t >= 0)
        return seen

    def remove_ops(self, op_indices, replace_tensor: dict):
        """Delete ops and make every reader of `old` tensor read `new` instead."""
        for op in self.g.operators:
            op.inputs = np.array([replace_tensor.get(int(t), int(t)) for t in op.inputs],
                                 dtype=np.int32)
        outputs = set(int(t) for t in self.g.outputs)
        for old, new in replace_tensor.items():
            if old in outputs:  # the graph output keeps its name
                self.g.tensors[new].name = self.g.tensors[old].name
        self.g.outputs = np.array([replace_tensor.get(int(t), int(t)) for t in self.g.outputs],
                                  dtype=np.int32)
        for signature in self.model.signatureDefs or []:
            for entry in [*(signature.inputs or []), *(signature.outputs or [])]:
                entry.tensorIndex = replace_tensor.get(int(entry.tensorIndex), int(entry.tensorIndex))
        drop = set(op_indices)
        self.g.operators = [op for i, op in enumerate(self.g.operators) if i not in drop]
        self.refresh()


def quantization_parameters():
    return _schema().QuantizationParametersT()


def opcode_index(model_t, builtin_name: str) -> int:
    """Index of the operator code of builtin `builtin_name`, added if the model lacks it."""
    schema = _schema()
    code = getattr(schema.BuiltinOperator, builtin_name)
    for i, c in enumerate(model_t.operatorCodes):
        if max(int(c.builtinCode), int(c.deprecatedBuiltinCode)) == code:
            return i
    entry = schema.OperatorCodeT()
    entry.builtinCode = code
    entry.deprecatedBuiltinCode = min(code, 127)
    entry.version = 1
    model_t.operatorCodes.append(entry)
    return len(model_t.operatorCodes) - 1


def _float_twin(graph, index, suffix):
    schema = _schema()
    source = graph.g.tensors[index]
    twin = schema.TensorT()
    twin.shape = None if source.shape is None else np.array(source.shape, np.int32)
    twin.shapeSignature = None if source.shapeSignature is None else np.array(
        source.shapeSignature, np.int32)
    twin.type = schema.TensorType.FLOAT32
    twin.buffer = 0
    twin.name = f"{graph.tensor_name(index)}/{suffix}"
    graph.g.tensors.append(twin)
    return len(graph.g.tensors) - 1


def _new_op(opcode, inputs, outputs):
    op = _schema().OperatorT()
    op.opcodeIndex = opcode
    op.inputs = np.array(inputs, np.int32)
    op.outputs = np.array(outputs, np.int32)
    return op


def float_islands(model_t, op_names) -> int:
    """Run each single-input int8 op named in `op_names` in float: DEQUANTIZE -> op -> QUANTIZE.

    XNNPACK runs AVERAGE_POOL_2D and SOFTMAX in float but not in signed int8; in float they
    stay inside the delegate instead of splitting the graph. Returns the number of ops moved.
    """
    graph = Graph(model_t)
    int8 = _schema().TensorType.INT8
    dequantize = opcode_index(model_t, "DEQUANTIZE")
    quantize = opcode_index(model_t, "QUANTIZE")
    moved, operators = 0, []
    for op in graph.g.operators:
        variable = [int(t) for t in op.inputs if t >= 0 and graph.constant(int(t)) is None]
        if (graph.op_name(op) not in op_names or len(variable) != 1 or len(op.outputs) != 1
                or graph.g.tensors[variable[0]].type != int8
                or graph.g.tensors[int(op.outputs[0])].type != int8):
            operators.append(op)
            continue
        source, target = variable[0], int(op.outputs[0])
        source_f = _float_twin(graph, source, "dequantized")
        target_f = _float_twin(graph, target, "float")
        op.inputs = np.array([source_f if int(t) == source else int(t) for t in op.inputs], np.int32)
        op.outputs = np.array([target_f], np.int32)
        operators += [_new_op(dequantize, [source], [source_f]), op,
                      _new_op(quantize, [target_f], [target])]
        moved += 1
    graph.g.operators = operators
    _drop_requantize_pairs(Graph(model_t), quantize, dequantize)
    return moved


def _drop_requantize_pairs(graph, quantize, dequantize):
    """Remove QUANTIZE -> DEQUANTIZE round trips (float -> int8 -> float) that nothing else reads."""
    drop, replace = set(), {}
    for i, op in enumerate(graph.g.operators):
        if op.opcodeIndex != quantize:
            continue
        q_out = int(op.outputs[0])
        readers = graph.consumers.get(q_out, [])
        if (q_out in set(int(t) for t in graph.g.outputs) or len(readers) != 1
                or SATURATION_MARK in graph.tensor_name(q_out)):
            continue  # a truncation's saturating QUANTIZE is the clip itself
        reader = graph.g.operators[readers[0]]
        if reader.opcodeIndex != dequantize:
            continue
        drop |= {i, readers[0]}
        replace[int(reader.outputs[0])] = int(op.inputs[0])
    if drop:
        graph.remove_ops(drop, replace)


def read_metadata(model_t) -> dict | None:
    for entry in model_t.metadata or []:
        name = entry.name.decode() if isinstance(entry.name, bytes) else entry.name
        if name == METADATA_NAME:
            return json.loads(bytes(bytearray(model_t.buffers[entry.buffer].data)).decode())
    return None


def set_metadata(model_t, payload: dict) -> None:
    """Store `payload` as JSON in a metadata buffer named "edgetrunc" (replacing an old one)."""
    schema = _schema()
    data = np.frombuffer(json.dumps(payload, sort_keys=True).encode(), dtype=np.uint8)
    for entry in model_t.metadata or []:
        name = entry.name.decode() if isinstance(entry.name, bytes) else entry.name
        if name == METADATA_NAME:
            model_t.buffers[entry.buffer].data = data
            return
    buffer = schema.BufferT()
    buffer.data = data
    model_t.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model_t.buffers) - 1
    model_t.metadata = list(model_t.metadata or []) + [entry]


def tensor_spec(graph: Graph, index) -> dict:
    t = graph.g.tensors[index]
    shape = [int(d) for d in (t.shapeSignature if t.shapeSignature is not None and len(
        t.shapeSignature) else t.shape)]
    dtype = np.dtype(_DTYPES.get(int(t.type), np.float32)).name
    spec = {"name": graph.tensor_name(index), "shape": shape, "dtype": dtype}
    q = t.quantization
    if q is not None and q.scale is not None and len(q.scale):
        spec["scale"] = float(q.scale[0])
        spec["zero_point"] = int(q.zeroPoint[0])
    return spec


def _const_tensor(graph, name, array, tensor_type):
    schema = _schema()
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(np.ascontiguousarray(array).tobytes(), np.uint8)
    graph.model.buffers.append(buffer)
    tensor = schema.TensorT()
    tensor.shape = np.array(array.shape, np.int32)
    tensor.type = tensor_type
    tensor.buffer = len(graph.model.buffers) - 1
    tensor.name = name
    graph.g.tensors.append(tensor)
    return len(graph.g.tensors) - 1


def _activation_tensor(graph, name, shape):
    schema = _schema()
    tensor = schema.TensorT()
    tensor.shape = np.array([1, *shape[1:]], np.int32)
    tensor.shapeSignature = np.array([-1, *shape[1:]], np.int32)
    tensor.type = schema.TensorType.FLOAT32
    tensor.buffer = 0
    tensor.name = name
    graph.g.tensors.append(tensor)
    return len(graph.g.tensors) - 1


def _reshape_op(graph, source, target, shape, name):
    schema = _schema()
    shape_tensor = _const_tensor(graph, f"{name}/shape", np.array(shape, np.int32),
                                 schema.TensorType.INT32)
    op = _new_op(opcode_index(graph.model, "RESHAPE"), [source, shape_tensor], [target])
    op.builtinOptionsType = schema.BuiltinOptions.ReshapeOptions
    op.builtinOptions = schema.ReshapeOptionsT()
    op.builtinOptions.newShape = np.array(shape, np.int32)
    return op


PACK = 4


def pack_single_channel_convs(model_t, op_indices) -> int:
    """Rewrite each float CONV_2D (one input channel, stride 1, SAME, W divisible by 4) among
    `op_indices` into RESHAPE -> CONV_2D -> RESHAPE over 4 adjacent pixels packed into
    channels: `[N, H, W, 1]` becomes `[N, H, W/4, 4]`, a 5x5 kernel becomes 5x3 with 4 input
    and 4*Cout output channels (zero taps where a pixel is out of reach), and the output is
    reshaped back to `[N, H, W, Cout]` under its original name. The sums are the same
    products plus exact zeros; XNNPACK runs the packed form 2-3x faster because one channel
    wastes its vector lanes. Returns the number of convolutions rewritten."""
    schema = _schema()
    graph = Graph(model_t)
    chosen = set(op_indices)
    operators, packed = [], 0
    for index, op in enumerate(graph.g.operators):
        if index not in chosen or graph.op_name(op) != "CONV_2D":
            operators.append(op)
            continue
        x, w = int(op.inputs[0]), int(op.inputs[1])
        bias = int(op.inputs[2]) if len(op.inputs) > 2 else -1
        xt, wt = graph.g.tensors[x], graph.g.tensors[w]
        options = op.builtinOptions
        kernel = graph.constant(w)
        shape = [int(d) for d in xt.shape] if xt.shape is not None else []
        if (kernel is None or int(wt.type) != schema.TensorType.FLOAT32 or int(xt.type) != 0
                or len(shape) != 4 or shape[3] != 1 or shape[2] % PACK
                or options.padding != schema.Padding.SAME or options.strideW != 1
                or options.strideH != 1 or options.dilationWFactor != 1
                or options.dilationHFactor != 1):
            operators.append(op)
            continue
        c_out, kh, kw, _ = (int(d) for d in wt.shape)
        kernel = kernel.reshape(c_out, kh, kw).astype(np.float32)
        reach = kw // 2
        cells = -(-reach // PACK)
        kw_packed = 2 * cells + 1
        packed_kernel = np.zeros((PACK * c_out, kh, kw_packed, PACK), np.float32)
        for j in range(PACK):
            for dx in range(-cells, cells + 1):
                for i in range(PACK):
                    column = PACK * dx + i - j + reach
                    if 0 <= column < kw:
                        packed_kernel[j * c_out:(j + 1) * c_out, :, dx + cells, i] = kernel[:, :, column]
        name = graph.tensor_name(int(op.outputs[0]))
        h, width = shape[1], shape[2]
        x_packed = _activation_tensor(graph, f"{name}/packed_input", [1, h, width // PACK, PACK])
        y_packed = _activation_tensor(graph, f"{name}/packed", [1, h, width // PACK, PACK * c_out])
        w_packed = _const_tensor(graph, f"{name}/packed_kernel", packed_kernel,
                                 schema.TensorType.FLOAT32)
        inputs = [x_packed, w_packed]
        if bias >= 0:
            values = graph.constant(bias)
            values = np.zeros(c_out) if values is None else values
            inputs.append(_const_tensor(graph, f"{name}/packed_bias",
                                        np.tile(values.astype(np.float32), PACK),
                                        schema.TensorType.FLOAT32))
        y = int(op.outputs[0])
        op.inputs = np.array(inputs, np.int32)
        op.outputs = np.array([y_packed], np.int32)
        operators += [_reshape_op(graph, x, x_packed, [-1, h, width // PACK, PACK], f"{name}/pack"),
                      op,
                      _reshape_op(graph, y_packed, y, [-1, h, width, c_out], f"{name}/unpack")]
        packed += 1
    graph.g.operators = operators
    return packed
