"""edgetrunc: ship Keras models with truncation (hard clip) layers to edge devices.

Train, export to TFLite and ONNX (truncation as plain clip / min-max ops), prove parity
between Keras and every converted model, and run the converted models without
TensorFlow (`edgetrunc.runtime`). Importing this package never imports TensorFlow:
`Truncation` is re-exported lazily.
"""

__version__ = "0.1.0"

__all__ = ["Truncation", "load_model", "__version__"]


def load_model(path, safe_mode=True, **kwargs):
    """`keras.saving.load_model` with the `Truncation` layer registered first."""
    import keras

    import edgetrunc.layers  # noqa: F401  (registers Truncation for deserialization)

    return keras.saving.load_model(path, safe_mode=safe_mode, **kwargs)


def __getattr__(name):
    if name == "Truncation":
        from edgetrunc.layers import Truncation

        return Truncation
    raise AttributeError(f"module 'edgetrunc' has no attribute {name!r}")
