"""Full-integer ONNX (`precision="int8-full"`): QDQ int8 with int8 input and output tensors.

The conventions are those of the full-integer TFLite model (`export.tflite.integer`):

- the input range is pinned to the pixel range `[0, 255]` (scale 1, zero point -128), so a
  pixel value p is stored as p - 128 with no loss;
- each truncation's Clip is quantized with range exactly `[lower, upper]` (one-sided: the
  calibrated open side, `quantize.open_side_ranges`);
- a convolution whose weights are integer multiples of one step per output channel
  (`models._filters.exact_steps`) gets that step as its per-channel weight scale (a
  per-channel tensor override of onnxruntime's quantizer), so its int8 weights are exact;
  one that reads the pixel input with one step for every channel gets the output range of
  `[-128, 127]` steps.

onnxruntime's `quantize_static` (QDQ, per channel, int8 activations, each op type of the
graph with an integer kernel, `INTEGER_OP_TYPES`) quantizes the float graph; `strip_io_qdq` then removes the QuantizeLinear of the input
and the DequantizeLinear of the output, as onnxruntime's tooling does for integer-only
targets, so the graph's input and output are int8. `require_full_integer` proves the result:
every other node reads its float tensors from DequantizeLinear and hands its float outputs
to QuantizeLinear only (or is an integer op); the first node that does not is named in one
line (its layer), and no file is written.
"""

from __future__ import annotations

import numpy as np

from edgetrunc.errors import InputError
from edgetrunc.export.onnx.graph import INPUT_NAME, Graph
from edgetrunc.export.onnx.quantize import (_calibration, _quantize_static, clip_overrides,
                                             open_side_ranges)
from edgetrunc.export.tflite.integer import PIXEL_RANGE
from edgetrunc.models._filters import exact_steps
from edgetrunc.runtime.layer_names import first_layer
from edgetrunc.runtime.onnx_runner import IO_QUANTIZATION_KEY, io_quantization

_QDQ = ("QuantizeLinear", "DequantizeLinear")
# The op types quantized: those with int8 kernels in the integer runtimes (TFLite's builtin
# int8 kernels, ONNX's QLinear ops and onnxruntime's QDQ fusions) and the data movement
# that keeps its input's quantization. Any other op (Sin, Exp, ...) stays float between a
# DequantizeLinear and a QuantizeLinear of its own and is refused (`require_full_integer`).
INTEGER_OP_TYPES = frozenset((
    "Add", "AveragePool", "BatchNormalization", "Clip", "Concat", "Conv", "ConvTranspose",
    "Flatten", "Gather", "Gemm", "GlobalAveragePool", "LeakyRelu", "MatMul", "MaxPool", "Mul",
    "Pad", "ReduceMean", "Relu", "Reshape", "Resize", "Sigmoid", "Slice", "Softmax",
    "SpaceToDepth", "DepthToSpace", "Split", "Squeeze", "Sub", "Tanh", "Transpose", "Unsqueeze"))
_PASS_THROUGH = ("Transpose", "Reshape")  # between the pixel input and a front-end convolution
# TFLite's fixed int8 output ranges, which the quantization-aware model simulates
# (`keras.qat`): tanh steps of 1/128 (zero point 0), probabilities steps of 1/256.
FIXED_OUTPUT_RANGES = {"Tanh": (-1.0, 127 / 128), "Sigmoid": (0.0, 255 / 256),
                       "Softmax": (0.0, 255 / 256)}
_INT8, _UINT8 = 3, 2  # onnx.TensorProto.INT8, UINT8
_FLOATS = (1, 10, 11, 16)  # onnx.TensorProto.FLOAT, FLOAT16, DOUBLE, BFLOAT16


def _reads_pixels(graph, name) -> bool:
    while name != INPUT_NAME:
        node = graph.producer.get(name)
        if node is None or node.op_type not in _PASS_THROUGH:
            return False
        name = node.input[0]
    return True


