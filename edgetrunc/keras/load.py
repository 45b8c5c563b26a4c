"""The one Keras model loader: `load_model(path)` for convert, evaluate, parity and migrate.

A Keras 3 `.keras` file loads with `keras.saving.load_model` (safe mode, `Truncation`
registered); Keras 2 files (tf.keras `.h5` / `.keras`, op layers) are read the way
`edgetrunc.legacy` reads them. Files that hold Lambda layers are refused with the
`edgetrunc migrate` command that replaces them.
"""

from __future__ import annotations

def load_model(path, safe_mode=True, suffixes=(".keras", ".h5"), **kwargs):
    """Load a Keras model file with `Truncation` registered first (`compile=False` by default).

    A missing, empty, corrupt or foreign file raises `edgetrunc.errors.InputError` with one
    line naming the file and the reason; so does a legacy file that needs
    `edgetrunc migrate` first (Lambda layers, custom classes, a `.h5` where only `.keras`
    is accepted, a SavedModel folder). A `.keras` written by tf.keras 2 and tf.keras 2
    `tf.clip_by_value` op layers are read as `edgetrunc migrate` reads them.
    """
    import zipfile

    from edgetrunc.errors import InputError, first_line
    from edgetrunc.migrate import require_keras_file

    path = require_keras_file(path, suffixes)
    if path.suffix.lower() == ".keras" and not zipfile.is_zipfile(path):
        with open(path, "rb") as stream:
            zip_start = stream.read(4) == b"PK\x03\x04"
        if zip_start:
            raise InputError(f"{path}: truncated or corrupt .keras file (its zip archive is incomplete)")
        raise InputError(f"{path}: not a Keras file, cannot load it (a .keras file is a zip archive)")
    legacy = _legacy_loader(path) if safe_mode else None
    if legacy is not None:
        return legacy()
    import keras

    import edgetrunc.layers  # noqa: F401  (registers Truncation for deserialization)

    kwargs.setdefault("compile", False)
    try:
        return keras.saving.load_model(str(path), safe_mode=safe_mode, **kwargs)
    except Exception as exc:  # keras raises ValueError, OSError, zipfile errors, ...
        raise InputError(f"{path}: cannot load the Keras model ({first_line(exc)})") from None


def _legacy_loader(path):
    """None when Keras 3 loads `path` as it is; else a loader, or InputError with the fix."""
    from edgetrunc import migrate
    from edgetrunc.errors import InputError

    try:
        file_format, config = migrate.read_model_config(path)
    except InputError as exc:
        reason = str(exc).removeprefix(f"{path}: ")
        raise InputError(f"{path}: cannot load the Keras model ({reason})") from None
    names = [c.get("name", "?") for c in migrate.find_lambda_configs(config)]
    if names or migrate.count_stored_functions(config):
        shown = f" ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})" if names else ""
        raise InputError(f"{path}: has {len(names) or 'stored'} Lambda layer(s){shown}, which run "
                         "Python code stored in the file; replace them first: edgetrunc migrate "
                         f"{path} --out NEW.keras --trust-lambda")
    try:
        _, mapped = migrate.map_config_layers(config)
    except migrate.UnknownLayerClass as exc:
        raise InputError(f"{path}: {exc}") from None
    if file_format == "keras" and not mapped:
        return None
    return lambda: migrate.load_model(path)  # Keras 2 configs need migrate's reading
