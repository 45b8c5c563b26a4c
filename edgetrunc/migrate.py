"""Migration of legacy `Lambda` truncations to the `Truncation` layer (`edgetrunc migrate`).

This module owns the whole migration: it reads a legacy `.keras` or `.h5` file's config
without running anything to find its `Lambda` layers, refuses to load them unless the
caller trusts the file (a saved lambda is Python bytecode that runs on load), then loads
it with the globals such code expects (`tf`, `keras`, `K`, `np`), probes every `Lambda`
by behaviour to decide whether it computes `clip(x, lower, upper)` and with which
gradient, replaces each clip-like one by a `Truncation` of the same name (every other
layer and weight kept as is), verifies the result against the original, writes it
atomically and reports the TFLite op inventory before and after.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import dataclasses
import dis
import io
import json
import marshal
import math
import types
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np

from edgetrunc import _log
from edgetrunc._io import atomic_path, require_file
from edgetrunc.errors import CheckFailed, InputError

LEGACY_SUFFIXES = (".keras", ".h5", ".hdf5")
VERIFY_SIDE = 256
VERIFY_BATCH = 2
HUGE_INPUT_SCALE = 1e7
CANCELLATION_NOTE = (
    "the legacy x + stop_gradient(clip(x) - x) loses the bound to float cancellation "
    "when |x| is much larger than the bound (off by up to one ulp of x, e.g. 4.0 "
    "instead of 3.0 at x = 3e7); Truncation returns the exact clip"
)

FORMAT_NAMES = {"keras": "Keras 3 .keras file", "tf-keras": "tf.keras 2 .keras file",
                "h5": "legacy .h5 file", "savedmodel": "tf.keras 2 SavedModel folder"}

VERDICT_CLIP = "clip"
VERDICT_NOT_CLIP = "not-clip"
VERDICT_OTHER_GRADIENT = "clip-other-gradient"


# --------------------------------------------------------------------------- config scan


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


def require_keras_file(path, suffixes=(".keras",)) -> Path:
    """`require_model_file` where a legacy `.h5` that is not accepted names `edgetrunc migrate`."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5") and suffix not in suffixes and path.is_file():
        read_model_config(path)  # a weights-only or corrupt file says so first
        raise InputError(f"{path}: a legacy {path.suffix} model; convert it to .keras first: "
                         f"edgetrunc migrate {path} --out NEW.keras")
    return require_model_file(path, suffixes)


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
    return "h5", _parse_config(path, text)


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


def _config_dicts(node):
    """Every dict inside a model config, depth first (nested models included)."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _config_dicts(value)
    elif isinstance(node, list):
        for value in node:
            yield from _config_dicts(value)


def _is_lambda_layer(node) -> bool:
    return node.get("class_name") == "Lambda" and isinstance(node.get("config"), dict)


def find_lambda_configs(config) -> list[dict]:
    """Every `Lambda` layer config in a model config (nested models included)."""
    return [node["config"] for node in _config_dicts(config) if _is_lambda_layer(node)]


def count_stored_functions(config) -> int:
    """How many Python functions the config stores as bytecode (each runs on load)."""
    return sum(
        1 for node in _config_dicts(config)
        if node.get("class_name") == "__lambda__"
        or (_is_lambda_layer(node) and isinstance(node["config"].get("function"), list))
    )


def _stored_code_objects(lambda_config):
    """The code objects of a Lambda config's stored functions (decoding runs nothing)."""
    for key in ("function", "output_shape"):
        stored = lambda_config.get(key)
        code = None
        if isinstance(stored, dict) and stored.get("class_name") == "__lambda__":
            code = stored.get("config", {}).get("code")
        elif key == "function" and isinstance(stored, list) and stored:
            code = stored[0]
        if isinstance(code, str):
            yield key, code


def _functions_stored_by_name(lambda_configs):
    found = []
    for config in lambda_configs:
        stored = config.get("function")
        if isinstance(stored, dict) and stored.get("class_name") == "function":
            found.append((config.get("name", "?"), stored.get("config"), stored.get("module")))
    return found


def missing_global_names(lambda_config, namespace) -> set[str]:
    """Global names a stored lambda reads that neither `namespace` nor builtins provide.

    Raises InputError when the bytecode cannot be decoded (saved by another Python).
    """
    missing = set()
    for key, encoded in _stored_code_objects(lambda_config):
        try:
            code = marshal.loads(base64.b64decode(encoded.encode("ascii")))
        except Exception:
            name = lambda_config.get("name", "?")
            raise InputError(
                f"layer '{name}': its {key} bytecode cannot be decoded; it was probably "
                "saved by another Python version (lambdas load only in the Python that saved them)"
            ) from None
        for name in _global_reads(code):
            if name not in namespace and not hasattr(builtins, name):
                missing.add(name)
    return missing


def _global_reads(code):
    for instruction in dis.get_instructions(code):
        if instruction.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
            yield instruction.argval
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _global_reads(const)


# --------------------------------------------------------------------------- layer classes


TRUNCATION_CONFIG_KEYS = ("threshold", "T", "t", "thresh", "truncation", "clip_value", "limit",
                          "bound", "value")
MODEL_CLASSES = ("Functional", "Model", "Sequential")
TF_OP_LAYERS = ("TFOpLambda", "SlicingOpLambda")


@dataclasses.dataclass
class MappedLayer:
    """A layer Keras 3 cannot build, replaced in the config by a `Truncation`."""

    layer: str
    source: str
    lower: float
    upper: float
    gradient: str
    note: str

    def to_dict(self) -> dict:
        return {"layer": self.layer, "verdict": "mapped", "source": self.source,
                "lower": self.lower, "upper": self.upper, "gradient": self.gradient,
                "exact": None, "max_probe_error": None, "max_probe_error_at": None,
                "nonfinite": None, "note": self.note, "replaced": True}


def _layer_name(node) -> str:
    config = node.get("config") if isinstance(node.get("config"), dict) else {}
    return str(node.get("name") or config.get("name") or "?")


def _is_known_class(node) -> bool:
    import keras

    import edgetrunc.layers  # noqa: F401  (registers Truncation)

    name = node["class_name"]
    if name in MODEL_CLASSES or name == "Truncation" or (
            name not in TF_OP_LAYERS and isinstance(getattr(keras.layers, name, None), type)):
        return True
    for key in (node.get("registered_name"), name):
        if key and keras.saving.get_registered_object(key) is not None:
            return True
    module = node.get("module")
    if isinstance(module, str) and module and not module.startswith(("keras", "tf_keras")):
        import importlib

        try:  # Keras 3 imports a class's saved module too
            return isinstance(getattr(importlib.import_module(module), name, None), type)
        except Exception:
            return False
    return False


def parse_truncation_classes(items) -> dict:
    """`["TLU", "Clip=2.5"]` -> `{"TLU": None, "Clip": 2.5}` (a given T overrides the config)."""
    classes = {}
    for item in items or []:
        name, sep, text = str(item).partition("=")
        name = name.strip()
        if not all(part.isidentifier() for part in name.split(">")):
            raise InputError(f"--truncation-class {item}: expected a class name, optionally "
                             "with its threshold, e.g. TLU or TLU=3.0")
        threshold = None
        if sep:
            try:
                threshold = float(text)
            except ValueError:
                threshold = math.nan
            if not (math.isfinite(threshold) and threshold > 0):
                raise InputError(f"--truncation-class {item}: the threshold must be a finite "
                                 "number > 0, e.g. TLU=3.0")
        classes[name] = threshold
    return classes


