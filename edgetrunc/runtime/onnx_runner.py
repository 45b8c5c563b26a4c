"""`ONNXRunner`: runs a `.onnx` model with ONNX Runtime's CPU execution provider.

Callers always pass NHWC batches; a model whose input is NCHW (detected from its input
shape: channels first when dimension 1 is a small fixed number of channels and dimension 3
is not) gets the batch transposed. Every output is returned as float32. Precision is read
from the metadata the exporter embedded (`runtime.metadata`) when there is one, else from the
graph (QuantizeLinear / DequantizeLinear nodes mean int8, float16 tensors mean fp16). With
`preserve_all_tensors=True` every float node output can be read after a run
(`intermediates()`). No TensorFlow; the `onnx` package is used when installed and is
required only for the intermediates.
"""

from __future__ import annotations

import json
import re

import numpy as np

from edgetrunc.errors import InputError, first_line
from edgetrunc.runtime._base import BaseRunner, RunnerMetadata, TensorInfo, last_activation
from edgetrunc.runtime._onnx_graph import check_onnx_graph, read_onnx_graph
from edgetrunc.runtime.intermediates import ArtifactTensor
from edgetrunc.runtime.metadata import from_onnx_props, onnx_ops
from edgetrunc.runtime.quantized_io import dequantize_output, quantize_input

_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}
_MAX_CHANNELS = 4
_INTEGER_ELEMENTS = (2, 3)  # onnx.TensorProto.UINT8, INT8
IO_QUANTIZATION_KEY = "edgetrunc_io_quantization"  # {tensor: [scale, zero point]} of integer I/O


def _dim(value):
    return int(value) if isinstance(value, (int, np.integer)) and int(value) >= 0 else None


def detect_layout(shape) -> str:
    """'NCHW' if a 4-D input shape is channels-first, else 'NHWC'."""
    if len(shape) != 4:
        return "NHWC"
    c_first, c_last = _dim(shape[1]), _dim(shape[3])
    if c_first is not None and c_first <= _MAX_CHANNELS and (c_last is None or c_last > _MAX_CHANNELS):
        return "NCHW"
    return "NHWC"


def _graph_facts(model, output: str) -> tuple:
    """`({op_type: count}, {element type names}, last activation of `output`)` of the parsed
    graph `model` (see `last_activation`); all None without it (no onnx package)."""
    if model is None:
        return None, None, None
    import onnx

    graph = model.graph
    types = {onnx.TensorProto.DataType.Name(t.data_type) for t in graph.initializer}
    makers = {out: (node.op_type, node.input[0] if node.input else "")
              for node in graph.node for out in node.output}
    return onnx_ops(model), types, last_activation(output, makers.get)


def io_quantization(model) -> dict:
    """`{tensor name: (scale, zero point)}` of each integer graph input (read by a
    DequantizeLinear) and output (written by a QuantizeLinear, or read by a DequantizeLinear)
    of a full-integer QDQ model; {} without the parsed graph."""
    if model is None:
        return {}
    from onnx import numpy_helper

    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        scale, zero = consts.get(node.input[1]), consts.get(node.input[2])
        if scale is None or zero is None or np.size(scale) != 1:
            continue
        tensor = node.input[0] if node.op_type == "DequantizeLinear" else node.output[0]
        found[tensor] = (float(np.reshape(scale, ())), int(np.reshape(zero, ())))
    return found


def _recorded_io_quantization(custom: dict) -> dict:
    """`io_quantization` as the exporter records it in `metadata_props` (`IO_QUANTIZATION_KEY`),
    for a runtime without the onnx package; {} when absent or unreadable."""
    try:
        return {name: (float(scale), int(zero)) for name, (scale, zero)
                in json.loads(custom.get(IO_QUANTIZATION_KEY, "{}")).items()}
    except (ValueError, TypeError):
        return {}


def _precision_from_bytes(content: bytes) -> str:
    if re.search(rb"QuantizeLinear|QLinearConv|ConvInteger|MatMulInteger", content):
        return "int8"
    return "fp32"