def _exact_filter_overrides(graph) -> dict:
    """Per-channel weight overrides (scale = the exact step, zero point 0) of each Conv with
    exact steps, and the `[-128, 127]`-step output range of one that reads the pixels."""
    overrides = {}
    for node in graph.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in graph.consts:
            continue
        weights = np.asarray(graph.consts[node.input[1]], np.float64)
        steps = exact_steps(weights, 0)  # ONNX Conv weights are [out, in, kh, kw]
        if steps is None:
            continue
        overrides[node.input[1]] = [{"axis": 0, "scale": np.float32(s), "zero_point": np.int8(0)}
                                    for s in steps]
        bias = graph.consts.get(node.input[2]) if len(node.input) > 2 else None
        if (_reads_pixels(graph, node.input[0]) and np.allclose(steps, steps[0], rtol=1e-6)
                and (bias is None or not np.any(bias))):
            overrides[node.output[0]] = [{"rmin": np.float32(-128 * steps[0]),
                                          "rmax": np.float32(127 * steps[0])}]
    return overrides


def full_integer_overrides(proto, truncations, ranges) -> dict:
    """onnxruntime's `TensorQuantOverrides` of a full-integer model (see the module docstring)."""
    graph = Graph(proto)
    _, overrides = clip_overrides(graph, truncations, ranges)
    overrides[INPUT_NAME] = [{"rmin": np.float32(PIXEL_RANGE[0]), "rmax": np.float32(PIXEL_RANGE[1])}]
    for node in graph.graph.node:
        if node.op_type in FIXED_OUTPUT_RANGES:
            low, high = FIXED_OUTPUT_RANGES[node.op_type]
            overrides[node.output[0]] = [{"rmin": np.float32(low), "rmax": np.float32(high)}]
    overrides.update(_exact_filter_overrides(graph))
    return overrides


def quantize_full_integer(proto, truncations, calibration, layer_names=(), applied=None):
    """The full-integer QDQ ModelProto of an fp32 ModelProto whose truncations are Clips;
    `applied` receives the names of the steps that changed it ("pin_pixel_input",
    "exact_filter_weights" where a filter is exact, "strip_io_qdq")."""
    x = _calibration(calibration)
    ranges = open_side_ranges(proto, truncations, x)
    overrides = full_integer_overrides(proto, truncations, ranges)
    if applied is not None:
        exact = any("axis" in value[0] for value in overrides.values())
        applied.extend(["pin_pixel_input", *(["exact_filter_weights"] if exact else []),
                        "strip_io_qdq"])
    op_types = sorted({n.op_type for n in proto.graph.node} & INTEGER_OP_TYPES)
    options = {"TensorQuantOverrides": overrides, "ActivationSymmetric": False,
               "WeightSymmetric": True, "ForceQuantizeNoInputCheck": True}
    quantized = _quantize_static(proto, x, False, "QInt8", [], op_types, options)
    strip_io_qdq(quantized, layer_names)
    require_full_integer(quantized, layer_names)
    _record_io_quantization(quantized)
    return quantized


def _record_io_quantization(model) -> None:
    """Store the integer inputs' and outputs' scale and zero point in `metadata_props`, so a
    runtime without the onnx package feeds pixels and reads values back."""
    import json

    found = io_quantization(model)
    names = [v.name for v in (*model.graph.input, *model.graph.output)]
    entry = model.metadata_props.add()
    entry.key = IO_QUANTIZATION_KEY
    entry.value = json.dumps({name: list(found[name]) for name in names if name in found},
                             sort_keys=True)


def _rename(model, old: str, new: str) -> None:
    for node in model.graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]


def _set_integer(value_info, zero_point) -> None:
    """Give a graph input / output the integer type of its quantization's zero point."""
    value_info.type.tensor_type.elem_type = _UINT8 if zero_point.dtype == np.uint8 else _INT8