def _number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _bounds_from_config(class_name, layer, config, threshold):
    """`(lower, upper, which key)` of a user truncation class, from its config or `threshold`."""
    if threshold is not None:
        return -threshold, threshold, "given"
    for low, high in (("lower", "upper"), ("min_value", "max_value"), ("low", "high")):
        lower, upper = _number(config.get(low)), _number(config.get(high))
        if lower is not None and upper is not None and lower < upper:
            return lower, upper, f"{low}/{high}"
    for key in TRUNCATION_CONFIG_KEYS:
        value = _number(config.get(key))
        if value is not None and value > 0:
            return -value, value, key
    keys = ", ".join(sorted(k for k in config if k not in ("name", "trainable", "dtype"))) or "none"
    raise InputError(f"layer '{layer}' (class {class_name}): no threshold in its saved config "
                     f"(keys: {keys}); give it as --truncation-class {class_name}=T")


def _truncation_node(node, lower, upper, gradient, inbound=None):
    """A `Truncation` layer entry with the name, dtype and links of `node`."""
    old = node.get("config") if isinstance(node.get("config"), dict) else {}
    config = {"name": _layer_name(node), "trainable": old.get("trainable", True),
              "dtype": old.get("dtype", "float32"), "gradient": gradient}
    if lower == -upper:
        config.update(threshold=upper)
    else:
        config.update(threshold=None, lower=lower, upper=upper)
    new = {key: value for key, value in node.items()
           if key not in ("class_name", "config", "module", "registered_name")}
    new.update(class_name="Truncation", config=config)
    if "module" in node or "registered_name" in node:
        new.update(module="edgetrunc.layers", registered_name="edgetrunc>Truncation")
    if inbound is not None:
        new["inbound_nodes"] = inbound
    return new


def _first_reference(inbound_nodes):
    """`(name, node index, tensor index, kwargs)` of a layer's only call, or None."""
    if not isinstance(inbound_nodes, list) or len(inbound_nodes) != 1:
        return None
    node = inbound_nodes[0]
    if isinstance(node, list) and node and isinstance(node[0], list):
        if len(node) != 1:
            return None
        node = node[0]
    if isinstance(node, list) and len(node) >= 3 and isinstance(node[0], str):
        kwargs = node[3] if len(node) > 3 and isinstance(node[3], dict) else {}
        return node[0], node[1], node[2], kwargs
    return None


def _tf_op_clip(node):
    """Bounds of a tf.keras 2 `tf.clip_by_value` op layer called with constant bounds."""
    config = node.get("config") or {}
    reference = _first_reference(node.get("inbound_nodes"))
    if config.get("function") != "clip_by_value" or reference is None:
        return None
    lower = _number(reference[3].get("clip_value_min"))
    upper = _number(reference[3].get("clip_value_max"))
    if lower is None or upper is None or not lower < upper:
        return None
    return reference, lower, upper


def _references_to(tree, name):
    """Every `[name, node, tensor, ...]` list inside `tree` that refers to layer `name`."""
    found = []
    for value in (tree if isinstance(tree, list) else tree.values()
                  if isinstance(tree, dict) else []):
        if isinstance(value, list) and len(value) >= 3 and value[0] == name \
                and isinstance(value[1], int) and isinstance(value[2], int):
            found.append(value)
        elif isinstance(value, (list, dict)):
            found.extend(_references_to(value, name))
    return found


def _fuse_min_max(layers, model_config, index, node):
    """`tf.maximum(x, a)` then `tf.minimum(., b)` (either order) -> one Truncation(a, b)."""
    config = node.get("config") or {}
    first = _first_reference(node.get("inbound_nodes"))
    if config.get("function") not in ("math.maximum", "math.minimum") or first is None:
        return None
    name = _layer_name(node)
    users = [other for other in layers if other is not node
             and _references_to(other.get("inbound_nodes", []), name)]
    outputs = _references_to(model_config.get("output_layers", []), name)
    if len(users) != 1 or outputs:
        return None
    second_node = users[0]
    second = _first_reference(second_node.get("inbound_nodes"))
    pair = {config.get("function"), (second_node.get("config") or {}).get("function")}
    if second is None or second[0] != name or pair != {"math.maximum", "math.minimum"}:
        return None
    a, b = _number(first[3].get("y")), _number(second[3].get("y"))
    if a is None or b is None:
        return None
    lower, upper = (a, b) if config["function"] == "math.maximum" else (b, a)
    if not lower < upper:
        return None
    return first, second_node, lower, upper


def map_config_layers(config, truncation_classes=None):
    """Replace layers Keras 3 cannot build by `Truncation` where that is exact or asked for.

    tf.keras 2 op layers (`TFOpLambda`) of `tf.clip_by_value(x, a, b)` and of
    `tf.minimum(tf.maximum(x, a), b)` with constant bounds are exact clips and become
    `Truncation(lower=a, upper=b, gradient="clip")`. A layer of a class named in
    `truncation_classes` (`{class name: threshold or None}`) becomes a `Truncation` whose
    bounds come from its saved config (`threshold`, `T`, `lower`/`upper`, ...) or the given
    threshold. Any other class Keras 3 does not know raises InputError naming it.
    Returns `(new config, [MappedLayer])`; `config` itself is not changed.
    """
    config = json.loads(json.dumps(config))
    truncation_classes = dict(truncation_classes or {})
    mapped, unknown, used = [], [], set()
    for model_config in [d for d in _config_dicts(config) if isinstance(d.get("layers"), list)]:
        layers = model_config["layers"]
        index = 0
        while index < len(layers):
            node = layers[index]
            index += 1
            if not isinstance(node, dict) or not isinstance(node.get("class_name"), str):
                continue
            class_name, name = node["class_name"], _layer_name(node)
            # a registered Keras 2 class is saved as "Package>Name": "Name" also matches it
            asked = next((c for c in (class_name, class_name.rsplit(">", 1)[-1])
                          if c in truncation_classes), None)
            if asked is not None:
                used.add(asked)
                saved = node.get("config") if isinstance(node.get("config"), dict) else {}
                lower, upper, key = _bounds_from_config(class_name, name, saved,
                                                        truncation_classes[asked])
                layers[index - 1] = _truncation_node(node, lower, upper, "clip")
                mapped.append(MappedLayer(
                    name, f"class {class_name}", lower, upper, "clip",
                    f"class {class_name} mapped by --truncation-class (bounds from "
                    f"{'the option' if key == 'given' else 'its config key ' + repr(key)}); "
                    "its code is not in the file, so its behaviour was not checked"))
                continue
            if class_name != "TFOpLambda":
                if not _is_known_class(node):
                    unknown.append((name, class_name))
                continue
            clip = _tf_op_clip(node)
            if clip is not None:
                reference, lower, upper = clip
                layers[index - 1] = _truncation_node(node, lower, upper, "clip",
                                                     [[list(reference[:3]) + [{}]]])
                mapped.append(MappedLayer(name, "tf.clip_by_value", lower, upper, "clip",
                                          "tf.keras 2 op layer tf.clip_by_value: an exact clip"))
                continue
            pair = _fuse_min_max(layers, model_config, index - 1, node)
            if pair is not None:
                first, second_node, lower, upper = pair
                second_name = _layer_name(second_node)
                layers[index - 1] = _truncation_node(node, lower, upper, "clip",
                                                     [[list(first[:3]) + [{}]]])
                layers.remove(second_node)
                for reference in _references_to(
                        [layers, model_config.get("output_layers", [])], second_name):
                    reference[0] = name
                mapped.append(MappedLayer(name, f"tf.maximum + tf.minimum ({second_name})",
                                          lower, upper, "clip",
                                          "tf.keras 2 op layers tf.maximum/tf.minimum: an "
                                          "exact clip"))
                continue
            unknown.append((name, f"TFOpLambda tf.{(node.get('config') or {}).get('function')}"))
    missing = sorted(set(truncation_classes) - used)
    if missing:
        raise InputError(f"--truncation-class {missing[0]}: no layer of class {missing[0]} in "
                         "the model")
    if unknown:
        raise UnknownLayerClass(unknown)
    return config, mapped


