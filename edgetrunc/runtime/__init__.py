"""On-device runtime: run `.tflite` and `.onnx` detectors with no TensorFlow.

`open_runner(path)` picks the runner by suffix (`TFLiteRunner` for `.tflite`, `ONNXRunner`
for `.onnx`); both follow `BaseRunner` (`infer(batch) -> {output name: float32 array}`,
`metadata()`). `score_images(runner, paths)` tiles images into 256x256 and returns per-image
stego probabilities; `bench_artifacts(...)` measures latency, throughput and memory;
`record_outputs(...)` records an artifact's outputs on saved inputs for a parity check on
another machine (`RecordedRunner` replays them).
Nothing in this package imports TensorFlow or Keras; the interpreter packages
(ai-edge-litert, onnxruntime) are imported only when a runner is created.
"""

from __future__ import annotations

from pathlib import Path

from edgetrunc.errors import InputError
from edgetrunc.runtime._base import BaseRunner, RunnerMetadata, TensorInfo
from edgetrunc.runtime.onnx_runner import ONNXRunner
from edgetrunc.runtime.recorded import RecordedRunner, load_inputs, record_outputs, save_inputs
from edgetrunc.runtime.scoring import (
    ImageScore, preprocess_image, score_batch, score_images, stego_probability,
)
from edgetrunc.runtime.tflite_runner import TFLiteRunner

RUNNERS = {".tflite": TFLiteRunner, ".onnx": ONNXRunner}

__all__ = [
    "BaseRunner", "RunnerMetadata", "TensorInfo", "TFLiteRunner", "ONNXRunner", "open_runner",
    "ImageScore", "preprocess_image", "score_batch", "score_images", "stego_probability",
    "bench_artifacts", "RecordedRunner", "record_outputs", "save_inputs", "load_inputs",
]


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


def __getattr__(name):
    if name == "bench_artifacts":
        from edgetrunc.runtime.bench import bench_artifacts

        return bench_artifacts
    raise AttributeError(f"module 'edgetrunc.runtime' has no attribute {name!r}")
