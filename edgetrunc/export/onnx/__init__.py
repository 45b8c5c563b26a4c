"""ONNX export: `graph` (the ModelProto graph view), `passes` (the rewrites and their order),
`exporter` (`export_onnx`), `quantize` (`quantize_onnx`), `inspect` (`inspect_onnx`).
tf2onnx, onnx and onnxruntime are imported lazily."""