class UnknownLayerClass(InputError):
    """Layers whose class Keras 3 cannot build; `layers` lists `(name, class)`."""

    def __init__(self, layers):
        self.layers = layers
        name, class_name = layers[0]
        more = f" (and {len(layers) - 1} more)" if len(layers) > 1 else ""
        if class_name.startswith("TFOpLambda"):
            what = (f"layer '{name}'{more} is a tf.keras 2 op layer ({class_name[11:]}), "
                    "which Keras 3 cannot rebuild (only tf.clip_by_value and tf.minimum/"
                    "tf.maximum clips are mapped); rewrite it as a Keras layer and re-save")
        else:
            what = (f"layer '{name}'{more} is of class '{class_name}', which Keras 3 does not "
                    "know (a class of the code that saved the file; its code is not in the "
                    f"file); if it is a truncation (clip to [-T, T]) give --truncation-class "
                    f"{class_name.rsplit('>', 1)[-1]} to edgetrunc migrate, otherwise load it "
                    "where the class is importable")
        super().__init__(what)


# --------------------------------------------------------------------------- lambda globals


class LegacyBackend:
    """`K` for saved lambdas: the Keras 2 backend names old code uses, on top of `keras.ops`.

    Names not defined here come from `keras.ops`, then `keras.backend`. `switch` accepts
    callables and a condition of lower rank, as the Keras 2 backend did.
    """

    def __getattr__(self, name):
        import keras

        for source in (keras.ops, keras.backend):
            if hasattr(source, name):
                return getattr(source, name)
        raise AttributeError(f"K.{name} is not available in Keras 3 "
                             "(this K covers keras.ops and keras.backend)")

    @staticmethod
    def switch(condition, then_expression, else_expression):
        from keras import ops

        then_value = then_expression() if callable(then_expression) else then_expression
        else_value = else_expression() if callable(else_expression) else else_expression
        condition = ops.convert_to_tensor(condition)
        target_rank = max(len(ops.shape(then_value)), len(ops.shape(else_value)))
        while len(condition.shape) < target_rank:
            condition = ops.expand_dims(condition, -1)
        return ops.where(condition, then_value, else_value)

    @staticmethod
    def clip(x, min_value=None, max_value=None):
        from keras import ops

        if min_value is None and max_value is None:
            return x
        if max_value is not None and min_value is not None and max_value < min_value:
            max_value = min_value
        if min_value is None:
            return ops.minimum(x, max_value)
        if max_value is None:
            return ops.maximum(x, min_value)
        return ops.clip(x, min_value, max_value)

    @staticmethod
    def int_shape(x):
        return tuple(x.shape)

    @staticmethod
    def pow(x, a):
        from keras import ops

        return ops.power(x, a)

    @staticmethod
    def permute_dimensions(x, pattern):
        from keras import ops

        return ops.transpose(x, pattern)

    @staticmethod
    def batch_flatten(x):
        from keras import ops

        return ops.reshape(x, (ops.shape(x)[0], -1))

    @staticmethod
    def l2_normalize(x, axis=None):
        from keras import ops

        return ops.normalize(x, axis=-1 if axis is None else axis, order=2)

    @staticmethod
    def concatenate(tensors, axis=-1):
        from keras import ops

        return ops.concatenate(tensors, axis=axis)


def lambda_globals(extra=None) -> dict:
    """The globals given to rebuilt lambdas: `tf`, `keras`, `K` (also as `backend`), `np`,
    `math` (+ `extra`)."""
    import keras
    import tensorflow as tf

    namespace = {"__builtins__": builtins, "__name__": "edgetrunc_migrated_lambda",
                 "tf": tf, "keras": keras, "K": LegacyBackend(), "backend": LegacyBackend(),
                 "np": np, "math": math}
    namespace.update(extra or {})
    return namespace


@contextlib.contextmanager
def _keras_patched(module_name: str, attribute: str, wrap):
    """While active, Keras's `module_name.attribute` is `wrap(original)`; a no-op if a Keras
    version moved it (the callers then fall back to what they can do after loading)."""
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ImportError:  # pragma: no cover - depends on the Keras layout
        yield
        return
    original = getattr(module, attribute, None)
    if original is None:  # pragma: no cover
        yield
        return
    setattr(module, attribute, wrap(original))
    try:
        yield
    finally:
        setattr(module, attribute, original)


def _lambdas_rebuilt_with(namespace):
    """While active, Keras rebuilds every stored lambda with `namespace` as its globals.

    Keras rebuilds a saved lambda with `python_utils.func_load`, whose default globals
    are that module's own (so `tf` is undefined); this passes `namespace` instead. If a
    Keras version moves it, lambdas are still re-bound after loading.
    """
    def wrap(original):
        def func_load(code, defaults=None, closure=None, globs=None):
            return original(code, defaults=defaults, closure=closure, globs=namespace)
        return func_load

    return _keras_patched("keras.src.utils.python_utils", "func_load", wrap)


def _rebind_lambda_globals(layer, namespace):
    for attribute in ("function", "_output_shape"):
        fn = getattr(layer, attribute, None)
        if isinstance(fn, types.FunctionType) and fn.__name__ == "<lambda>" \
                and fn.__globals__ is not namespace:
            setattr(layer, attribute, types.FunctionType(
                fn.__code__, namespace, fn.__name__, fn.__defaults__, fn.__closure__))


# --------------------------------------------------------------------------- loading


def _one_line(exc) -> str:
    text = " ".join(str(exc).split())
    text = text.replace("\x1b[1m", "").replace("\x1b[0m", "")
    return text if len(text) <= 240 else text[:237] + "..."


def load_model(path, trust_lambda=False, extra_globals=None, truncation_classes=None):
    """Load a `.keras`/`.h5` model; with `trust_lambda`, lambdas get `lambda_globals()`."""
    return load_legacy(path, trust_lambda, extra_globals, truncation_classes)[0]


def load_legacy(path, trust_lambda=False, extra_globals=None, truncation_classes=None):
    """Load a Keras 3 or tf.keras 2 model file; return `(model, format, [MappedLayer])`.

    Layers Keras 3 cannot build are first mapped in the config (`map_config_layers`);
    a `.keras` written by tf.keras 2 is rebuilt from its Keras 2 config and its weights
    file. Any failure is an InputError naming the file.
    """
    import keras

    path = Path(path)
    file_format, config = read_model_config(path)
    try:
        new_config, mapped = map_config_layers(config, truncation_classes)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    policies = _keras2_dtype_policies(new_config) if file_format != "keras" else 0
    namespace = lambda_globals(extra_globals) if trust_lambda else None
    rebuilt = _lambdas_rebuilt_with(namespace) if trust_lambda else contextlib.nullcontext()
    links = _keras2_nested_model_links() if file_format != "keras" else contextlib.nullcontext()
    try:
        with _log.stdout_to_stderr(), rebuilt, links:
            if file_format == "tf-keras":
                model = _load_keras2_archive(path, new_config, safe_mode=not trust_lambda)
            elif file_format == "savedmodel":
                model = _load_keras2_savedmodel(path, new_config, safe_mode=not trust_lambda)
            elif mapped or policies:
                model = _load_rewritten(path, file_format, new_config, safe_mode=not trust_lambda)
            else:
                model = keras.saving.load_model(path, compile=False, safe_mode=not trust_lambda,
                                                custom_objects=_custom_objects())
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: cannot load the model ({_one_line(exc)})") from None
    if not isinstance(model, keras.Model):
        raise InputError(f"{path}: holds a {type(model).__name__}, expected a Keras model")
    if trust_lambda:
        for layer, _ in lambda_layers(model):
            _rebind_lambda_globals(layer, namespace)
    return _plain_single_input(model), file_format, mapped


