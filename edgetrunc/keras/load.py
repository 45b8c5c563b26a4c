"""The one Keras model loader: `load_model(path)` for convert, evaluate, parity and migrate.

`load_model` dispatches on the file's kind, as Keras's own `saving_api` does: a Keras 3
`.keras` file loads with `keras.saving.load_model` (safe mode, `Truncation` registered);
Keras 2 files (tf.keras `.h5` / `.keras`, op layers) are read by `edgetrunc.legacy`. Files
that hold Lambda layers are refused with the `edgetrunc migrate` command that replaces
them. `require_keras_file` is the path check every command runs before loading.
"""

from __future__ import annotations

from pathlib import Path

from edgetrunc import legacy
from edgetrunc.errors import InputError, first_line


def require_keras_file(path, suffixes=(".keras",)) -> Path:
    """`require_model_file` where a legacy `.h5` that is not accepted names `edgetrunc migrate`."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5") and suffix not in suffixes and path.is_file():
        legacy.read_model_config(path)  # a weights-only or corrupt file says so first
        raise InputError(f"{path}: a legacy {path.suffix} model; convert it to .keras first: "
                         f"edgetrunc migrate {path} --out NEW.keras")
    return legacy.require_model_file(path, suffixes)


def load_model(path, safe_mode=True, suffixes=(".keras", ".h5"), **kwargs):
    """Load a Keras model file with `Truncation` registered first (`compile=False` by default).

    A missing, empty, corrupt or foreign file raises `edgetrunc.errors.InputError` with one
    line naming the file and the reason; so does a legacy file that needs
    `edgetrunc migrate` first (Lambda layers, custom classes, a `.h5` where only `.keras`
    is accepted, a SavedModel folder). A `.keras` written by tf.keras 2 and tf.keras 2
    `tf.clip_by_value` op layers are read as `edgetrunc migrate` reads them.
    """
    import zipfile

    path = require_keras_file(path, suffixes)
    if path.suffix.lower() == ".keras" and not zipfile.is_zipfile(path):
        with open(path, "rb") as stream:
            zip_start = stream.read(4) == b"PK\x03\x04"
        if zip_start:
            raise InputError(f"{path}: truncated or corrupt .keras file (its zip archive is incomplete)")
        raise InputError(f"{path}: not a Keras file, cannot load it (a .keras file is a zip archive)")
    if safe_mode and _needs_legacy_reading(path):
        return legacy.load_model(path)
    import keras

    import edgetrunc.layers  # noqa: F401  (registers Truncation for deserialization)

    kwargs.setdefault("compile", False)
    try:
        return keras.saving.load_model(str(path), safe_mode=safe_mode, **kwargs)
    except Exception as exc:  # keras raises ValueError, OSError, zipfile errors, ...
        raise InputError(f"{path}: cannot load the Keras model ({first_line(exc)})") from None


def _needs_legacy_reading(path) -> bool:
    """Whether `path` needs `edgetrunc.legacy` (a Keras 2 config, mapped layers); raises
    InputError with the fix for files that must be migrated first (Lambda layers)."""
    try:
        file_format, config = legacy.read_model_config(path)
    except InputError as exc:
        reason = str(exc).removeprefix(f"{path}: ")
        raise InputError(f"{path}: cannot load the Keras model ({reason})") from None
    names = [c.get("name", "?") for c in legacy.find_lambda_configs(config)]
    if names or legacy.count_stored_functions(config):
        shown = f" ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})" if names else ""
        raise InputError(f"{path}: has {len(names) or 'stored'} Lambda layer(s){shown}, which run "
                         "Python code stored in the file; replace them first: edgetrunc migrate "
                         f"{path} --out NEW.keras --trust-lambda")
    try:
        _, mapped = legacy.map_config_layers(config)
    except legacy.UnknownLayerClass as exc:
        raise InputError(f"{path}: {exc}") from None
    return file_format != "keras" or bool(mapped)