def strip_io_qdq(model, layer_names=()) -> None:
    """Remove the QuantizeLinear after each graph input and the DequantizeLinear before each
    graph output, so that the graph reads and writes the int8 tensors themselves."""
    graph = Graph(model)
    for value in model.graph.input:
        readers = graph.consumers.get(value.name, [])
        quant = [n for n in readers if n.op_type == "QuantizeLinear"]
        if len(quant) != 1 or len(readers) != 1:
            raise InputError(f"{value.name}: the model's input is not quantized alone after "
                             "full-integer quantization; expected int8 input and output")
        _set_integer(value, graph.consts[quant[0].input[2]])
        model.graph.node.remove(quant[0])
        _rename(model, quant[0].output[0], value.name)
    graph = Graph(model)
    for value in model.graph.output:
        dequant = graph.producer.get(value.name)
        if dequant is None or dequant.op_type != "DequantizeLinear":
            where = _where(dequant, value.name, layer_names)
            raise InputError(f"{where}: the model's output is not int8 after full-integer "
                             "quantization; expected int8 input and output")
        integer = dequant.input[0]
        _set_integer(value, graph.consts[dequant.input[2]])
        model.graph.node.remove(dequant)
        _rename(model, integer, value.name)


def _where(node, tensor: str, layer_names) -> str:
    names = [node.name, *node.output, *node.input] if node is not None else [tensor]
    layer = first_layer(names, layer_names)
    return f"layer '{layer}'" if layer else f"tensor '{tensor}'"


def _float_tensor_types(model) -> dict:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {}
    for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        types[v.name] = v.type.tensor_type.elem_type
    for init in model.graph.initializer:
        types[init.name] = init.data_type
    return types


def float_nodes(model) -> list:
    """`[(node, tensor)]`: each node other than QuantizeLinear / DequantizeLinear that reads a
    float activation not written by a DequantizeLinear, or writes one that a node other than
    QuantizeLinear reads (or that is a graph output), or that computes in float with no
    integer form (not of `INTEGER_OP_TYPES`, even between Q/DQ pairs): the float islands."""
    graph = Graph(model)
    types = _float_tensor_types(model)
    found = []
    for node in model.graph.node:
        if node.op_type in _QDQ:
            continue
        for name in node.input:
            producer = graph.producer.get(name)
            if (name and types.get(name) in _FLOATS and name not in graph.consts
                    and (producer is None or producer.op_type != "DequantizeLinear")):
                found.append((node, name))
        for name in node.output:
            readers = graph.consumers.get(name, [])
            if types.get(name) in _FLOATS and (
                    node.op_type not in INTEGER_OP_TYPES or name in graph.outputs
                    or any(r.op_type != "QuantizeLinear" for r in readers)):
                found.append((node, name))
    return found


def require_full_integer(model, layer_names=()) -> None:
    """Raise InputError naming the first layer with a float island (`float_nodes`) or an
    input / output that is not integer; return quietly for a full-integer model."""
    integer = (_INT8, _UINT8)
    for kind, values in (("input", model.graph.input), ("output", model.graph.output)):
        for value in values:
            if value.type.tensor_type.elem_type not in integer:
                raise InputError(f"{value.name}: the model's {kind} is not int8 after "
                                 "full-integer quantization; expected int8 input and output")
    for node, tensor in float_nodes(model)[:1]:
        raise InputError(f"{_where(node, tensor, layer_names)}: {node.op_type} has no int8 "
                         "form (a float tensor is left outside QuantizeLinear / "
                         "DequantizeLinear after full-integer quantization); expected a model "
                         "of ops the quantizer runs on int8")


def compute_ops(model) -> dict:
    """`{op type: count}` of the nodes other than QuantizeLinear / DequantizeLinear."""
    counts = {}
    for node in model.graph.node:
        if node.op_type not in _QDQ:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def output_meaning(model) -> str:
    """What a detector's int8 output holds (as `export.tflite.integer.output_meaning`): the
    stego logit (one column, the quantization-aware model's output) or probabilities."""
    graph = Graph(model)
    output = model.graph.output[0]
    quant = graph.producer.get(output.name)
    producer = graph.producer.get(quant.input[0]) if quant is not None else None
    kind = producer.op_type if producer is not None else None
    if kind in ("Softmax", "Sigmoid"):
        return f"stego probability ({kind}, int8)"
    dims = output.type.tensor_type.shape.dim
    columns = dims[-1].dim_value if dims else 0
    return ("stego logit z_stego - z_cover (int8; probability = sigmoid, decision at logit >= 0)"
            if columns == 1 else f"logits of {columns} classes (int8; probability = softmax)")
