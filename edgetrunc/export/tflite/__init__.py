"""TFLite export: `graph` (the flatbuffer graph view), `passes` (the rewrites and their order),
`exporter` (`export_tflite`), `inspect` (`inspect_tflite`). TensorFlow is imported lazily."""
