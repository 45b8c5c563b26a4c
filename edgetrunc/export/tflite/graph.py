"""The TFLite graph view: reading and editing a flatbuffer through TensorFlow's object API.

`Graph` is the main subgraph of a model with op names, constant values (following fp16 /
int8 DEQUANTIZE of weights), producers and consumers resolved; it lists the `ClipCandidate`s
(MAXIMUM/MINIMUM pairs with constant bounds, or a fused RELU6 / RELU_N1_TO_1 / RELU_0_TO_1
activation), removes ops with their readers rewired and sets constants. The small builders
below it (operator codes, tensors, ops) are what the passes (`export.tflite.passes`) build
with; `set_metadata` writes the "edgetrunc" metadata buffer. It uses
`tensorflow.lite.tools.flatbuffer_utils` and the generated schema; there is no hand-written
flatbuffer parser.
"""

from __future__ import annotations

import numpy as np

from edgetrunc.export.candidates import ClipCandidate
from edgetrunc.runtime.metadata import (METADATA_NAME, builtin_names, opcode_name,
                                        tflite_flatbuffer_utils, tflite_schema)

_FUSED_CLIPS = {  # fused activation name -> (lower, upper)
    "RELU6": (0.0, 6.0),
    "RELU_N1_TO_1": (-1.0, 1.0),
    "RELU_0_TO_1": (0.0, 1.0),
}
DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 9: np.int8,
           7: np.int16}


def schema_module():
    return tflite_schema(writer=True)


def _utils():
    return tflite_flatbuffer_utils(writer=True)


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
        self._builtin = builtin_names(schema_module())
        self._activation = {v: k for k, v in vars(schema_module().ActivationFunctionType).items()
                            if not k.startswith("_")}
        self.refresh()

    def refresh(self):
        self.outputs = {int(t) for t in self.g.outputs}
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
        return opcode_name(self._builtin, code.builtinCode, code.deprecatedBuiltinCode,
                           code.customCode)

    def tensor_name(self, index) -> str:
        name = self.g.tensors[index].name
        return name.decode() if isinstance(name, bytes) else str(name)

    def fused_activation(self, op) -> str | None:
        options = op.builtinOptions
        value = getattr(options, "fusedActivationFunction", None) if options is not None else None
        if not value:
            return None
        return self._activation.get(int(value), str(value))

    def constant(self, index):
        """The value of tensor `index` if it is a constant (through a DEQUANTIZE), else None;
        a quantized one (int8 weights, an int32 bias in its steps) dequantized."""
        tensor = self.g.tensors[index]
        data = self.model.buffers[tensor.buffer].data if tensor.buffer < len(self.model.buffers) else None
        if data is not None and len(data):
            dtype = DTYPES.get(int(tensor.type))
            if dtype is None:
                return None
            values = np.frombuffer(bytes(bytearray(data)), dtype=dtype).astype(np.float64)
            q = tensor.quantization
            if dtype in (np.int8, np.uint8, np.int16, np.int32) and q is not None and q.scale is not None \
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

    def clip_candidates(self) -> list[ClipCandidate]:
        """Every MAXIMUM->MINIMUM (or MINIMUM->MAXIMUM) pair with scalar constant bounds, every
        op with a fused RELU6 / RELU_N1_TO_1 / RELU_0_TO_1 activation, and every other MAXIMUM
        or MINIMUM with a scalar constant bound (a one-sided clip), in graph order."""
        found = []
        used = set()
        for index, op in enumerate(self.g.operators):
            name = self.op_name(op)
            activation = self.fused_activation(op)
            if activation in _FUSED_CLIPS:
                lower, upper = _FUSED_CLIPS[activation]
                found.append(ClipCandidate(
                    "fused", [index], lower, upper, [self.tensor_name(t) for t in op.outputs],
                    f"{name}+{activation}", None, int(op.outputs[0])))
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
            found.append(ClipCandidate(
                "minmax", [index, consumers[0]], lower, upper,
                [self.tensor_name(op.outputs[0]), self.tensor_name(second_op.outputs[0])],
                f"{name}+{second_name}", first[0], int(second_op.outputs[0]),
                {name: first[2], second_name: second[2]}))
        found += self._one_sided_candidates(used)
        return sorted(found, key=lambda c: c.ops[0])

    def _one_sided_candidates(self, paired) -> list[ClipCandidate]:
        """A MAXIMUM (`[bound, inf]`) or MINIMUM (`[-inf, bound]`) with a scalar constant bound
        that is not part of a pair."""
        found = []
        for index, op in enumerate(self.g.operators):
            name = self.op_name(op)
            bounded = self._bounded(op) if name in ("MAXIMUM", "MINIMUM") else None
            if bounded is None or index in paired:
                continue
            lower, upper = (bounded[1], np.inf) if name == "MAXIMUM" else (-np.inf, bounded[1])
            found.append(ClipCandidate(
                "minmax", [index], lower, upper, [self.tensor_name(op.outputs[0])], name,
                bounded[0], int(op.outputs[0]), {name: bounded[2]}))
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
        schema = schema_module()
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

    def sole_reader(self, tensor_index) -> int | None:
        """The index of the one op that reads `tensor_index`, when exactly one does and the
        tensor is not a graph output (so the two can be rewritten together); else None."""
        readers = self.consumers.get(int(tensor_index), [])
        if len(readers) != 1 or int(tensor_index) in self.outputs:
            return None
        return readers[0]

    def remove_unread(self, kinds: tuple) -> int:
        """Delete the ops of `kinds` whose outputs nothing reads (e.g. the DEQUANTIZE of an fp16
        weight a rewrite replaced); returns the number deleted."""
        dead = [i for i, op in enumerate(self.g.operators) if self.op_name(op) in kinds
                and not any(int(t) in self.outputs or self.consumers.get(int(t))
                            for t in op.outputs)]
        if dead:
            self.remove_ops(dead, {})
        return len(dead)

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
    return schema_module().QuantizationParametersT()