def _plain_single_input(model):
    """The same model called with a tensor, not a one-item list (Keras 2 configs list it)."""
    import keras
    from keras.src.models.functional import Functional

    if type(model) is not Functional or len(model.inputs) != 1 \
            or not isinstance(getattr(model, "_inputs_struct", None), (list, tuple)):
        return model
    outputs = model.outputs[0] if len(model.outputs) == 1 else model.outputs
    return keras.Model(model.inputs[0], outputs, name=model.name)


def _keras2_nested_model_links():
    """While active, Keras 3 follows Keras 2 links to nested models.

    A Keras 2 nested model has a built-in node 0, so its first call is node 1; a Keras 3
    model has none. Keras 3 shifts the index when it reads the model's outputs but not
    when it links the next layer to the nested model, so such a file cannot be loaded.
    This shifts it there too.
    """
    def wrap(original):
        from keras.src.models import functional  # imported: _keras_patched found it

        def deserialize_node(node_data, created_layers):
            if isinstance(node_data, list):
                shifted = []
                for item in node_data:
                    if isinstance(item, list) and len(item) >= 3 and isinstance(item[1], int) \
                            and item[1] > 0 and isinstance(created_layers.get(item[0]),
                                                            functional.Functional):
                        item = [item[0], item[1] - 1, *item[2:]]
                    shifted.append(item)
                node_data = shifted
            return original(node_data, created_layers)
        return deserialize_node

    return _keras_patched("keras.src.models.functional", "deserialize_node", wrap)


def _keras2_dtype_policies(config) -> int:
    """Write Keras 2 dtype policies (`{"class_name": "Policy", ...}`) as their names, which
    Keras 3 reads (it cannot read the Keras 2 object); return how many were changed."""
    changed = 0
    for node in _config_dicts(config):
        layer_config = node.get("config")
        dtype = layer_config.get("dtype") if isinstance(layer_config, dict) else None
        if isinstance(dtype, dict) and dtype.get("class_name") == "Policy" \
                and isinstance((dtype.get("config") or {}).get("name"), str):
            layer_config["dtype"] = dtype["config"]["name"]
            changed += 1
    return changed


def _custom_objects() -> dict:
    from edgetrunc.layers import Truncation

    return {"Truncation": Truncation}


def _load_rewritten(path, file_format, config, safe_mode):
    """Load a copy of `path` whose model config is `config` (the input is not touched)."""
    import shutil
    import tempfile

    import keras

    with tempfile.TemporaryDirectory(prefix="edgetrunc-migrate-") as tmp:
        copy = Path(tmp) / f"model{'.h5' if file_format == 'h5' else '.keras'}"
        if file_format == "h5":
            import h5py

            shutil.copyfile(path, copy)
            with h5py.File(copy, "r+") as handle:
                handle.attrs["model_config"] = json.dumps(config)
        else:
            with zipfile.ZipFile(path) as source, zipfile.ZipFile(copy, "w") as target:
                for name in source.namelist():
                    target.writestr(name, json.dumps(config).encode() if name == "config.json"
                                    else source.read(name))
        return keras.saving.load_model(copy, compile=False, safe_mode=safe_mode,
                                       custom_objects=_custom_objects())


def _model_from_keras2_config(path, config, safe_mode):
    """Build a model (fresh weights) from a Keras 2 config, as Keras 3 reads a `.h5`."""
    try:
        from keras.src.legacy.saving import saving_options, saving_utils
        from keras.src.saving import serialization_lib
    except ImportError:  # pragma: no cover - depends on the Keras layout
        raise InputError(f"{path}: a tf.keras 2 file, which this Keras version cannot read; "
                         "re-save it with model.save('model.h5') in tf.keras 2") from None
    config = json.loads(json.dumps(config))
    for node in _config_dicts(config):
        if "class_name" in node:
            node.pop("module", None)
            node.pop("registered_name", None)
    with saving_options.keras_option_scope(use_legacy_config=True), \
            serialization_lib.SafeModeScope(safe_mode):
        return saving_utils.model_from_config(config, custom_objects=_custom_objects())


def _load_keras2_savedmodel(path, config, safe_mode):
    """Rebuild a tf.keras 2 SavedModel: its Keras 2 config, then its checkpoint's weights.

    tf.keras 2 tracks a model's weights as `layer_with_weights-<i>/<name>`, `i` counting
    the layers that have weights, in order (nested models inside); the checkpoint's object
    graph maps each such path to the key its value is stored under.
    """
    import keras
    import tensorflow as tf
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    model = _model_from_keras2_config(path, config, safe_mode)
    try:
        reader = tf.train.load_checkpoint(str(path / "variables" / "variables"))
        graph = trackable_object_graph_pb2.TrackableObjectGraph()
        graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    except Exception as exc:
        raise InputError(f"{path}: the SavedModel's variables cannot be read "
                         f"({_one_line(exc)})") from None

    def key_of(names):
        node = graph.nodes[0]
        for name in names:
            ids = [child.node_id for child in node.children if child.local_name == name]
            if not ids:
                return None
            node = graph.nodes[ids[0]]
        keys = [a.checkpoint_key for a in node.attributes if a.name == "VARIABLE_VALUE"]
        return keys[0] if keys else None

    skipped = ("_CHECKPOINTABLE_OBJECT_GRAPH", "optimizer/", "keras_api/", "save_counter/")
    stored = {key for key in reader.get_variable_to_shape_map() if not key.startswith(skipped)}
    used = set()

    def assign(layers, prefix):
        for index, layer in enumerate(lay for lay in layers if lay.weights):
            here = [*prefix, f"layer_with_weights-{index}"]
            if isinstance(layer, keras.Model):
                assign(layer.layers, here)
                continue
            for variable in layer.weights:
                key = key_of([*here, variable.name])
                if key is None or key not in stored:
                    raise InputError(f"{path}: no saved value for weight '{variable.path}' "
                                     f"(expected at {'/'.join([*here, variable.name])})")
                value = reader.get_tensor(key)
                if tuple(value.shape) != tuple(variable.shape):
                    raise InputError(f"{path}: weight '{variable.path}' is saved with shape "
                                     f"{list(value.shape)}, the model needs {list(variable.shape)}")
                variable.assign(value)
                used.add(key)

    assign(model.layers, [])
    if used != stored:
        raise InputError(f"{path}: {len(stored - used)} saved weight(s) match no layer "
                         f"(e.g. {sorted(stored - used)[0]})")
    return model


def _load_keras2_archive(path, config, safe_mode):
    """Rebuild a tf.keras 2 `.keras` file: its Keras 2 config, then its weights file."""
    import tempfile

    import h5py

    model = _model_from_keras2_config(path, config, safe_mode)
    with tempfile.TemporaryDirectory(prefix="edgetrunc-migrate-") as tmp:
        weights = Path(tmp) / "model.weights.h5"
        with zipfile.ZipFile(path) as archive:
            if "model.weights.h5" not in archive.namelist():
                raise InputError(f"{path}: tf.keras 2 .keras archive without model.weights.h5")
            weights.write_bytes(archive.read("model.weights.h5"))
        with h5py.File(weights, "r") as handle:
            stored = []
            handle.visititems(lambda name, item: stored.append(name)
                              if isinstance(item, h5py.Dataset) and name.startswith("layers/")
                              else None)
        if len(stored) != len(model.weights):
            raise InputError(f"{path}: its weights file holds {len(stored)} arrays for "
                             f"{len(model.weights)} model weights; cannot match them")
        model.load_weights(weights)
    return model


def _is_graph_model(model) -> bool:
    import keras
    from keras.src.models.functional import Functional

    return isinstance(model, (Functional, keras.Sequential))


