"""edgetrunc: ship Keras models with truncation (hard clip) layers to edge devices.

Train, export to TFLite and ONNX (truncation as plain clip / min-max ops), prove parity
between Keras and every converted model, and run the converted models without
TensorFlow (`edgetrunc.runtime`). Importing this package never imports TensorFlow:
`Truncation` is re-exported lazily.
"""

__version__ = "0.1.0"

__all__ = ["Truncation", "load_model", "__version__"]


def load_model(path, safe_mode=True, suffixes=(".keras", ".h5"), **kwargs):
    """Load a Keras model file with `Truncation` registered first (`compile=False` by default).

    A missing, empty, corrupt or foreign file raises `edgetrunc.errors.InputError` with one
    line naming the file and the reason.
    """
    import zipfile

    from edgetrunc._io import require_file
    from edgetrunc.errors import InputError

    path = require_file(path, "Keras model", suffixes=suffixes)
    if path.suffix.lower() == ".keras" and not zipfile.is_zipfile(path):
        raise InputError(f"{path}: not a Keras file, cannot load it (a .keras file is a zip archive)")
    import keras

    import edgetrunc.layers  # noqa: F401  (registers Truncation for deserialization)

    kwargs.setdefault("compile", False)
    try:
        return keras.saving.load_model(str(path), safe_mode=safe_mode, **kwargs)
    except Exception as exc:  # keras raises ValueError, OSError, zipfile errors, ...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: cannot load the Keras model ({reason[:200]})") from None


def __getattr__(name):
    if name == "Truncation":
        from edgetrunc.layers import Truncation

        return Truncation
    raise AttributeError(f"module 'edgetrunc' has no attribute {name!r}")