def opcode_index(model_t, builtin_name: str, version: int = 1) -> int:
    """Index of the operator code of builtin `builtin_name` at `version` or above, added if
    the model lacks it (an existing code is raised to `version`)."""
    schema = schema_module()
    code = getattr(schema.BuiltinOperator, builtin_name)
    for i, c in enumerate(model_t.operatorCodes):
        if max(int(c.builtinCode), int(c.deprecatedBuiltinCode)) == code:
            c.version = max(int(c.version), version)
            return i
    entry = schema.OperatorCodeT()
    entry.builtinCode = code
    entry.deprecatedBuiltinCode = min(code, 127)
    entry.version = version
    model_t.operatorCodes.append(entry)
    return len(model_t.operatorCodes) - 1


def float_twin(graph, index, suffix):
    """A new float32 activation tensor shaped like tensor `index`, named `<name>/<suffix>`."""
    schema = schema_module()
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


def new_op(opcode, inputs, outputs):
    """A new operator of operator code `opcode` (see `opcode_index`)."""
    op = schema_module().OperatorT()
    op.opcodeIndex = opcode
    op.inputs = np.array(inputs, np.int32)
    op.outputs = np.array(outputs, np.int32)
    return op


def builtin_op(model_t, kind: str, inputs, outputs, options: str, version: int = 1):
    """A new builtin op `kind` (e.g. "CONV_2D") with empty options of schema type `options`
    (e.g. "Conv2DOptions") for the caller to fill."""
    schema = schema_module()
    op = new_op(opcode_index(model_t, kind, version), inputs, outputs)
    op.builtinOptionsType = getattr(schema.BuiltinOptions, options)
    op.builtinOptions = getattr(schema, f"{options}T")()
    return op


def const_tensor(graph, name, array, tensor_type):
    """A new constant tensor holding `array` (in a buffer of its own)."""
    schema = schema_module()
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


def set_metadata(model_t, data: bytes) -> None:
    """Store `data` in the metadata buffer named "edgetrunc" (replacing an old one)."""
    schema = schema_module()
    data = np.frombuffer(data, dtype=np.uint8)
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