def lambda_layers(model, prefix="") -> list:
    """`(layer, path)` of every Lambda in a model, nested Functional/Sequential included."""
    import keras

    found, seen = [], set()
    for layer in model.layers:
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        path = f"{prefix}{layer.name}"
        if isinstance(layer, keras.layers.Lambda):
            found.append((layer, path))
        elif isinstance(layer, keras.Model) and _is_graph_model(layer):
            found.extend(lambda_layers(layer, prefix=f"{path}/"))
    return found


# --------------------------------------------------------------------------- probing


@dataclasses.dataclass
class LambdaVerdict:
    """What probing one Lambda found: is it a clip, with which bounds and gradient."""

    layer: str
    verdict: str
    lower: float | None = None
    upper: float | None = None
    gradient: str | None = None
    exact: bool | None = None
    max_probe_error: float | None = None
    max_probe_error_at: float | None = None
    nonfinite: dict | None = None
    note: str = ""

    @property
    def is_clip(self) -> bool:
        return self.verdict == VERDICT_CLIP

    def truncation_kwargs(self) -> dict:
        if self.lower == -self.upper:
            return {"threshold": self.upper, "gradient": self.gradient}
        return {"lower": self.lower, "upper": self.upper, "gradient": self.gradient}

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["replaced"] = self.is_clip
        return data


class _NotClip(Exception):
    pass


def _as_number(value: float) -> float | str:
    value = float(value)
    return value if math.isfinite(value) else repr(value)


def _shortest(value, dtype) -> float:
    """The shortest decimal that rounds to the same `dtype` value (3.0, 0.1, ...)."""
    return float(str(np.dtype(dtype).type(value)))


