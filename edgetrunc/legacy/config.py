"""Reading a saved model's config without running anything, and scanning it.

`read_model_config` returns the format and the model config of a Keras 3 `.keras` archive,
a `.keras` written by tf.keras 2, a full-model `.h5` or a tf.keras 2 SavedModel folder (its
`keras_metadata.pb`, read as plain protobuf wire format). Every file is checked against the
limits below before its config is read: a `.keras` archive from its zip central directory
alone, an `.h5` model_config from its attribute's size, and any config JSON for its nesting
depth before it is parsed. `find_lambda_configs`, `count_stored_functions` and
`functions_stored_by_name` scan a config for the Python code it would run on load;
`config_dicts` walks every dict of a config, nested models included.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

from edgetrunc._io import require_file
from edgetrunc.errors import InputError

LEGACY_SUFFIXES = (".keras", ".h5", ".hdf5")

FORMAT_NAMES = {"keras": "Keras 3 .keras file", "tf-keras": "tf.keras 2 .keras file",
                "h5": "legacy .h5 file", "savedmodel": "tf.keras 2 SavedModel folder"}

# Limits a model file must pass before anything in it is read (any real model passes them).
MAX_CONFIG_BYTES = 64 << 20  # a model config (config.json, an .h5's model_config); real: KiB-MiB
MAX_METADATA_BYTES = 256 << 20  # a SavedModel's keras_metadata.pb (the config + per-object notes)
MAX_CONFIG_DEPTH = 200  # JSON nesting levels of a config; Keras configs nest about 10-40 deep
MAX_ARCHIVE_BYTES = 4 << 30  # a .keras archive's members, uncompressed (a TFLite model is < 2 GiB)
MAX_ARCHIVE_MEMBERS = 10_000  # Keras writes config.json, metadata.json, model.weights.h5, assets
MAX_ARCHIVE_EXPANSION = 100  # uncompressed / file size, above ARCHIVE_EXPANSION_FLOOR: Keras
ARCHIVE_EXPANSION_FLOOR = 256 << 20  # stores members uncompressed (as Keras's own bomb check)


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
        with zipfile.ZipFile(check_keras_archive(path)) as archive:
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


def _size(count: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if count >= 1 << shift:
            return f"{count / (1 << shift):.3g} {unit}"
    return f"{count} bytes"


def _declared_member_count(path, file_size) -> int | None:
    """The member count a zip's end-of-central-directory record declares (zip64 too), read
    before `zipfile` builds its list of every member; None when there is no such record."""
    with open(path, "rb") as stream:
        tail_size = min(file_size, 22 + 0xFFFF)
        stream.seek(file_size - tail_size)
        tail = stream.read(tail_size)
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) < at + 22:
            return None
        count = int.from_bytes(tail[at + 10:at + 12], "little")
        locator = tail[at - 20:at] if at >= 20 else b""
        if count == 0xFFFF and locator[:4] == b"PK\x06\x07":  # zip64: the count is further up
            stream.seek(int.from_bytes(locator[8:16], "little"))
            record = stream.read(56)
            if record[:4] == b"PK\x06\x06" and len(record) == 56:
                count = int.from_bytes(record[32:40], "little")
        return count


def check_keras_archive(path) -> Path:
    """Refuse a `.keras` zip archive over the limits, from its central directory alone
    (nothing is extracted): member count, member names (no `..`, no absolute path), the
    uncompressed size of config.json / metadata.json and of all members together. Returns
    `path`; raises InputError naming the file and the limit."""
    path = Path(path)
    file_size = path.stat().st_size
    declared = _declared_member_count(path, file_size)
    if declared is not None and declared > MAX_ARCHIVE_MEMBERS:
        raise InputError(f"{path}: the .keras archive declares {declared} members, over the "
                         f"limit of {MAX_ARCHIVE_MEMBERS}; refusing to read it")
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
    if len(members) > MAX_ARCHIVE_MEMBERS:
        raise InputError(f"{path}: the .keras archive holds {len(members)} members, over the "
                         f"limit of {MAX_ARCHIVE_MEMBERS}; refusing to read it")
    _check_member_kinds(path, members)
    total = 0
    for member in members:
        name = member.filename
        parts = re.split(r"[/\\]", name)
        if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name) or ".." in parts \
                or "\0" in name:
            raise InputError(f"{path}: the .keras archive has a member named {name!r}, outside "
                             "the archive (absolute or with '..'); refusing to read it")
        limit = MAX_CONFIG_BYTES if name in ("config.json", "metadata.json") else None
        if limit is not None and member.file_size > limit:
            raise InputError(f"{path}: its {name} expands to {_size(member.file_size)}, over "
                             f"the {_size(limit)} limit for a model config; refusing to read it")
        total += member.file_size
    if total > MAX_ARCHIVE_BYTES:
        raise InputError(f"{path}: the .keras archive expands to {_size(total)}, over the "
                         f"{_size(MAX_ARCHIVE_BYTES)} limit; refusing to read it")
    if total > ARCHIVE_EXPANSION_FLOOR and total > MAX_ARCHIVE_EXPANSION * file_size:
        raise InputError(f"{path}: the .keras archive expands to {_size(total)} from "
                         f"{_size(file_size)}, over {MAX_ARCHIVE_EXPANSION} times its size "
                         "(a decompression bomb?); refusing to read it")
    return path


def _check_member_kinds(path, members) -> None:
    """Refuse members that would collide when extracted: a name given twice, or one name
    both a file and a folder (`config.json/`, `config.json/x` beside or instead of the file
    Keras reads), which makes Keras fail half-way and leave its temporary folder behind."""
    files = [m.filename for m in members if not m.is_dir()]
    seen, reserved = set(files), {"config.json", "metadata.json", "model.weights.h5"}
    if len(seen) != len(files):
        raise InputError(f"{path}: the .keras archive names a member twice; refusing to read it")
    for member in members:
        parts = member.filename.rstrip("/").split("/")
        folders = ["/".join(parts[:i]) for i in range(1, len(parts) + (1 if member.is_dir() else 0))]
        clash = [f for f in folders if f in seen or f in reserved]
        if clash:
            raise InputError(f"{path}: the .keras archive has a member {member.filename!r} that "
                             f"makes {clash[0]!r} a folder; refusing to read it")


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
            text = _read_h5_config(path, handle)
    except (OSError, MemoryError) as exc:
        raise InputError(f"{path}: corrupt HDF5 file ({exc})") from None
    if text is None:
        raise InputError(f"{path}: HDF5 file without a model config (weights only?); expected "
                         "a full model saved with model.save('*.h5'); to use these weights, "
                         "build the model in code, call model.load_weights on this file and "
                         "save it with model.save('model.keras')")
    return _parse_config(path, text)


def _read_h5_config(path, handle):
    """An `.h5`'s model_config attribute, its size checked before it is read: a fixed-size
    attribute by its storage size, a variable-length string (as Keras writes it) once read,
    which HDF5 reads from the file's own bytes (attributes are never compressed)."""
    if "model_config" not in handle.attrs:
        return None
    attribute = handle.attrs.get_id("model_config")
    stored, items = attribute.get_storage_size(), attribute.shape
    count = 1
    for extent in items or ():
        count *= extent
    if stored > MAX_CONFIG_BYTES or count > 1:
        raise InputError(f"{path}: its model_config attribute holds {_size(stored)} in {count} "
                         f"item(s), over the {_size(MAX_CONFIG_BYTES)} limit for a model config "
                         "(one string); refusing to read it")
    text = handle.attrs.get("model_config")
    if hasattr(text, "tolist") and not isinstance(text, (str, bytes)):
        text = text.tolist()
    if isinstance(text, (str, bytes)) and len(text) > MAX_CONFIG_BYTES:
        raise InputError(f"{path}: its model_config is {_size(len(text))}, over the "
                         f"{_size(MAX_CONFIG_BYTES)} limit for a model config; refusing to read it")
    return text


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
    size = metadata_file.stat().st_size
    if size > MAX_METADATA_BYTES:
        raise InputError(f"{metadata_file}: {_size(size)}, over the {_size(MAX_METADATA_BYTES)} "
                         "limit for Keras metadata; refusing to read it")
    try:
        # SavedMetadata {repeated SavedObject nodes = 1}; SavedObject {node_path = 3, metadata = 5}
        for number, node in _protobuf_fields(metadata_file.read_bytes()):
            fields = dict(_protobuf_fields(node)) if number == 1 else {}
            if fields.get(3) == b"root":
                text = checked_json_text(path, fields.get(5, b"{}"), "SavedModel Keras metadata")
                metadata = json.loads(text)
                break
        else:
            metadata = {}
    except InputError:
        raise
    except (ValueError, IndexError, UnicodeDecodeError, RecursionError):
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


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


