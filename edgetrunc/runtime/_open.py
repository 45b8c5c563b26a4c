"""Opening an artifact: the runner for a file, chosen by its suffix (no TensorFlow)."""

from __future__ import annotations

from pathlib import Path

from edgetrunc.errors import InputError
from edgetrunc.runtime._base import BaseRunner
from edgetrunc.runtime.onnx_runner import ONNXRunner
from edgetrunc.runtime.tflite_runner import TFLiteRunner

RUNNERS = {".tflite": TFLiteRunner, ".onnx": ONNXRunner}


def open_runner(path, threads: int | None = None, **options) -> BaseRunner:
    """Create the runner for `path` by its suffix (`.tflite` or `.onnx`).

    `options` go to the runner (e.g. `use_xnnpack=False`, `preserve_all_tensors=True` for
    TFLite). A missing, empty or corrupt file, or another suffix, raises `InputError`.
    """
    path = Path(path)
    runner = RUNNERS.get(path.suffix.lower())
    if runner is None:
        raise InputError(f"{path}: unsupported model file '{path.suffix or 'no suffix'}'; "
                         "expected a .tflite or .onnx artifact")
    try:
        return runner(path, threads=threads, **options)
    except TypeError as exc:
        raise InputError(f"{path}: unsupported runner option ({exc})") from None


def open_with_intermediates(path, threads: int | None = None) -> BaseRunner:
    """A runner of `path` (`.tflite` or `.onnx`) that keeps every intermediate tensor of its
    last `infer` (`runner.intermediates()`). TFLite runs its built-in kernels here: XNNPACK
    keeps its intermediates to itself."""
    options = {"use_xnnpack": False} if Path(path).suffix.lower() == ".tflite" else {}
    return open_runner(path, threads=threads, preserve_all_tensors=True, **options)