class _LambdaProbe:
    """Runs one Lambda layer on arranged test tensors of its own input shape."""

    def __init__(self, layer):
        spec = layer.input
        if isinstance(spec, (list, tuple, dict)):
            raise _NotClip("takes several inputs")
        self.layer = layer
        self.shape = tuple(spec.shape)
        self.dtype = np.dtype(layer.compute_dtype)
        if self.dtype.kind != "f":
            raise _NotClip(f"computes in {self.dtype}, not a float type")

    def arrange(self, values, extra_batch=0, free_dim=4):
        per_sample = [d if d is not None else free_dim for d in self.shape[1:]]
        per_size = int(np.prod(per_sample)) if per_sample else 1
        batch = max(1, -(-len(values) // per_size)) + extra_batch
        return np.resize(np.asarray(values, self.dtype), batch * per_size).reshape(
            (batch, *per_sample))

    def run(self, values, extra_batch=0, free_dim=4):
        from keras import ops

        data = self.arrange(values, extra_batch, free_dim)
        try:
            out = self.layer(ops.convert_to_tensor(data))
            out = np.asarray(ops.convert_to_numpy(out))
        except Exception as exc:
            raise _NotClip(f"fails on probe tensors ({type(exc).__name__}: {_one_line(exc)})") \
                from None
        if out.shape != data.shape:
            raise _NotClip(f"changes the shape {data.shape} -> {out.shape}")
        return out.reshape(-1)[: len(values)].astype(self.dtype)

    def gradient(self, values):
        import tensorflow as tf

        data = tf.constant(self.arrange(values))
        with tf.GradientTape() as tape:
            tape.watch(data)
            out = tf.reduce_sum(tf.cast(self.layer(data), tf.float32))
        grad = tape.gradient(out, data)
        if grad is None:
            return None
        return np.asarray(grad).reshape(-1)[: len(values)].astype(np.float64)


def _truncated(values, lower, upper):
    """What `Truncation(lower=..., upper=...)` returns for `values`, on this backend
    (so denormal flushing and NaN handling match the layer that replaces the Lambda)."""
    from keras import ops

    from edgetrunc.layers import truncate

    x = ops.convert_to_tensor(values)
    return np.asarray(ops.convert_to_numpy(
        truncate(x, ops.cast(lower, x.dtype), ops.cast(upper, x.dtype))))


def _probe_grid(dtype):
    top = int(math.floor(math.log10(float(np.finfo(dtype).max))))
    magnitudes = [m * 10.0 ** k for k in range(-4, top) for m in (1, 2, 3, 5)]
    grid = np.array(sorted({s * v for s in (-1, 1) for v in magnitudes} | {0.0}))
    grid = grid.astype(dtype)
    return grid[np.isfinite(grid)]


def _tolerance(x, dtype):
    return 4 * np.spacing(np.abs(x).astype(dtype)).astype(np.float64) + float(
        np.finfo(dtype).tiny)


def _describe(probe) -> str:
    points = np.array([-1000, -1, 0, 1, 1000], dtype=probe.dtype)
    try:
        values = probe.run(points)
    except _NotClip as exc:
        return str(exc)
    return (f"f({', '.join(f'{v:g}' for v in points)}) = "
            f"({', '.join(f'{v:g}' for v in values)})")


def _refined_bound(probe, rough, side):
    """Re-read a saturation value from an input within 2x of it (no cancellation)."""
    if rough > 0:
        x = rough * (1.5 if side > 0 else 0.5)
    elif rough < 0:
        x = rough * (0.5 if side > 0 else 1.5)
    else:
        x = side * 1e-3
    return float(probe.run(np.array([x], probe.dtype))[0])


def _verification_points(lower, upper, dtype, rng):
    width = upper - lower
    scale = max(abs(lower), abs(upper), width)
    near = [lower, upper]
    for bound in (lower, upper):
        near += [np.nextafter(np.asarray(bound, dtype), np.asarray(np.inf, dtype)),
                 np.nextafter(np.asarray(bound, dtype), np.asarray(-np.inf, dtype)),
                 bound - 1e-3 * width, bound + 1e-3 * width,
                 bound - 0.5 * width, bound + 0.5 * width]
    points = np.concatenate([
        _probe_grid(dtype),
        np.array(near, dtype=np.float64),
        rng.uniform(lower, upper, 512),
        rng.uniform(lower - 2 * width, upper + 2 * width, 512),
        rng.normal(0, 1, 256) * scale * np.array([0.5, 2, 10, 1e4])[rng.integers(0, 4, 256)],
    ])
    with np.errstate(over="ignore"):
        points = points.astype(dtype)
    return points[np.isfinite(points)]


def probe_lambda(layer, name=None, seed=0) -> LambdaVerdict:
    """Decide by behaviour whether `layer` computes clip(x, lower, upper), and its gradient.

    The layer runs on its own input shape (free dimensions filled in) at values inside,
    near and far outside the bounds, of both signs, arranged in two shapes and orders;
    the bounds are read from where it saturates and verified on every point. Errors up
    to about one ulp of x (the float cancellation of `x + stop_gradient(clip(x) - x)`)
    are tolerated and reported; anything larger makes it not a clip.
    """
    name = name or layer.name
    try:
        probe = _LambdaProbe(layer)
    except _NotClip as exc:
        return LambdaVerdict(name, VERDICT_NOT_CLIP, note=str(exc))
    try:
        return _probe(probe, name, np.random.default_rng(seed))
    except _NotClip as exc:
        return LambdaVerdict(name, VERDICT_NOT_CLIP, note=f"{exc}; {_describe(probe)}")


def _probe(probe, name, rng):
    dtype = probe.dtype
    grid = _probe_grid(dtype)
    y = probe.run(grid).astype(np.float64)
    x = grid.astype(np.float64)
    if not np.all(np.isfinite(y)):
        raise _NotClip("returns inf or NaN for finite inputs")
    tol = _tolerance(grid, dtype)
    above = np.flatnonzero(y < x - tol)
    below = np.flatnonzero(y > x + tol)
    if above.size == 0:
        raise _NotClip("no upper bound (never saturates above)")
    if below.size == 0:
        raise _NotClip("no lower bound (never saturates below)")
    upper = _refined_bound(probe, y[above[0]], +1)
    lower = _refined_bound(probe, y[below[-1]], -1)
    if not (math.isfinite(lower) and math.isfinite(upper) and lower < upper):
        raise _NotClip("no lower and upper saturation level with f(x) = x between them")
    lower, upper = _shortest(lower, dtype), _shortest(upper, dtype)

    points = _verification_points(lower, upper, dtype, rng)
    got = probe.run(points).astype(np.float64)
    order = rng.permutation(points.size)
    again = probe.run(points[order], extra_batch=1, free_dim=5).astype(np.float64)
    unshuffled = np.empty_like(again)
    unshuffled[order] = again
    if not np.allclose(unshuffled, got, rtol=1e-6, atol=0, equal_nan=True):
        raise _NotClip("output depends on other elements or on the tensor shape")
    expected = _truncated(points, lower, upper).astype(np.float64)
    error = np.abs(got - expected)
    bound_scale = max(abs(lower), abs(upper))
    allowed = (2 * np.spacing((np.abs(points) + bound_scale).astype(dtype)).astype(np.float64)
               + 2 * float(np.spacing(dtype.type(bound_scale))))
    if np.any(np.isnan(error)) or np.any(error > allowed):
        worst = int(np.nanargmax(np.where(np.isnan(error), np.inf, error - allowed)))
        raise _NotClip(f"f({points[worst]:g}) = {got[worst]:g} where clip(x, {lower:g}, "
                       f"{upper:g}) gives {expected[worst]:g}")
    worst = int(np.argmax(error))
    max_error = float(error[worst])
    exact = max_error == 0.0
    note = ""
    if not exact:
        visible = np.flatnonzero(error >= 0.1 * bound_scale) if bound_scale > 0 else []
        shown = visible[np.argmin(np.abs(points[visible]))] if len(visible) else worst
        note = (f"float cancellation: f({points[shown]:g}) = {got[shown]:g} where clip gives "
                f"{expected[shown]:g}; max error {max_error:g} at x = {points[worst]:g}")

    special = np.array([np.nan, np.inf, -np.inf], dtype)
    legacy = probe.run(special)
    nonfinite = {label: _as_number(value) for label, value in zip(("nan", "inf", "-inf"), legacy)}
    truncation = {"inf": upper, "-inf": lower}
    differs = [f"{k} -> {float(legacy[i]):g} (Truncation: {truncation[k]:g})"
               for i, k in ((1, "inf"), (2, "-inf"))
               if not legacy[i] == dtype.type(truncation[k])]
    if differs:
        note = "; ".join(filter(None, [note, "legacy " + ", ".join(differs)]))

    gradient, gradient_note = _gradient_mode(probe, lower, upper)
    verdict = VERDICT_CLIP if gradient else VERDICT_OTHER_GRADIENT
    if gradient_note:
        note = "; ".join(filter(None, [note, gradient_note]))
    return LambdaVerdict(name, verdict, lower=lower, upper=upper, gradient=gradient, exact=exact,
                         max_probe_error=max_error, max_probe_error_at=float(points[worst]),
                         nonfinite=nonfinite, note=note)


def _gradient_mode(probe, lower, upper):
    """`("ste", "")` for dy/dx = 1 everywhere, `("clip", "")` for 1 inside / 0 outside."""
    width = upper - lower
    inside = lower + width * np.array([0.1, 0.3, 0.5, 0.7, 0.9])
    step = max(1.0, abs(upper), abs(lower))
    outside = np.concatenate([upper + step * np.array([0.5, 2, 100]),
                              lower - step * np.array([0.5, 2, 100])])
    try:
        grad = probe.gradient(np.concatenate([inside, outside]))
    except Exception as exc:
        return None, f"gradient could not be computed ({_one_line(exc)})"
    if grad is None:
        return None, "no gradient flows through it"
    g_in, g_out = grad[: inside.size], grad[inside.size:]
    if np.allclose(g_in, 1, atol=1e-6) and np.allclose(g_out, 1, atol=1e-6):
        return "ste", ""
    if np.allclose(g_in, 1, atol=1e-6) and np.allclose(g_out, 0, atol=1e-6):
        return "clip", ""
    return None, (f"gradient is neither straight-through nor masked (inside {g_in.min():g}.."
                  f"{g_in.max():g}, outside {g_out.min():g}..{g_out.max():g}); kept")


# --------------------------------------------------------------------------- rebuild


def replace_lambdas(model, verdicts: dict):
    """A copy of `model` where every Lambda whose `id` maps to a clip verdict is a Truncation.

    Every other layer is the same object (weights kept, not copied); nested Functional
    and Sequential models are rebuilt the same way.
    """
    import keras

    from edgetrunc.layers import Truncation

    def clone(layer):
        if isinstance(layer, keras.Model) and _is_graph_model(layer):
            return replace_lambdas(layer, verdicts)
        verdict = verdicts.get(id(layer))
        if verdict is None or not verdict.is_clip:
            return layer
        return Truncation(**verdict.truncation_kwargs(), name=layer.name,
                          dtype=layer.dtype_policy)

    def call(layer, *args, **kwargs):
        if isinstance(layer, Truncation):
            return layer(args[0])  # drop the Lambda's mask/training call arguments
        return layer(*args, **kwargs)

    if isinstance(model, keras.Sequential):
        return keras.models.clone_model(model, clone_function=clone)
    return keras.models.clone_model(model, clone_function=clone, call_function=call)


# --------------------------------------------------------------------------- verification


def _sample_shape(shape):
    rank = len(shape)
    dims = [VERIFY_BATCH]
    for axis, dim in enumerate(shape[1:], start=1):
        if dim is not None:
            dims.append(dim)
        elif rank >= 3 and axis == rank - 1:
            dims.append(1)
        else:
            dims.append(VERIFY_SIDE)
    return tuple(dims)


def sample_inputs(model, seed=0) -> dict:
    """Named input sets for `model`: pixel-like, standard normal and huge (x1e7) values."""
    rng = np.random.default_rng(seed)
    sets = {"pixels": [], "normal": [], "huge": []}
    for spec in model.inputs:
        shape = _sample_shape(tuple(spec.shape))
        dtype = np.dtype(spec.dtype)
        pixels = rng.integers(0, 256, shape)
        sets["pixels"].append(pixels.astype(dtype))
        if dtype.kind == "f":
            sets["normal"].append(rng.normal(0, 1, shape).astype(dtype))
            sets["huge"].append((rng.normal(0, 1, shape) * HUGE_INPUT_SCALE).astype(dtype))
    return {name: arrays for name, arrays in sets.items() if len(arrays) == len(model.inputs)}


def _outputs(model, arrays):
    import keras

    import warnings

    feed = arrays[0] if len(arrays) == 1 else arrays
    with warnings.catch_warnings():  # Keras 2 configs list the one input: [x] expected
        warnings.filterwarnings("ignore", message="The structure of `inputs`")
        result = model(feed, training=False)
    return [np.asarray(keras.ops.convert_to_numpy(t), np.float64) for t in keras.tree.flatten(result)]


def _max_diff(a, b) -> float:
    """Largest |a - b| over all outputs; equal values (NaN, inf included) count as 0 and a
    NaN facing a number as inf."""
    worst = 0.0
    for x, y in zip(a, b):
        with np.errstate(invalid="ignore"):
            diff = np.abs(x - y)
        same = (x == y) | (np.isnan(x) & np.isnan(y))
        diff = np.where(same, 0.0, np.where(np.isnan(diff), np.inf, diff))
        worst = max(worst, float(np.max(diff, initial=0.0)))
    return worst


def _finite_max_abs(arrays) -> float:
    return max([float(np.max(np.abs(a[np.isfinite(a)]), initial=0.0)) for a in arrays],
               default=0.0)


class _ActivationCheck:
    """Wraps a legacy Lambda's function: returns its output and records how far it is
    from the exact clip of the activation it received, against the cancellation bound."""

    def __init__(self, fn, lower, upper):
        self.fn, self.lower, self.upper = fn, lower, upper
        self.max_error = 0.0
        self.max_input = 0.0
        self.violations = 0
        self.nonfinite_differences = 0

    def __call__(self, x, **kwargs):
        from keras import ops

        y = self.fn(x, **kwargs)
        xs = np.asarray(ops.convert_to_numpy(x))
        ys = np.asarray(ops.convert_to_numpy(y)).astype(np.float64)
        expected = _truncated(xs, self.lower, self.upper).astype(np.float64)
        finite = np.isfinite(xs)
        with np.errstate(invalid="ignore", over="ignore"):
            error = np.abs(ys - expected)[finite]
            scale = max(abs(self.lower), abs(self.upper))
            allowed = (2 * np.spacing((np.abs(xs[finite]).astype(np.float64) + scale)
                                      .astype(xs.dtype)).astype(np.float64)
                       + 2 * float(np.spacing(xs.dtype.type(scale))))
        self.violations += int(np.sum(~(error <= allowed)))
        self.nonfinite_differences += int(np.sum(~finite & ~np.isnan(xs)
                                                 & (ys != expected)))
        self.max_error = max(self.max_error, float(np.max(error, initial=0.0)))
        self.max_input = max(self.max_input, _finite_max_abs([xs]))
        return y


@contextlib.contextmanager
def _swapped_functions(layers_and_functions):
    saved = [(layer, layer.function) for layer, _ in layers_and_functions]
    try:
        for layer, fn in layers_and_functions:
            layer.function = fn
        yield
    finally:
        for layer, fn in saved:
            layer.function = fn


def _exact_clip(lower, upper):
    from edgetrunc.layers import truncate

    def clip(x, **kwargs):
        from keras import ops

        return truncate(x, ops.cast(lower, x.dtype), ops.cast(upper, x.dtype))

    return clip


def verify_outputs(legacy, migrated, replaced, seed=0) -> dict:
    """Compare the migrated model with the legacy one on sample inputs.

    `replaced` lists `(lambda_layer, verdict)`. Three runs per input set: the legacy model
    as is (each replaced Lambda's output checked against the exact clip of what it
    received), the legacy model with exact clips in place of those Lambdas (must equal
    the migrated model: proves the rebuild kept every layer and weight), and the
    migrated model.
    """
    sets = sample_inputs(legacy, seed)
    checks = {id(layer): _ActivationCheck(layer.function, v.lower, v.upper) for layer, v in replaced}
    shape = [list(_sample_shape(tuple(spec.shape))) for spec in legacy.inputs]
    report = {"inputs": {name: shape for name in sets}, "max_abs_diff": {},
              "rebuild_max_abs_diff": {}, "expected_difference": None, "passed": True}
    scale = 0.0
    for name, arrays in sets.items():
        with _swapped_functions([(layer, checks[id(layer)]) for layer, _ in replaced]):
            legacy_out = _outputs(legacy, arrays)
        with _swapped_functions([(layer, _exact_clip(v.lower, v.upper)) for layer, v in replaced]):
            reference_out = _outputs(legacy, arrays)
        migrated_out = _outputs(migrated, arrays)
        report["max_abs_diff"][name] = _max_diff(migrated_out, legacy_out)
        report["rebuild_max_abs_diff"][name] = _max_diff(migrated_out, reference_out)
        scale = max(scale, _finite_max_abs(reference_out))
    rebuild = max(report["rebuild_max_abs_diff"].values(), default=0.0)
    for key in ("max_abs_diff", "rebuild_max_abs_diff"):
        report[key] = {name: _as_number(value) for name, value in report[key].items()}
    tolerance = 1e-6 * max(1.0, scale)
    report["layers"] = {}
    for layer, verdict in replaced:
        check = checks[id(layer)]
        report["layers"][verdict.layer] = {
            "max_abs_error_vs_exact_clip": check.max_error,
            "max_abs_input": check.max_input,
            "beyond_cancellation_bound": check.violations,
            "infinite_inputs_answered_differently": check.nonfinite_differences,
        }
    inexact = [v.layer for layer, v in replaced if checks[id(layer)].max_error > 0]
    infinite = [v.layer for layer, v in replaced if checks[id(layer)].nonfinite_differences]
    expected = []
    if inexact:
        expected.append(f"{', '.join(inexact)}: {CANCELLATION_NOTE}")
    if infinite:
        expected.append(f"{', '.join(infinite)}: overflowed (infinite) activations give NaN "
                        "in the legacy layer (inf - inf) and the bound in Truncation")
    if expected:
        report["expected_difference"] = "; ".join(expected) + "; no other difference is allowed"
    failures = []
    if not rebuild <= tolerance:
        failures.append(f"the rebuilt model differs from the legacy one with exact clips by "
                        f"{rebuild:g} (> {tolerance:g})")
    for layer_name, layer_report in report["layers"].items():
        if layer_report["beyond_cancellation_bound"]:
            failures.append(f"layer '{layer_name}' differs from clip beyond float cancellation "
                            f"on {layer_report['beyond_cancellation_bound']} sample activations")
    report["passed"] = not failures
    report["failures"] = failures
    return report


# --------------------------------------------------------------------------- TFLite ops


def tflite_op_inventory(model) -> dict:
    """`{op name: count}` of `model` converted with the stock TFLite converter."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    quiet = contextlib.redirect_stdout(io.StringIO()) if _log.is_quiet() else _log.stdout_to_stderr()
    with quiet:
        content = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    ops = Interpreter(model_content=content)._get_ops_details()
    return dict(sorted(Counter(op["op_name"] for op in ops).items()))


@contextlib.contextmanager
def _native_stderr_discarded():
    """While active, what native code writes to stderr (the converter's MLIR diagnostics,
    which its exception repeats) is discarded."""
    import os
    import sys
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def _inventory_or_error(model) -> dict:
    try:
        with _native_stderr_discarded():
            return tflite_op_inventory(model)
    except Exception as exc:
        return {"error": _one_line(exc)}


def op_inventory_change(before: dict, after: dict) -> dict:
    """Before/after op counts, their totals, and what was removed or added."""
    report = {"before": before, "after": after}
    if "error" in before or "error" in after:
        return report
    removed = {op: n - after.get(op, 0) for op, n in before.items() if n > after.get(op, 0)}
    added = {op: n - before.get(op, 0) for op, n in after.items() if n > before.get(op, 0)}
    report.update(total_before=sum(before.values()), total_after=sum(after.values()),
                  removed=removed, added=added)
    return report


# --------------------------------------------------------------------------- the command


def _check_paths(legacy_path, out_path):
    legacy = require_model_file(legacy_path, savedmodel=True)
    out = Path(out_path)
    if out.suffix.lower() != ".keras":
        raise InputError(f"{out}: the migrated model is saved as .keras; got "
                         f"'{out.suffix or 'no suffix'}'")
    if out.resolve() == legacy.resolve() or (out.exists() and out.samefile(legacy)):
        raise InputError(f"{out}: is the legacy input; choose another --out "
                         "(the input is never overwritten)")
    if out.is_dir():
        raise InputError(f"{out}: is a directory, expected a .keras file path")
    return legacy, out


def _refusal(path, names, stored):
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    what = (f"{len(names)} Lambda layer(s) ({shown})" if names
            else f"{stored} stored Python function(s)")
    return (f"{path}: contains {what}; loading them runs Python code stored in the file. "
            "If you trust its source, re-run with --trust-lambda (trust_lambda=True)")


def migrate(legacy_path, out_path, trust_lambda=False, *, extra_globals=None,
            truncation_classes=None, op_inventory=True, seed=0) -> dict:
    """Bring a legacy model to a Keras 3 `.keras` with `Truncation` layers; return a report.

    Without `trust_lambda` a file that stores lambdas is refused (InputError, nothing
    written): loading it would run code from the file. With trust, the model is loaded
    with `safe_mode=False` and the lambdas see `lambda_globals(extra_globals)`; every
    Lambda is probed (`probe_lambda`), clip-like ones become `Truncation(lower/upper or
    threshold, gradient)` under the same name, the result is verified against the legacy
    model (`verify_outputs`), reloaded with `safe_mode=True` when no Lambda remains, and
    written atomically to `out_path` (never over the input). A failed verification raises
    CheckFailed and writes nothing.

    Layers Keras 3 cannot build are mapped before loading (`map_config_layers`): tf.keras
    2 `tf.clip_by_value` and `tf.minimum(tf.maximum(...))` op layers always, a user's
    own class only when named in `truncation_classes` (`{class: threshold or None}`).
    A Keras 2 file (`.h5`, a `.keras` written by tf.keras 2, a tf.keras 2 SavedModel
    folder) is always written as a Keras 3 `.keras`; a Keras 3 `.keras` with nothing to
    replace is not written.

    Report keys: legacy, out, written, format, lambda_globals, layers (one per Lambda or
    mapped layer: layer, verdict, lower, upper, gradient, exact, max_probe_error,
    nonfinite, note, replaced), kept (non-clip Lambdas left in place), verification,
    safe_mode, tflite_ops, compile (whether the training configuration was carried),
    message.
    """
    legacy_path, out_path = _check_paths(legacy_path, out_path)
    file_format, config = read_model_config(legacy_path)
    lambda_configs = find_lambda_configs(config)
    stored = count_stored_functions(config)
    has_code = bool(lambda_configs or stored)
    report = {"legacy": str(legacy_path), "out": str(out_path), "written": False,
              "format": file_format, "lambda_globals": [], "layers": [], "kept": [],
              "verification": None, "safe_mode": None, "tflite_ops": None, "compile": None,
              "message": ""}
    names = [c.get("name", "?") for c in lambda_configs]
    if has_code and not trust_lambda:
        raise InputError(_refusal(legacy_path, names, stored))

    if has_code:
        namespace = lambda_globals(extra_globals)
        report["lambda_globals"] = sorted(k for k in namespace if not k.startswith("__"))
        for lambda_config in lambda_configs:
            missing = missing_global_names(lambda_config, namespace)
            if missing:
                raise InputError(
                    f"layer '{lambda_config.get('name', '?')}': its lambda reads the global "
                    f"name(s) {', '.join(sorted(missing))}, which the file does not store "
                    "(globals of the script that saved it); give them with --define NAME=VALUE")
        _log.info(f"loading {legacy_path} with safe_mode=False (--trust-lambda)")
    try:
        legacy, _, mapped = load_legacy(legacy_path, trust_lambda=has_code,
                                        extra_globals=extra_globals,
                                        truncation_classes=truncation_classes)
    except InputError:
        by_name = _functions_stored_by_name(lambda_configs)
        if not by_name:
            raise
        layer, function, module = by_name[0]
        raise InputError(
            f"{legacy_path}: layer '{layer}' stores its function '{function}' by name only "
            f"(module {module}), not its code, and it cannot be found here; load the model "
            f"where '{function}' is importable or registered") from None
    report["layers"] = [m.to_dict() for m in mapped]
    converted = file_format != "keras"
    if not has_code and not mapped and not converted:
        report["safe_mode"] = "loads with safe_mode=True; no trust needed"
        report["message"] = "no Lambda layers: nothing to migrate; nothing written"
        return report
    if not _is_graph_model(legacy):
        raise InputError(f"{legacy_path}: a subclassed {type(legacy).__name__} cannot be "
                         "rebuilt; expected a Functional or Sequential model")

    found = lambda_layers(legacy)
    verdicts, replaced = {}, []
    for layer, path in _log.progress(found, desc="probing Lambda layers", total=len(found)):
        verdict = probe_lambda(layer, name=path, seed=seed)
        verdicts[id(layer)] = verdict
        report["layers"].append(verdict.to_dict())
        if verdict.is_clip:
            replaced.append((layer, verdict))
        else:
            report["kept"].append(path)
    if not replaced and not mapped and not converted:
        report["message"] = "no Lambda behaves like a clip: nothing to migrate; nothing written"
        return report

    migrated = replace_lambdas(legacy, verdicts) if replaced else legacy
    _log.info("verifying the migrated model against the legacy one")
    verification = verify_outputs(legacy, migrated, replaced, seed=seed)
    if mapped:
        verification["note"] = ("mapped layers are Truncation in both models: their legacy "
                                 "code cannot run in Keras 3, so only the rest is compared")
    report["verification"] = verification
    if op_inventory:
        _log.info("counting TFLite ops before and after")
        before = _inventory_or_error(legacy)
        after = _inventory_or_error(migrated) if replaced else before
        report["tflite_ops"] = op_inventory_change(before, after)
    if not verification["passed"]:
        raise CheckFailed(f"{legacy_path}: migration not written: "
                          + "; ".join(verification["failures"]))

    report["compile"] = _carry_compile_config(legacy_path, file_format, config, migrated)
    remaining = [path for _, path in lambda_layers(migrated)]
    with atomic_path(out_path, protect=[legacy_path]) as tmp:
        with _log.stdout_to_stderr():
            migrated.save(tmp)
        report["safe_mode"] = _check_reload(tmp, migrated, remaining, extra_globals, seed)
    report["written"] = True
    done = []
    if converted:
        done.append(f"converted the {FORMAT_NAMES[file_format]} to a Keras 3 .keras")
    if replaced:
        done.append(f"replaced {len(replaced)} Lambda layer(s) with Truncation")
    if mapped:
        done.append(f"mapped {len(mapped)} layer(s) to Truncation")
    if report["kept"]:
        done.append(f"kept {len(report['kept'])} other Lambda layer(s)")
    report["message"] = "; ".join(done)
    return report


def _carry_compile_config(path, file_format, config, migrated):
    """Re-compile the migrated model like the legacy one; say what was carried."""
    if file_format == "savedmodel":
        return None
    if file_format == "tf-keras":
        if not config.get("compile_config"):
            return None
        return "not carried from a tf.keras 2 file; compile the model again to train it"
    if file_format == "keras":
        compile_config = config.get("compile_config")
        if not compile_config:
            return None
        try:
            migrated.compile_from_config(compile_config)
        except Exception as exc:
            return f"not carried ({_one_line(exc)}); compile the model again to train it"
        return "carried (optimizer, loss, metrics); optimizer state is not"
    import h5py

    with h5py.File(path, "r") as handle:
        if "training_config" not in handle.attrs:
            return None
    return "not carried from a legacy .h5; compile the model again to train it"


def _check_reload(path, migrated, remaining, extra_globals, seed):
    """Reload the written file (safe mode when no Lambda remains) and compare outputs."""
    if remaining:
        reloaded = load_model(path, trust_lambda=True, extra_globals=extra_globals)
        status = (f"still needs --trust-lambda: {len(remaining)} non-clip Lambda layer(s) "
                  f"remain ({', '.join(remaining)})")
    else:
        try:
            reloaded = load_model(path, trust_lambda=False)
        except InputError as exc:
            raise CheckFailed(f"migrated model does not load with safe_mode=True: {exc}") from None
        status = "loads with safe_mode=True"
    arrays = next(iter(sample_inputs(migrated, seed).values()))
    diff = _max_diff(_outputs(reloaded, arrays), _outputs(migrated, arrays))
    if diff != 0.0:
        raise CheckFailed(f"the saved migrated model differs from the one in memory by {diff:g}")
    return status
