"""The one Keras model loader: `load_keras_model(path)` (public as `edgetrunc.load_model`) for convert, evaluate, parity and migrate.

`load_keras_model` dispatches on the file's kind, as Keras's own `saving_api` does: a Keras 3
`.keras` file loads with `keras.saving.load_model` (safe mode, `Truncation` registered);
Keras 2 files (tf.keras `.h5` / `.keras`, op layers) are read by `edgetrunc.legacy`. Files
that hold Lambda layers are refused with the `edgetrunc migrate` command that replaces
them. `require_keras_file` is the path check every command runs before loading.

Before Keras reads anything, the file passes `edgetrunc.legacy.read_model_config`'s limits
(archive and config sizes, member names, nesting depth) and every class in its config must
resolve through Keras's namespace or registry or the caller's `custom_objects`
(`edgetrunc.legacy.map_config_layers`): nothing named in a file is imported.
"""

from __future__ import annotations

from pathlib import Path

from edgetrunc import legacy
from edgetrunc.errors import InputError, InputErrors, first_line, with_prefix


def require_keras_file(path, suffixes=(".keras",)) -> Path:
    """`require_model_file` where a legacy `.h5` that is not accepted names `edgetrunc migrate`."""
    path = Path(path)
    suffix = path.suffix.lower()
    suffixes = tuple(suffixes) + ((".hdf5",) if ".h5" in suffixes else ())  # one format, two names
    if suffix in (".h5", ".hdf5") and suffix not in suffixes and path.is_file():
        _, config = legacy.read_model_config(path)  # a weights-only or corrupt file says so first
        trust = " --trust-lambda" if legacy.find_lambda_configs(config) else ""
        raise InputError(f"{path}: a legacy {path.suffix} model; convert it to .keras first: "
                         f"edgetrunc migrate {path} --out NEW.keras{trust}")
    return legacy.require_model_file(path, suffixes)


def load_keras_model(path, safe_mode=True, suffixes=(".keras", ".h5"), checked=False, **kwargs):
    """Load a Keras model file with `Truncation` registered first (`compile=False` by default).

    A missing, empty, corrupt or foreign file raises `edgetrunc.errors.InputError` with one
    line naming the file and the reason; so does a legacy file that needs
    `edgetrunc migrate` first (Lambda layers, custom classes, a `.h5` where only `.keras`
    is accepted, a SavedModel folder). A `.keras` written by tf.keras 2 and tf.keras 2
    `tf.clip_by_value` op layers are read as `edgetrunc migrate` reads them.
    `custom_objects` is a dict or the path of the user's own `.py` file (`legacy.custom`);
    `trust_lambda=True` loads Lambda layers (their stored code runs, with `lambda_globals`).
    `checked=True`: the caller has passed `path` through `require_keras_file` already.
    """
    import zipfile

    path = Path(path) if checked else require_keras_file(path, suffixes)
    if path.suffix.lower() == ".keras" and not zipfile.is_zipfile(path):
        with open(path, "rb") as stream:
            zip_start = stream.read(4) == b"PK\x03\x04"
        if zip_start:
            raise InputError(f"{path}: truncated or corrupt .keras file (its zip archive is incomplete)")
        raise InputError(f"{path}: not a Keras file, cannot load it (a .keras file is a zip archive)")
    import edgetrunc.keras.fake_quant  # noqa: F401  (registers the quantization-aware layers)

    custom_objects = legacy.load_custom_objects(kwargs.get("custom_objects"))
    if custom_objects is not None:  # the user's own code, given on purpose (legacy.custom)
        kwargs["custom_objects"] = custom_objects
        legacy.check_custom_objects(path, _read_config(path)[1], custom_objects)
    if kwargs.pop("trust_lambda", False):  # the user trusts the file: its Lambdas run
        return legacy.load_legacy_model(path, trust_lambda=True, custom_objects=custom_objects)
    if safe_mode and _needs_legacy_reading(path, custom_objects):
        return legacy.load_legacy_model(path, custom_objects=custom_objects)
    if not safe_mode:  # lambdas may run, but the limits and class resolution still hold
        _checked_config(path, custom_objects)
    import keras

    import edgetrunc.layers  # noqa: F401  (registers Truncation for deserialization)

    kwargs.setdefault("compile", False)
    try:
        return keras.saving.load_model(str(path), safe_mode=safe_mode, **kwargs)
    except Exception as exc:  # keras raises ValueError, OSError, zipfile errors, ...
        raise InputError(f"{path}: cannot load the Keras model ({first_line(exc)})") from None


def _read_config(path):
    """`(format, config)` of a model file within `read_model_config`'s limits."""
    try:
        return legacy.read_model_config(path)
    except InputError as exc:
        reason = str(exc).removeprefix(f"{path}: ")
        raise InputError(f"{path}: cannot load the Keras model ({reason})") from None


def _mapped_layers(path, config, custom_objects=None) -> list:
    """The layers `map_config_layers` maps; InputError naming a class that does not resolve
    through Keras's namespace or registry or `custom_objects` (nothing is imported)."""
    try:
        with legacy.custom_objects_scope(custom_objects):
            return legacy.map_config_layers(config, custom_objects=custom_objects)[1]
    except InputError as exc:
        raise with_prefix(exc, f"{path}: ") from None


def _checked_config(path, custom_objects=None):
    """Refuse a file over the limits or with a class that does not resolve."""
    _mapped_layers(path, _read_config(path)[1], custom_objects)


def _needs_legacy_reading(path, custom_objects=None) -> bool:
    """Whether `path` needs `edgetrunc.legacy` (a Keras 2 config, mapped layers); raises
    InputError with the fix for files that must be migrated first (Lambda layers)."""
    file_format, config = _read_config(path)
    names = [c.get("name", "?") for c in legacy.find_lambda_configs(config)]
    if names or legacy.count_stored_functions(config):
        shown = f" ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})" if names else ""
        lambdas = (f"{path}: has {len(names) or 'stored'} Lambda layer(s){shown}, which run "
                   "Python code stored in the file; replace them first: edgetrunc migrate "
                   f"{path} --out NEW.keras --trust-lambda (Lambdas that are not truncations: "
                   "give --trust-lambda here to run them as they are)")
        try:  # every other blocker of the file in the same message
            _mapped_layers(path, config, custom_objects)
        except InputErrors as exc:
            raise InputErrors([lambdas, *exc.lines]) from None
        except InputError as exc:
            raise InputErrors([lambdas, str(exc)]) from None
        raise InputError(lambdas)
    mapped = _mapped_layers(path, config, custom_objects)
    return file_format != "keras" or bool(mapped)