class ONNXRunner(BaseRunner):
    """Run a `.onnx` file (or its bytes) on float32 NHWC batches of pixel values 0..255.

    Args:
        path_or_bytes: path of a `.onnx` file, or the serialized model as bytes.
        threads: intra-op threads of ONNX Runtime (default: its choice).
        spin: let idle worker threads busy-wait for the next run (ONNX Runtime's default;
            lowest latency for back-to-back runs). `False` frees the cores between runs.
        preserve_all_tensors: run a copy of the model with every float node output marked
            as an output, so that `intermediates()` returns them after `infer` (needs the
            `onnx` package). `infer` still returns the model's own outputs.
        profile_prefix: turn on ONNX Runtime's profiler, its JSON trace written to a file
            named from this prefix (`session.end_profiling()` returns the path).
    """

    format = "onnx"

    def __init__(self, path_or_bytes, threads: int | None = None, spin: bool = True,
                 preserve_all_tensors: bool = False, profile_prefix: str | None = None):
        self.spin = bool(spin)
        self.profile_prefix = profile_prefix
        self.preserve_all_tensors = bool(preserve_all_tensors)
        self._kept: dict = {}
        super().__init__(path_or_bytes, threads)

    def _session_source(self):
        """What ONNX Runtime opens: the file's path (its external data is then read beside
        it), the model's bytes, or the copy that exposes every tensor."""
        if not self.preserve_all_tensors:
            return self._content if self._content is not None else str(self.path)
        from edgetrunc.runtime.intermediates import (load_onnx_model, onnx_execution_order,
                                                     onnx_scales, onnx_with_intermediates)

        model = load_onnx_model(self.path, self._content)
        self._order = onnx_execution_order(model)
        self._scales = onnx_scales(model)
        self._own_outputs = len(model.graph.output)
        return onnx_with_intermediates(model).SerializeToString()

    def _open_session(self, ort, integer_io: bool):
        """An InferenceSession with this runner's options. `integer_io` (a full-integer
        model): `session.x64quantprecision` on, since onnxruntime's u8s8 kernels on x86
        without VNNI add pairs of products in int16 and saturate (measured: the int8-full
        tlunet's logit off by 25 steps without it, within one step of TFLite with it)."""
        ort.set_default_logger_severity(3)  # errors only: no coloured warnings on stderr
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if self.threads:
            options.intra_op_num_threads = int(self.threads)
            options.inter_op_num_threads = 1
        if not self.spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if integer_io:
            options.add_session_config_entry("session.x64quantprecision", "1")
        if self.profile_prefix:
            options.enable_profiling = True
            options.profile_file_prefix = str(self.profile_prefix)
        try:
            return ort.InferenceSession(self._session_source(), sess_options=options,
                                        providers=["CPUExecutionProvider"])
        except InputError:
            raise
        except Exception as exc:  # onnxruntime raises its own exception types (InvalidProtobuf, Fail, ...)
            raise InputError(f"{self.path}: not a valid ONNX model ({first_line(exc)})") from None

    def _precision(self, embedded, ops, types) -> str:
        recorded = (embedded or {}).get("precision")
        if recorded in ("fp32", "fp16", "int8", "int8-full"):
            return recorded
        if ops is not None:
            if any(op in ops for op in ("QuantizeLinear", "QLinearConv", "ConvInteger")):
                return "int8"
            return "fp16" if "FLOAT16" in types or self._input_dtype == np.float16 else "fp32"
        return _precision_from_bytes(self._content if self._content is not None
                                     else self.path.read_bytes())

    def _load_impl(self):
        try:
            import onnxruntime as ort
        except ImportError:
            raise InputError("onnxruntime is not installed; pip install 'edgetrunc[runtime]'") from None
        graph = read_onnx_graph(self.path, self._content)
        check_onnx_graph(graph, self.path, self._content)  # before any session is created
        integer_io = graph is not None and any(
            v.type.tensor_type.elem_type in _INTEGER_ELEMENTS for v in graph.graph.input)
        self.session = self._open_session(ort, integer_io)
        self._inputs = self.session.get_inputs()
        if not self._inputs:
            raise InputError(f"{self.path}: the model has no input")
        if not integer_io and any(np.dtype(_ORT_TYPES.get(i.type, np.float32)).kind in "iu"
                                  for i in self._inputs):  # no onnx package to read the graph
            self.session = self._open_session(ort, True)
        self._input = self._inputs[0]
        self._input_dtype = _ORT_TYPES.get(self._input.type, np.float32)
        session_outputs = self.session.get_outputs()
        self._run_names = [o.name for o in session_outputs]
        if self.preserve_all_tensors:  # the model's own outputs come first in the exposed copy
            session_outputs = session_outputs[:self._own_outputs]
        self._output_names = [o.name for o in session_outputs]
        custom = dict(self.session.get_modelmeta().custom_metadata_map or {})
        ops, types, activation = _graph_facts(graph, self._output_names[0])
        embedded = from_onnx_props(custom)
        quantization = io_quantization(graph) or _recorded_io_quantization(custom)

        def info(arg):
            dtype = np.dtype(_ORT_TYPES.get(arg.type, np.float32))
            scale, zero_point = quantization.get(arg.name, (None, None)) if dtype.kind in "iu" else (None, None)
            return TensorInfo(name=arg.name, shape=tuple(_dim(d) for d in arg.shape),
                              dtype=dtype.name, scale=scale, zero_point=zero_point)

        self._meta = RunnerMetadata(
            path=str(self.path), format="onnx", precision=self._precision(embedded, ops, types),
            inputs=[info(i) for i in self._inputs],
            outputs=[info(o) for o in session_outputs], layout=detect_layout(self._input.shape),
            backend=f"onnxruntime {ort.__version__}", threads=self.threads,
            output_activation=activation, ops=ops, embedded=embedded, spin=self.spin)

    def _infer_impl(self, batch) -> dict:
        arrays = batch if isinstance(batch, dict) else {self._input.name: batch}
        count = len(next(iter(arrays.values())))
        fixed = self._meta.inputs[0].shape[0] if self._meta.inputs[0].shape else None
        if fixed and count != fixed:  # a fixed batch size runs in steps of that size
            if count % fixed:
                raise InputError(f"{self.name}: the model's batch size is fixed at {fixed}; "
                                 f"got a batch of {count}")
            parts = [self._infer_impl({k: v[i:i + fixed] for k, v in arrays.items()})
                     for i in range(0, count, fixed)]
            return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        feed = {}
        for arg, info, value in zip(self._inputs, self._meta.inputs, arrays.values()):
            if self._meta.layout == "NCHW" and len(self._inputs) == 1:
                value = value.transpose(0, 3, 1, 2)
            dtype = _ORT_TYPES.get(arg.type, np.float32)
            if info.scale is not None:  # an integer input: pixels with the model's quantization
                value = quantize_input(np.asarray(value, np.float32), dtype, info.scale,
                                       info.zero_point)
            elif np.dtype(dtype).kind in "iu":
                raise InputError(f"{self.name}: integer input '{arg.name}' without quantization "
                                 "parameters (a DequantizeLinear reading it)")
            feed[arg.name] = np.ascontiguousarray(value, dtype=dtype)
        try:
            values = self.session.run(self._run_names, feed)
        except Exception as exc:  # shape or type errors reported by onnxruntime
            reason = str(exc).strip().splitlines()[0]
            raise InputError(f"{self.name}: inference failed ({reason[:200]})") from None
        scales = {o.name: (o.scale, o.zero_point) for o in self._meta.outputs if o.scale is not None}
        results = {name: dequantize_output(value, *scales[name]) if name in scales
                   else np.asarray(value, dtype=np.float32)
                   for name, value in zip(self._run_names, values)}
        if self.preserve_all_tensors:
            self._kept = results
        return {name: results[name] for name in self._output_names}

    # intermediate tensors ---------------------------------------------------
    def _close_impl(self):
        self.session, self._kept = None, {}

    def intermediate_tensors(self) -> list:
        """Every float node output of the last `infer`, in execution order, as `ArtifactTensor`s
        (`scale`: the int8 scale of a tensor that a QuantizeLinear reads or a DequantizeLinear
        writes). Needs `preserve_all_tensors=True`."""
        if not self.preserve_all_tensors:
            raise InputError(f"{self.name}: intermediate tensors are kept only by a runner "
                             "created with preserve_all_tensors=True")
        outputs = {name: i for i, name in enumerate(self._output_names)}
        tensors = [ArtifactTensor(name, name, self._order[name], value, self._scales.get(name),
                                  outputs.get(name))
                   for name, value in self._kept.items() if name in self._order]
        return sorted(tensors, key=lambda t: t.order)

    def intermediates(self) -> dict:
        """`{tensor name: float32 value}` of every node output of the last `infer`, in execution order."""
        return {t.name: t.value for t in self.intermediate_tensors()}
