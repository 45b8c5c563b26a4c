"""Reading a saved model's config without running anything, and scanning it.

`read_model_config` returns the format and the model config of a Keras 3 `.keras` archive,
a `.keras` written by tf.keras 2, a full-model `.h5` or a tf.keras 2 SavedModel folder (its
`keras_metadata.pb`, read as plain protobuf wire format). `find_lambda_configs`,
`count_stored_functions` and `functions_stored_by_name` scan a config for the Python code
it would run on load; `config_dicts` walks every dict of a config, nested models included.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from edgetrunc._io import require_file
from edgetrunc.errors import InputError

LEGACY_SUFFIXES = (".keras", ".h5", ".hdf5")

FORMAT_NAMES = {"keras": "Keras 3 .keras file", "tf-keras": "tf.keras 2 .keras file",
                "h5": "legacy .h5 file", "savedmodel": "tf.keras 2 SavedModel folder"}


def is_savedmodel(path) -> bool:
    """Whether `path` is a TensorFlow SavedModel folder."""
    path = Path(path)
    return path.is_dir() and ((path / "saved_model.pb").is_file()
                              or (path / "saved_model.pbtxt").is_file())


def require_model_file(path, suffixes=LEGACY_SUFFIXES, savedmodel=False) -> Path:
    """`require_file` for Keras models; a SavedModel folder is accepted with `savedmodel`,
    else refused with one line naming `edgetrunc migrate`."""
    path = Path(path)
    if is_savedmodel(path):
        if savedmodel:
            return path
        raise InputError(f"{path}: a TensorFlow SavedModel folder; convert it to .keras first: "
                         f"edgetrunc migrate {path} --out NEW.keras")
    return require_file(path, "Keras model", suffixes)


def read_model_config(path) -> tuple[str, dict]:
    """Return `(format, config)` of a `.keras` zip or a full-model `.h5`; runs no code.

    The format is `"keras"` (Keras 3), `"tf-keras"` (a `.keras` file written by tf.keras 2,
    whose config is in the Keras 2 format), `"h5"` or `"savedmodel"` (a SavedModel folder
    written by tf.keras 2, whose `keras_metadata.pb` holds the Keras 2 config).
    """
    path = require_model_file(path, savedmodel=True)
    if path.is_dir():
        return "savedmodel", _savedmodel_config(path)
    if zipfile.is_zipfile(path):
        return _archive_config(path)
    return "h5", _h5_config(path)


def _archive_config(path) -> tuple[str, dict]:
    if path.suffix.lower() != ".keras":
        raise InputError(f"{path}: a .keras zip archive named '{path.suffix}'; rename it to .keras")
    try:
        with zipfile.ZipFile(path) as archive:
            text = archive.read("config.json")
            names = set(archive.namelist())
            metadata = archive.read("metadata.json") if "metadata.json" in names else b"{}"
    except KeyError:
        raise InputError(f"{path}: zip archive without config.json; expected a model "
                         "saved with model.save('*.keras')") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{path}: corrupt .keras archive ({exc})") from None
    config = _parse_config(path, text)
    return ("tf-keras" if _saved_by_keras2(config, metadata) else "keras"), config


def _h5_config(path) -> dict:
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py comes with TensorFlow
        raise InputError(f"{path}: reading .h5 files needs h5py (pip install h5py)") from None
    if not h5py.is_hdf5(path):
        raise InputError(f"{path}: neither a .keras zip archive nor an HDF5 file; "
                         "expected a Keras model saved with model.save()")
    if path.suffix.lower() == ".keras":
        raise InputError(f"{path}: an HDF5 file named '.keras'; rename it to .h5")
    try:
        with h5py.File(path, "r") as handle:
            text = handle.attrs.get("model_config")
    except OSError as exc:
        raise InputError(f"{path}: corrupt HDF5 file ({exc})") from None
    if text is None:
        raise InputError(f"{path}: HDF5 file without a model config (weights only?); expected "
                         "a full model saved with model.save('*.h5'); to use these weights, "
                         "build the model in code, call model.load_weights on this file and "
                         "save it with model.save('model.keras')")
    return _parse_config(path, text)


def _protobuf_fields(data: bytes):
    """`(field number, value)` of a serialized protobuf message (wire format only)."""
    def varint(at):
        value = shift = 0
        while True:
            byte = data[at]
            at += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value, at

    at = 0
    while at < len(data):
        key, at = varint(at)
        wire = key & 7
        if wire == 0:
            value, at = varint(at)
        elif wire == 2:
            size, at = varint(at)
            value, at = data[at:at + size], at + size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, at = data[at:at + size], at + size
        else:
            raise ValueError(f"wire type {wire}")
        yield key >> 3, value


def _savedmodel_config(path) -> dict:
    """The Keras 2 model config that tf.keras 2 stores in a SavedModel's keras_metadata.pb."""
    metadata_file = path / "keras_metadata.pb"
    if not metadata_file.is_file():
        raise InputError(f"{path}: a SavedModel folder without keras_metadata.pb (not saved by "
                         "tf.keras model.save); Keras 3 cannot rebuild a Keras model from it")
    try:
        # SavedMetadata {repeated SavedObject nodes = 1}; SavedObject {node_path = 3, metadata = 5}
        for number, node in _protobuf_fields(metadata_file.read_bytes()):
            fields = dict(_protobuf_fields(node)) if number == 1 else {}
            if fields.get(3) == b"root":
                metadata = json.loads(fields.get(5, b"{}").decode("utf-8"))
                break
        else:
            metadata = {}
    except (ValueError, IndexError, UnicodeDecodeError):
        raise InputError(f"{path}: keras_metadata.pb cannot be read (corrupt file?)") from None
    if not isinstance(metadata.get("config"), dict) or "class_name" not in metadata:
        raise InputError(f"{path}: the SavedModel's Keras metadata has no model config (a "
                         "subclassed model?); Keras 3 cannot rebuild it")
    return _untuple({"class_name": metadata["class_name"], "config": metadata["config"]})


