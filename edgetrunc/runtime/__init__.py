"""On-device runtime: run `.tflite` and `.onnx` detectors with no TensorFlow.

`open_runner(path)` picks the runner through the file's format (`formats`: one descriptor
per artifact format, `TFLiteRunner` for `.tflite`, `ONNXRunner` for `.onnx`, options in one
typed `RunnerOptions`); every runner follows `BaseRunner`
(`infer(batch) -> {output name: float32 array}`,
`metadata()`, a typed `RunnerMetadata`); `TFLiteRunner(..., preserve_all_tensors=True)`
and `ONNXRunner(..., preserve_all_tensors=True)` keep every intermediate tensor
(`open_with_intermediates(path)`, then `runner.intermediates()`).
`score_batch(runner, x)` is the one batched scorer (stego probability of each input, any
runner); `score_images(runner, paths)` tiles images into 256x256 and returns per-image
stego probabilities; `bench_artifacts(...)` measures latency, throughput and memory;
`record_outputs(...)` records an artifact's outputs on saved inputs for a parity check on
another machine (`RecordedRunner` replays them).
Nothing in this package imports TensorFlow or Keras; the interpreter packages
(ai-edge-litert, onnxruntime) are imported only when a runner is created.
"""

from __future__ import annotations

from edgetrunc.runtime._base import BaseRunner, RunnerMetadata, TensorInfo
from edgetrunc.runtime import formats
from edgetrunc.runtime._open import open_runner, open_with_intermediates
from edgetrunc.runtime.formats import ArtifactFormat, RunnerOptions
from edgetrunc.runtime.onnx_runner import ONNXRunner
from edgetrunc.runtime.recorded import RecordedRunner, load_inputs, record_outputs, save_inputs
from edgetrunc.runtime.scoring import (
    ImageScore, preprocess_image, probability_from_outputs, run_batched, score_batch, score_images,
)
from edgetrunc.runtime.tflite_runner import TFLiteRunner

__all__ = [
    "BaseRunner", "RunnerMetadata", "TensorInfo", "TFLiteRunner", "ONNXRunner", "open_runner",
    "open_with_intermediates", "formats", "ArtifactFormat", "RunnerOptions",
    "ImageScore", "preprocess_image", "probability_from_outputs", "run_batched", "score_batch",
    "score_images", "bench_artifacts", "RecordedRunner", "record_outputs", "save_inputs", "load_inputs",
]


def __getattr__(name):
    if name == "bench_artifacts":
        from edgetrunc.runtime.bench import bench_artifacts

        return bench_artifacts
    raise AttributeError(f"module 'edgetrunc.runtime' has no attribute {name!r}")