def json_depth(data: bytes) -> int:
    """How deep the arrays and objects of a JSON text nest, counted without parsing it (so
    a parser that recurses is never given more than `MAX_CONFIG_DEPTH` levels)."""
    import numpy as np

    codes = np.frombuffer(_JSON_STRING.sub(b'""', data), np.uint8)
    opens = (codes == ord("{")) | (codes == ord("["))
    brackets = opens | (codes == ord("}")) | (codes == ord("]"))
    steps = np.where(opens[brackets], 1, -1).astype(np.int64)
    return int(np.cumsum(steps).max()) if steps.size else 0


def checked_json_text(path, text, what="model config") -> str:
    """`text` (str or bytes) as a str for `json.loads`, refused with one line naming the file
    and the limit when it is over `MAX_CONFIG_BYTES` or nests deeper than `MAX_CONFIG_DEPTH`."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    if len(data) > MAX_CONFIG_BYTES:
        raise InputError(f"{path}: its {what} is {_size(len(data))}, over the "
                         f"{_size(MAX_CONFIG_BYTES)} limit; refusing to read it")
    depth = json_depth(data)
    if depth > MAX_CONFIG_DEPTH:
        raise InputError(f"{path}: its {what} nests {depth} levels deep, over the limit of "
                         f"{MAX_CONFIG_DEPTH}; refusing to read it")
    return text if isinstance(text, str) else data.decode("utf-8", "replace")


def _parse_config(path, text) -> dict:
    text = checked_json_text(path, text)
    try:
        config = json.loads(text)
    except (ValueError, RecursionError):
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


def references_to(tree, name):
    """Every `[name, node, tensor, ...]` list inside `tree` that refers to layer `name`
    (Keras 2 inbound links and Keras 3 histories alike)."""
    found = []
    for value in (tree if isinstance(tree, list) else tree.values()
                  if isinstance(tree, dict) else []):
        if isinstance(value, list) and len(value) >= 3 and value[0] == name \
                and isinstance(value[1], int) and isinstance(value[2], int):
            found.append(value)
        elif isinstance(value, (list, dict)):
            found.extend(references_to(value, name))
    return found
