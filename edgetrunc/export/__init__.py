"""Export Keras models with Truncation layers to TFLite and ONNX, checked after writing.

Public API: `export_tflite`, `export_onnx` (bytes / `onnx.ModelProto` of one artifact),
`find_truncations`, the inspectors `inspect_tflite` / `inspect_onnx` (read an artifact
back and raise, naming the layer, when a truncation is not mapped to clean clip ops),
`tflite_ops` / `onnx_ops`, and `convert` (every artifact plus `manifest.json`).
TensorFlow, tf2onnx and onnxruntime are imported only when a function needs them.
"""

from edgetrunc.export._convert import convert, load_keras_model
from edgetrunc.export._onnx import (
    ONNX_PRECISIONS,
    export_onnx,
    inspect_onnx,
    onnx_ops,
    read_onnx_metadata,
)
from edgetrunc.export._truncations import find_truncations
from edgetrunc.export._tflite import (
    TFLITE_PRECISIONS,
    export_tflite,
    inspect_tflite,
    read_tflite_metadata,
    tflite_ops,
)

__all__ = [
    "convert",
    "load_keras_model",
    "ONNX_PRECISIONS",
    "export_onnx",
    "inspect_onnx",
    "onnx_ops",
    "read_onnx_metadata",
    "TFLITE_PRECISIONS",
    "export_tflite",
    "find_truncations",
    "inspect_tflite",
    "read_tflite_metadata",
    "tflite_ops",
]
