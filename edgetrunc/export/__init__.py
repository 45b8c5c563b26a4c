"""Export Keras models with Truncation layers to TFLite and ONNX, checked after writing.

Public API: `export_tflite`, `export_onnx` (bytes / `onnx.ModelProto` of one artifact),
`find_truncations`, the inspectors `inspect_tflite` / `inspect_onnx` (read an artifact
back and raise, naming the layer, when a truncation is not mapped to clean clip ops),
`tflite_ops` / `onnx_ops`, the embedded-metadata readers `read_tflite_metadata` /
`read_onnx_metadata`, and `convert` (every artifact plus `manifest.json`).

Layout: `tflite/` and `onnx/` each hold a graph view (`graph`), the rewrites in the order
they run (`passes`), the exporter (`exporter`: `export_tflite` / `export_onnx`) and the
inspector (`inspect`); `passes` runs the pass lists of both, `candidates` is the
`ClipCandidate` both graph views list, `prepared` is a model prepared once for all its
artifacts; `conversion` (`convert`), `calibration`, `evaluation` and `manifest` are the
convert workflow. TensorFlow, tf2onnx and onnxruntime are imported only when a function
needs them.
"""

from edgetrunc.export.conversion import convert
from edgetrunc.export.formats import export_format
from edgetrunc.export.onnx.exporter import ONNX_PRECISIONS, export_onnx
from edgetrunc.export.onnx.inspect import inspect_onnx
from edgetrunc.export.tflite.exporter import TFLITE_PRECISIONS, export_tflite
from edgetrunc.export.tflite.inspect import inspect_tflite
from edgetrunc.keras.truncations import find_truncations
from edgetrunc.runtime.metadata import onnx_ops, read_onnx_metadata, read_tflite_metadata, tflite_ops

__all__ = [
    "convert",
    "export_format",
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
