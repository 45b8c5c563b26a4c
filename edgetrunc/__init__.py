"""edgetrunc: ship Keras models with truncation (hard clip) layers to edge devices.

Train, export to TFLite and ONNX (truncation as plain clip / min-max ops), prove parity
between Keras and every converted model, and run the converted models without
TensorFlow (`edgetrunc.runtime`). Importing this package never imports TensorFlow:
`Truncation` and `load_model` are re-exported lazily.
"""

from edgetrunc._version import __version__

__all__ = ["Truncation", "load_model", "__version__"]


def __getattr__(name):
    if name == "Truncation":
        from edgetrunc.layers import Truncation

        return Truncation
    if name == "load_model":  # the Keras file loader, `edgetrunc.keras.load.load_keras_model`
        from edgetrunc.keras.load import load_keras_model

        return load_keras_model
    raise AttributeError(f"module 'edgetrunc' has no attribute {name!r}")
