"""edgetrunc: ship Keras models with truncation (hard clip) layers to edge devices.

Train, export to TFLite and ONNX (truncation as plain clip / min-max ops), prove parity
between Keras and every converted model, and run the converted models without
TensorFlow (`edgetrunc.runtime`). Importing this package never imports TensorFlow:
`Truncation` is re-exported lazily.
"""

from edgetrunc._version import __version__

__all__ = ["Truncation", "load_model", "__version__"]


def load_model(path, safe_mode=True, suffixes=(".keras", ".h5"), **kwargs):
    """Load a Keras model file with `Truncation` registered (see `edgetrunc.keras.load`)."""
    from edgetrunc.keras.load import load_model as _load_model

    return _load_model(path, safe_mode=safe_mode, suffixes=suffixes, **kwargs)


def __getattr__(name):
    if name == "Truncation":
        from edgetrunc.layers import Truncation

        return Truncation
    raise AttributeError(f"module 'edgetrunc' has no attribute {name!r}")
