"""The runner interface every backend follows (learned from Polygraphy's BaseRunner).

A runner is created from a path, `infer(batch)` takes a float32 NHWC batch of pixel values
0..255 and returns `{output name: float32 array}` (int8 models quantize the input and
dequantize the outputs with the model's own parameters); `metadata()` describes inputs,
outputs, precision and quantization. Subclasses fill the `_load_impl` / `_infer_impl` hooks
(and `_close_impl` to release a session); `infer` validates the feed first. A runner loads its
model when created and holds it until `close()`; it is a context manager (`with
open_runner(path) as runner:`). No TensorFlow here.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgetrunc._commit import settle
from edgetrunc._io import require_file
from edgetrunc.errors import InputError
from edgetrunc.runtime.feeds import check_feed, is_feed


MAX_MODEL_BYTES = 2 << 30  # protobuf and flatbuffers both stop at 2 GiB
_FORMAT_HINTS = {
    "tflite": "holds a TFLite flatbuffer",
    "onnx": "looks like an ONNX model",
    "keras": "holds a Keras .keras archive (zip)",
    "h5": "holds an HDF5 (legacy Keras .h5) file",
}
_RENAME_HINTS = {
    "tflite": "; rename it to .tflite",
    "onnx": "; rename it to .onnx",
    "keras": "; convert it with `edgetrunc convert`",
    "h5": "; convert it with `edgetrunc convert`",
}


def check_model_size(path, size: int | None = None) -> None:
    """Refuse a model file (or content of `size` bytes) over `MAX_MODEL_BYTES`, from its size
    alone: nothing is read. ONNX (protobuf) and TFLite (flatbuffers) models cannot be larger."""
    if size is None:
        try:
            size = os.stat(path).st_size
        except OSError:
            return
    if size > MAX_MODEL_BYTES:
        raise InputError(f"{path}: {size / 2**30:.1f} GiB; a model file is limited to "
                         f"{MAX_MODEL_BYTES >> 30} GiB (the protobuf / flatbuffers limit)")


def sniff_model_format(path) -> str | None:
    """'tflite', 'onnx', 'keras' or 'h5' from the first bytes of `path`; None when unsure."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError:
        return None
    if len(head) >= 8 and head[4:8] == b"TFL3":
        return "tflite"
    if head[:4] == b"PK\x03\x04":
        return "keras"
    if head[:8] == b"\x89HDF\r\n\x1a\n":
        return "h5"
    if len(head) >= 2 and head[0] == 0x08 and 3 <= head[1] <= 20:  # ModelProto.ir_version first
        return "onnx"
    return None


@dataclass
class TensorInfo:
    name: str
    shape: tuple  # None for dynamic dimensions
    dtype: str
    scale: float | None = None
    zero_point: int | None = None


PRECISIONS = ("fp32", "fp16", "int8", "int8-full")


@dataclass
class RunnerMetadata:
    """What a runner knows about its model and how it runs it.

    The fields every runner fills: `path`, `format` ("keras" | "tflite" | "onnx" |
    "recorded"), `precision` (read from the graph), `inputs` / `outputs` (`TensorInfo`),
    `layout`, `backend` (the interpreter or runtime and its version), `threads` and
    `output_activation` ("softmax", "sigmoid", "linear" or None when the graph does not say).
    The others are None where a backend has no such thing: `ops` (`{op type: count}`),
    `embedded` (the metadata the exporter stored in the artifact), `xnnpack` and
    `delegate_partitions` (TFLite), `spin` (ONNX Runtime), `layers` (Keras) and `recorded`
    (the recording a `RecordedRunner` replays).
    """

    path: str
    format: str
    precision: str
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    layout: str = "NHWC"
    backend: str | None = None
    threads: int | None = None
    output_activation: str | None = None
    ops: dict | None = None
    embedded: dict | None = None
    xnnpack: bool | None = None
    delegate_partitions: int | None = None
    spin: bool | None = None
    layers: int | None = None
    recorded: dict | None = None

    @property
    def artifact_precision(self) -> str:
        """The precision the exporter recorded in the artifact, else the one read from its graph."""
        recorded = (self.embedded or {}).get("precision")
        return recorded if recorded in PRECISIONS else self.precision

    def to_dict(self):
        return asdict(self)


