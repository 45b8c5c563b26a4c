"""Intermediate tensors of an artifact: what a runner keeps when asked to keep every tensor.

`TFLiteRunner(..., preserve_all_tensors=True)` and `ONNXRunner(..., preserve_all_tensors=True)`
keep every op output of their last `infer`; `runner.intermediates()` returns them as
`{name: float32 array}` and `runner.intermediate_tensors()` as `ArtifactTensor`s (with the
execution order, the int8 scale and the position among the model outputs), which the
per-layer parity check maps to Keras layers; a TFLite runner's `intermediate_tensors(lazy=True)`
leaves each value unread until `tensor.read()`, so a caller holds one tensor at a time.
TFLite keeps them with the interpreter's `experimental_preserve_all_tensors` (int8 values dequantized); ONNX Runtime runs a copy of
the model whose every float node output is marked as a graph output
(`onnx_with_intermediates`; needs the `onnx` package). Keeping every tensor costs memory:
`INTERMEDIATE_THREADS` makes TFLite take its multithreaded float convolution, which needs no
im2col buffer (kept per convolution otherwise, nine times a 3x3 convolution's input), and
`release_memory()` hands what a finished runner held back to the OS. No TensorFlow.
"""

from __future__ import annotations

import ctypes
import gc
from dataclasses import dataclass
from typing import Callable

import numpy as np

from edgetrunc.errors import InputError

INTERMEDIATE_THREADS = 2  # TFLite's im2col-free multithreaded convolution needs more than one


def intermediate_threads(threads: int | None = None) -> int:
    """Threads for a runner that keeps every tensor: `threads`, at least `INTERMEDIATE_THREADS`."""
    return max(INTERMEDIATE_THREADS, int(threads or 0))


def release_memory() -> None:
    """Collect unreachable objects and return the freed heap to the OS (`malloc_trim` on glibc;
    elsewhere only the collection)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


@dataclass
class ArtifactTensor:
    """One intermediate tensor of an artifact after a run."""

    name: str
    key: object  # TFLite tensor index or ONNX tensor name
    order: int  # position in execution order
    value: np.ndarray
    scale: float | None = None  # int8 quantization scale, when the tensor has one
    output_index: int | None = None  # position among the artifact's outputs
    load: Callable | None = None  # reads `value` when it was left unread (None if unreadable)

    def read(self) -> np.ndarray | None:
        """The value, read now if it was left unread (None when it cannot be read)."""
        return self.value if self.value is not None or self.load is None else self.load()


def load_onnx_model(path, content: bytes | None = None):
    """The `onnx.ModelProto` of the file `path` with its external data read from beside it,
    or of `content` when given; InputError naming `path` if it is not one. Check the graph
    first (`runtime._onnx_graph.check_onnx_graph`): external data is read as it names it."""
    try:
        import onnx
    except ImportError:
        raise InputError(f"{path}: reading intermediate tensors needs the onnx package "
                         "(pip install onnx)") from None
    try:
        if content is not None:
            return onnx.load_from_string(bytes(content))
        return onnx.load(str(path))
    except Exception as exc:  # protobuf decode errors, unreadable external data
        raise InputError(f"{path}: not a valid ONNX model ({str(exc)[:120]})") from None


def onnx_with_intermediates(model):
    """A copy of the ONNX `model` with every float node output added to `graph.output`."""
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shape inference is best effort; unknown types are skipped
        inferred = model
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    existing = {o.name for o in model.graph.output}
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)
    for node in model.graph.node:
        for name in node.output:
            if not name or name in existing or types.get(name) not in floats:
                continue
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, types[name], None))
            existing.add(name)
    return model


def onnx_scales(model) -> dict:
    """Quantization scale of each tensor that a QuantizeLinear reads or a DequantizeLinear writes."""
    from onnx import numpy_helper

    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute:
            try:
                init[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
            except Exception:  # non-tensor constants are not scales
                pass
    scales = {}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 1:
            scale = init.get(node.input[1])
            if scale is None or np.size(scale) != 1:
                continue
            target = node.input[0] if node.op_type == "QuantizeLinear" else node.output[0]
            scales[target] = float(np.asarray(scale).reshape(()))
    return scales


def onnx_execution_order(model) -> dict:
    """`{tensor name: index of the node that writes it}`."""
    return {name: i for i, node in enumerate(model.graph.node) for name in node.output}
