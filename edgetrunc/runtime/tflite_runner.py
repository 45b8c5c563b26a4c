"""`TFLiteRunner`: runs a `.tflite` model with a TensorFlow-free interpreter.

The interpreter comes from `ai_edge_litert` (the successor of tflite-runtime), else
`tflite_runtime`, else `tensorflow.lite` (imported only when the first two are missing).
XNNPACK is on by default (a model XNNPACK fails to prepare runs with the built-in kernels,
with a warning); `use_xnnpack=False` runs the built-in kernels. A batch of N
images resizes the input to N (one allocated interpreter is kept per recent batch size; a
model with a fixed batch size runs in steps of that size), int8 / uint8 inputs are
quantized and outputs dequantized with the model's own scale and zero point, and with
`preserve_all_tensors=True` every intermediate tensor can be read after a run
(`intermediates()`, `intermediate_tensors()`, `get_tensor(index)`), which the per-layer
parity check uses.
"""

from __future__ import annotations

import collections
import importlib
import warnings

import numpy as np

from edgetrunc import _log
from edgetrunc.errors import InputError, first_line
from edgetrunc.runtime._base import BaseRunner, RunnerMetadata, TensorInfo, last_activation
from edgetrunc.runtime._tflite_names import readable_names, signature_order
from edgetrunc.runtime.intermediates import ArtifactTensor
from edgetrunc.runtime.metadata import read_tflite_metadata, tflite_ops
from edgetrunc.runtime.quantized_io import dequantize_output, quantize_input

_INTERPRETER_MODULES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")
_MAX_CACHED_BATCH_SIZES = 4


def load_interpreter_module():
    """Return `(module, backend name)` of the first TFLite interpreter that imports."""
    for name in _INTERPRETER_MODULES:
        try:
            return importlib.import_module(name), name.split(".")[0]
        except ImportError:
            continue
    try:
        import tensorflow as tf  # noqa: PLC0415  (last resort, only when no runtime is installed)
    except ImportError:
        raise InputError(
            "no TFLite interpreter installed; expected ai-edge-litert "
            "(pip install 'edgetrunc[runtime]'), tflite-runtime or tensorflow"
        ) from None
    return tf.lite, "tensorflow"


def _placeholder_tile(interpreter, tile: int = 256) -> None:
    """Give a free height / width (saved as 1) a 256x256 tile before the first allocation:
    at 1x1 a strided or pooled model has empty tensors, which built-in kernels refuse."""
    details = interpreter.get_input_details()
    if len(details) != 1:
        return
    signature = [int(d) for d in details[0].get("shape_signature", details[0]["shape"])]
    if len(signature) == 4 and (signature[1] < 0 or signature[2] < 0):
        shape = [max(signature[0], 1), tile if signature[1] < 0 else signature[1],
                 tile if signature[2] < 0 else signature[2], max(signature[3], 1)]
        interpreter.resize_tensor_input(details[0]["index"], shape, strict=False)


def _ops_details(interpreter) -> list:
    """The interpreter's ops in execution order (`op_name`, `inputs`, `outputs`); [] if it cannot say."""
    try:
        return interpreter._get_ops_details()
    except AttributeError:  # an interpreter without the op listing
        return []


def _rows(batch, start: int, stop: int):
    """Samples `start:stop` of an array or of a feed `{input name: array}`."""
    if isinstance(batch, dict):
        return {name: value[start:stop] for name, value in batch.items()}
    return batch[start:stop]