def _untuple(node):
    """Keras 2 metadata writes tuples as {"class_name": "__tuple__", "items": [...]}."""
    if isinstance(node, dict):
        if node.get("class_name") == "__tuple__" and isinstance(node.get("items"), list):
            return [_untuple(item) for item in node["items"]]
        return {key: _untuple(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_untuple(item) for item in node]
    return node


def _saved_by_keras2(config, metadata) -> bool:
    """Whether a `.keras` archive was written by tf.keras 2 (Keras 2.13 and later)."""
    try:
        version = str(json.loads(metadata).get("keras_version", ""))
    except (ValueError, AttributeError):
        version = ""
    if version.startswith("2."):
        return True
    module = str(config.get("module") or "")
    return module.startswith(("tf_keras.", "keras.src.engine.", "keras.engine."))


def _parse_config(path, text) -> dict:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    try:
        config = json.loads(text)
    except ValueError:
        raise InputError(f"{path}: model config is not valid JSON (corrupt file?)") from None
    if not isinstance(config, dict) or "class_name" not in config:
        raise InputError(f"{path}: model config has no class_name; not a Keras model")
    return config


def config_dicts(node):
    """Every dict inside a model config, depth first (nested models included)."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from config_dicts(value)
    elif isinstance(node, list):
        for value in node:
            yield from config_dicts(value)


def _is_lambda_layer(node) -> bool:
    return node.get("class_name") == "Lambda" and isinstance(node.get("config"), dict)


def find_lambda_configs(config) -> list[dict]:
    """Every `Lambda` layer config in a model config (nested models included)."""
    return [node["config"] for node in config_dicts(config) if _is_lambda_layer(node)]


def count_stored_functions(config) -> int:
    """How many Python functions the config stores as bytecode (each runs on load)."""
    return sum(
        1 for node in config_dicts(config)
        if node.get("class_name") == "__lambda__"
        or (_is_lambda_layer(node) and isinstance(node["config"].get("function"), list))
    )


def functions_stored_by_name(lambda_configs) -> list[tuple]:
    """`(layer, function, module)` of each Lambda that stores its function by name only."""
    found = []
    for config in lambda_configs:
        stored = config.get("function")
        if isinstance(stored, dict) and stored.get("class_name") == "function":
            found.append((config.get("name", "?"), stored.get("config"), stored.get("module")))
    return found