class BaseRunner:
    """Common front of every backend runner."""

    format = "base"
    closed = False

    def __init__(self, path_or_bytes, threads: int | None = None):
        """`path_or_bytes`: a model file, or the model's bytes (kept in `self._content`)."""
        if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
            self.path = Path(f"<memory>.{self.format}")
            check_model_size(self.path, len(path_or_bytes))
            self._content = bytes(path_or_bytes)
        else:
            self._content = None
            self.path = self._source_path(path_or_bytes)
        if self._content is not None and not self._content:
            raise InputError(f"{self.path}: empty model content")
        if threads is not None and int(threads) < 1:
            raise InputError(f"threads: expected a positive integer; got {threads}")
        self.threads = threads
        self._meta: RunnerMetadata | None = None
        self._load_impl()

    # hooks -----------------------------------------------------------------
    def _source_path(self, path) -> Path:
        """Check the model file before loading it (a one-line InputError if it is unusable).

        A file whose content is another model format (an ONNX model named `.tflite`, a
        Keras file named `.onnx`, ...) is refused naming what it holds.
        """
        settle(Path(path).parent)  # a killed convert's commit finished, or a forged record refused
        path = require_file(path, f".{self.format} file")
        if self.format in ("tflite", "onnx"):
            check_model_size(path)
        found = sniff_model_format(path)
        if found is None or found == self.format or (self.format, found) == ("keras", "h5"):
            return path
        if self.format == "keras":
            hint = "; expected the Keras model (.keras or .h5) here, the artifacts after it"
        else:
            hint = _RENAME_HINTS[found]
        raise InputError(f"{path}: {_FORMAT_HINTS[found]}, not a .{self.format} model{hint}")

    def _load_impl(self):
        raise NotImplementedError

    def _infer_impl(self, batch) -> dict:
        """Run one checked batch: an array, or `{input name: float32 array}` in input order
        for a model with several inputs."""
        raise NotImplementedError

    def _close_impl(self):
        """Release the interpreter or session (runners that hold one override this)."""

    # lifecycle -------------------------------------------------------------
    def close(self) -> None:
        """Release what the runner holds; `infer` refuses afterwards. A second call does nothing."""
        if not self.closed:
            self._close_impl()
            self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # public ----------------------------------------------------------------
    def metadata(self) -> RunnerMetadata:
        return self._meta

    @property
    def name(self) -> str:
        return self.path.name

    def input_size(self) -> tuple | None:
        """`(height, width)` of the model input when both are fixed, else None."""
        if not self._meta or not self._meta.inputs or len(self._meta.inputs[0].shape) != 4:
            return None
        shape = self._meta.inputs[0].shape
        height, width = (shape[1], shape[2]) if self._meta.layout == "NHWC" else (shape[2], shape[3])
        return (height, width) if height and width else None

    def input_names(self) -> list:
        """The names a feed of this model is keyed by, in the model's input order (the Keras
        input names for artifacts that keep them)."""
        return [info.name for info in (self._meta.inputs if self._meta else [])]

    def infer(self, batch) -> dict:
        """Run a float32 NHWC batch (pixel values 0..255), or for a model whose input is not an
        image, a batch of its input's rank; outputs as float32. A model with several inputs
        takes a feed (`runtime.feeds`: `{input name: array}`, a list in input order or
        `NamedInputs`), checked before it runs."""
        if self.closed:
            raise InputError(f"{self.path}: the runner is closed")
        names = self.input_names()
        if len(names) > 1:
            feed = check_feed(self.path, batch, names, [i.shape for i in self._meta.inputs])
            return self._infer_impl(feed)
        if is_feed(batch):  # one input given by name or in a list of one
            batch = next(iter(check_feed(self.path, batch, names, [self._meta.inputs[0].shape])
                              .values()))
        batch = np.asarray(batch)
        expected = self._meta.inputs[0].shape if self._meta and self._meta.inputs else None
        if expected is not None and len(expected) != 4:
            got = tuple(batch.shape[1:])
            if batch.ndim != len(expected) or any(
                    w is not None and w != g for w, g in zip(expected[1:], got)):
                raise InputError(f"{self.path}: model input {list(expected)} is not an image; "
                                 f"got a batch {list(batch.shape)}")
            return self._infer_impl(batch.astype(np.float32, copy=False))
        if batch.ndim != 4:
            raise InputError(f"{self.name}: expected a batch [N, H, W, C]; got shape {batch.shape}")
        if expected is not None and len(expected) == 4:
            want = tuple(expected[1:]) if self._meta.layout == "NHWC" else (
                expected[2], expected[3], expected[1])
            got = tuple(batch.shape[1:])
            if any(w is not None and w != g for w, g in zip(want, got)):
                raise InputError(f"{self.path}: expected input [N, {', '.join(str(w) for w in want)}]"
                                 f" (NHWC); got {list(batch.shape)}")
        return self._infer_impl(batch.astype(np.float32, copy=False))


_PASS_THROUGH = {"DEQUANTIZE", "QUANTIZE", "RESHAPE", "SQUEEZE", "IDENTITY", "Identity",
                 "DequantizeLinear", "QuantizeLinear", "Reshape", "Squeeze", "Flatten", "Cast", "CAST"}
_ACTIVATIONS = {"SOFTMAX": "softmax", "Softmax": "softmax", "LOGISTIC": "sigmoid", "Sigmoid": "sigmoid"}


def last_activation(output, producer) -> str | None:
    """"softmax", "sigmoid" or "linear": the op that makes `output`, looking through
    quantize / reshape steps. `producer(tensor)` returns `(op type, input tensor)` or None."""
    for _ in range(16):
        found = producer(output)
        if found is None:
            return None
        op_type, source = found
        if op_type in _ACTIVATIONS:
            return _ACTIVATIONS[op_type]
        if op_type not in _PASS_THROUGH:
            return "linear"
        output = source
    return None