class TFLiteRunner(BaseRunner):
    """Run a `.tflite` file (or its bytes) on float32 NHWC batches of pixel values 0..255.

    Args:
        path_or_bytes: path of a `.tflite` file, or the flatbuffer itself as bytes.
        threads: interpreter threads (default: the interpreter's choice).
        use_xnnpack: apply the XNNPACK delegate (default). `False` runs the built-in kernels.
        preserve_all_tensors: keep every intermediate tensor readable after `infer`.
    """

    format = "tflite"

    def __init__(self, path_or_bytes, threads: int | None = None, use_xnnpack: bool = True,
                 preserve_all_tensors: bool = False):
        self.use_xnnpack = bool(use_xnnpack)
        self.preserve_all_tensors = bool(preserve_all_tensors)
        self._interpreters: collections.OrderedDict = collections.OrderedDict()
        self._last = None
        super().__init__(path_or_bytes, threads)

    # loading ---------------------------------------------------------------
    def _new_interpreter(self):
        kwargs = {"num_threads": self.threads}
        if self._content is not None:
            kwargs["model_content"] = self._content
        else:
            kwargs["model_path"] = str(self.path)
        if self.preserve_all_tensors:
            kwargs["experimental_preserve_all_tensors"] = True
        if not self.use_xnnpack:
            resolver = getattr(self._module, "OpResolverType", None)
            if resolver is None:
                resolver = self._module.experimental.OpResolverType
            kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors.*")
            return self._module.Interpreter(**kwargs)

    def _load_impl(self):
        self._module, self._backend = load_interpreter_module()
        content = self._model_bytes()
        readable = readable_names(content)  # the interpreter raises on a name that is not UTF-8
        if readable is not content:
            self._content = readable
        try:
            self._prepare()
        except UnicodeDecodeError:  # a name the flatbuffer schema could not reach
            raise InputError(f"{self.path}: a tensor or op name is not valid UTF-8") from None

    def _prepare(self):
        try:
            interpreter = self._new_interpreter()
        except (ValueError, RuntimeError) as exc:
            raise InputError(f"{self.path}: not a valid TFLite model ({first_line(exc)})") from None
        try:
            _placeholder_tile(interpreter)
            with _log.native_banners_dropped():  # XNNPACK announces itself here
                interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise InputError(f"{self.path}: the interpreter cannot prepare this model "
                             f"({first_line(exc)}); expected builtin ops only") from None
        self._inputs = interpreter.get_input_details()
        if not self._inputs:
            raise InputError(f"{self.path}: the model has no input")
        self._input = self._inputs[0]
        self._names, self._outputs = signature_order(interpreter, self._inputs,
                                                      interpreter.get_output_details())
        self._base_batch = int(self._input["shape"][0])
        self._base_interpreter = interpreter
        self._last = interpreter
        signature = self._input.get("shape_signature", self._input["shape"])
        self._resizable = int(signature[0]) < 0  # a fixed batch is run in steps, never resized
        self._meta = self._describe(interpreter)

    def _describe(self, interpreter) -> RunnerMetadata:
        def info(detail):
            signature = detail.get("shape_signature", detail["shape"])
            shape = tuple(None if int(d) < 0 else int(d) for d in signature)
            scale, zero_point = detail["quantization"]
            quantized = np.dtype(detail["dtype"]).kind in "iu" and scale != 0
            return TensorInfo(name=detail["name"], shape=shape, dtype=np.dtype(detail["dtype"]).name,
                              scale=float(scale) if quantized else None,
                              zero_point=int(zero_point) if quantized else None)

        details = _ops_details(interpreter)
        ops = [op["op_name"] for op in details]
        makers = {int(out): (op["op_name"], int(op["inputs"][0]) if len(op["inputs"]) else -1)
                  for op in details if op["op_name"] != "DELEGATE" for out in op["outputs"]}
        content = self._model_bytes()
        op_counts = tflite_ops(content) or {}
        tensor_types = {np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}
        quantized_tensors = sum(
            1 for t in interpreter.get_tensor_details()
            if np.dtype(t["dtype"]).name in ("int8", "uint8", "int16")
            and t["quantization_parameters"]["scales"].size > 0)
        integer_io = np.dtype(self._input["dtype"]).kind in "iu"
        if quantized_tensors and "int16" in tensor_types and "int8" in tensor_types:
            precision = "int16x8"
        elif quantized_tensors and (integer_io or "QUANTIZE" in op_counts):
            precision = "int8"
        elif quantized_tensors:
            precision = "dynamic-int8"  # int8 weights, float activations
        elif "float16" in tensor_types and op_counts.get("DEQUANTIZE"):
            precision = "fp16"
        else:
            precision = "fp32"
        return RunnerMetadata(
            path=str(self.path), format="tflite", precision=precision,
            inputs=[info(d) for d in self._inputs], outputs=[info(d) for d in self._outputs],
            layout="NHWC",
            backend=self._backend, threads=self.threads,
            output_activation=last_activation(int(self._outputs[0]["index"]), makers.get)
            if details else None,
            ops=op_counts, embedded=read_tflite_metadata(content),
            xnnpack=self.use_xnnpack, delegate_partitions=ops.count("DELEGATE"))

    def _close_impl(self):
        self._interpreters.clear()
        self._base_interpreter = self._last = None

    def input_names(self) -> list:
        """The signature's input names (the Keras input names), in the model's input order."""
        return list(self._names)

    def _model_bytes(self) -> bytes:
        return self._content if self._content is not None else self.path.read_bytes()

    # running ---------------------------------------------------------------
    def _interpreter_for(self, batch_size):
        """An interpreter for `batch_size` inputs, or for a full input shape (free H, W)."""
        if batch_size in self._interpreters:
            self._interpreters.move_to_end(batch_size)
            return self._interpreters[batch_size]
        interpreter = self._new_interpreter()
        try:
            for detail in self._inputs:
                shape = list(batch_size) if isinstance(batch_size, tuple) else [
                    batch_size, *detail["shape"][1:]]
                interpreter.resize_tensor_input(detail["index"], shape, strict=False)
            with _log.native_banners_dropped():
                interpreter.allocate_tensors()
        except (ValueError, RuntimeError):
            return None
        self._interpreters[batch_size] = interpreter
        while len(self._interpreters) > _MAX_CACHED_BATCH_SIZES:
            self._interpreters.popitem(last=False)
        return interpreter

    def _set_input(self, interpreter, detail, batch: np.ndarray) -> None:
        dtype = np.dtype(detail["dtype"])
        scale, zero_point = detail["quantization"]
        if dtype.kind in "iu":
            if not scale:
                raise InputError(f"{self.name}: integer input without quantization parameters")
            feed = quantize_input(batch, dtype, scale, zero_point)
        else:
            feed = batch.astype(dtype, copy=False)
        interpreter.set_tensor(detail["index"], feed)

    def _run(self, interpreter, batch) -> dict:
        values = batch.values() if isinstance(batch, dict) else [batch]
        for detail, value in zip(self._inputs, values):
            self._set_input(interpreter, detail, value)
        interpreter.invoke()
        self._last = interpreter
        results = {}
        for detail in self._outputs:
            value = interpreter.get_tensor(detail["index"])
            out_scale, out_zero = detail["quantization"]
            if np.dtype(detail["dtype"]).kind in "iu" and out_scale:
                value = dequantize_output(value, out_scale, out_zero)
            results[detail["name"]] = np.asarray(value, dtype=np.float32).copy()
        return results

    def _infer_impl(self, batch) -> dict:
        try:
            return self._infer_batch(batch)
        except RuntimeError as exc:  # XNNPACK refused a partition when it first ran
            if not self.use_xnnpack or "XNNPACK" not in str(exc):
                raise
            _log.warn(f"{self.name}: XNNPACK cannot run this model here ({first_line(exc)}); "
                      "running it with the built-in kernels")
        self.use_xnnpack = False
        self._interpreters.clear()
        self._prepare()
        return self._infer_batch(batch)

    def _infer_batch(self, batch) -> dict:
        first = next(iter(batch.values())) if isinstance(batch, dict) else batch
        n = first.shape[0]
        if len(self._inputs) == 1 and tuple(batch.shape[1:]) != tuple(
                int(d) for d in self._input["shape"][1:]):
            interpreter = self._interpreter_for(tuple(batch.shape))  # a free height / width
            if interpreter is None:
                raise InputError(f"{self.name}: the model input cannot be resized to "
                                 f"{list(batch.shape)}")
            return self._run(interpreter, batch)
        if n == self._base_batch:
            return self._run(self._base_interpreter, batch)
        interpreter = self._interpreter_for(n) if self._resizable else None
        if interpreter is not None:
            results = self._run(interpreter, batch)
            if all(v.ndim and v.shape[0] == n for v in results.values()):
                return results
        self._resizable = False
        interpreter = self._base_interpreter
        step = self._base_batch
        if n % step:
            raise InputError(f"{self.name}: the model's batch size is fixed at {step}; "
                             f"got a batch of {n}")
        parts = [self._run(interpreter, _rows(batch, i, i + step)) for i in range(0, n, step)]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    # intermediate tensors ---------------------------------------------------
    def tensor_details(self) -> list:
        """`get_tensor_details()` of the interpreter that ran last (name, index, shape, dtype, quantization)."""
        return self._last.get_tensor_details()

    def get_tensor(self, index: int, dequantize: bool = False) -> np.ndarray:
        """Value of tensor `index` after the last `infer` (needs `preserve_all_tensors=True`
        for intermediates); `dequantize=True` applies the tensor's per-tensor scale / zero point."""
        try:
            value = np.array(self._last.get_tensor(index))
        except ValueError as exc:
            raise InputError(f"{self.name}: tensor {index} cannot be read ({exc}); "
                             "create the runner with preserve_all_tensors=True") from None
        if dequantize and value.dtype.kind in "iu":
            for detail in self._last.get_tensor_details():
                if detail["index"] == index:
                    params = detail["quantization_parameters"]
                    scales, zero_points = params["scales"], params["zero_points"]
                    if scales.size == 1:
                        value = dequantize_output(value, float(scales[0]), int(zero_points[0]))
                    elif scales.size > 1:
                        shape = [1] * value.ndim
                        shape[params["quantized_dimension"]] = scales.size
                        value = ((value.astype(np.float32) - zero_points.reshape(shape))
                                 * scales.reshape(shape)).astype(np.float32)
                    break
        return value

    def get_tensor_by_name(self, name: str, dequantize: bool = False) -> np.ndarray:
        for detail in self._last.get_tensor_details():
            if detail["name"] == name:
                return self.get_tensor(detail["index"], dequantize)
        raise InputError(f"{self.name}: no tensor named {name!r}")

    def intermediate_tensors(self, lazy: bool = False) -> list:
        """Every numeric op output of the last `infer`, in execution order, as `ArtifactTensor`s.

        Needs `preserve_all_tensors=True`. int8 / uint8 values are dequantized (their `scale`
        is kept); tensors quantized per channel and tensors that cannot be read are left out.
        `lazy=True` leaves every value unread until `tensor.read()` (None if it cannot be read).
        """
        if not self.preserve_all_tensors:
            raise InputError(f"{self.name}: intermediate tensors are kept only by a runner "
                             "created with preserve_all_tensors=True")
        details = {d["index"]: d for d in self.tensor_details()}
        outputs = {d["index"]: i for i, d in enumerate(self._outputs)}
        ops = _ops_details(self._last)
        op_outputs = [i for op in ops for i in op["outputs"] if i >= 0] if ops else sorted(details)
        tensors = []
        for order, index in enumerate(op_outputs):
            detail = details[index]
            dtype = np.dtype(detail["dtype"])
            if dtype.kind not in "fiu":
                continue
            scales = detail.get("quantization_parameters", {}).get("scales", np.zeros(0))
            if dtype.kind in "iu" and scales.size != 1:
                continue
            scale = float(scales[0]) if dtype.kind in "iu" else None
            if lazy:
                tensors.append(ArtifactTensor(detail["name"], index, order, None, scale,
                                              outputs.get(index), self._read_dequantized(index)))
                continue
            try:
                value = self.get_tensor(index, dequantize=True)
            except InputError:
                continue
            tensors.append(ArtifactTensor(detail["name"], index, order, value.astype(np.float32),
                                          scale, outputs.get(index)))
        return tensors

    def _read_dequantized(self, index: int):
        def read():
            try:
                return self.get_tensor(index, dequantize=True).astype(np.float32, copy=False)
            except InputError:
                return None
        return read

    def intermediates(self) -> dict:
        """`{tensor name: float32 value}` of every op output of the last `infer` (see
        `intermediate_tensors`), in execution order."""
        return {t.name: t.value for t in self.intermediate_tensors()}
