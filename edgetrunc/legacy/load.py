"""Loading Keras 2 files in Keras 3: `load_legacy` (and `load_legacy_model`, the model alone).

The config is read and mapped first (`map_config_layers`); a `.keras` written by tf.keras 2
is rebuilt from its Keras 2 config and its weights file, a tf.keras 2 SavedModel from its
config and its checkpoint, an `.h5` or `.keras` whose config changed from a rewritten copy.
Keras 2 dtype policies are written as their names and Keras 2 links to nested models are
followed. Stored lambdas load only with `trust_lambda`, with `lambda_globals` as globals.
"""

from __future__ import annotations

import contextlib
import json
import zipfile
from pathlib import Path

from edgetrunc import _log
from edgetrunc.errors import InputError, first_line, with_prefix
from edgetrunc.legacy.classes import map_config_layers
from edgetrunc.legacy.config import config_dicts, read_model_config
from edgetrunc.legacy.custom import check_custom_objects, custom_objects_scope, load_custom_objects
from edgetrunc.legacy.mapping_check import check_mappings
from edgetrunc.legacy.objects import (
    replace_training_objects,
    translate_keras2_keys,
    unknown_compile_objects,
)
from edgetrunc.legacy.weights import stored_layer_weights
from edgetrunc.legacy.lambdas import (
    keras_patched,
    lambda_globals,
    lambda_layers,
    lambdas_rebuilt_with,
    rebind_lambda_globals,
)


def load_legacy_model(path, trust_lambda=False, extra_globals=None, truncation_classes=None,
                      custom_objects=None):
    """Load a `.keras`/`.h5` model; with `trust_lambda`, lambdas get `lambda_globals()`."""
    return load_legacy(path, trust_lambda, extra_globals, truncation_classes,
                       custom_objects=custom_objects)[0]


def load_legacy(path, trust_lambda=False, extra_globals=None, truncation_classes=None,
                custom_objects=None):
    """Load a Keras 3 or tf.keras 2 model file; return `(model, format, [MappedLayer])`.

    Layers Keras 3 cannot build are first mapped in the config (`map_config_layers`);
    a `.keras` written by tf.keras 2 is rebuilt from its Keras 2 config and its weights
    file. `custom_objects` (a dict or the user's `.py` file, `legacy.custom`) are offered
    by name, and every truncation mapping whose code they (or Keras) hold is checked
    (`legacy.mapping_check`). Any failure is an InputError naming the file.
    """
    path = Path(path)
    custom_objects = load_custom_objects(custom_objects)
    file_format, config = read_model_config(path)
    check_custom_objects(path, config, custom_objects, truncation_classes)
    with custom_objects_scope(custom_objects):
        return _load_legacy(path, file_format, config, trust_lambda, extra_globals,
                            truncation_classes, custom_objects)


def _load_legacy(path, file_format, config, trust_lambda, extra_globals, truncation_classes,
                 custom_objects):
    import keras

    layer_weights = stored_layer_weights(path, file_format, config)
    try:
        new_config, mapped = map_config_layers(config, truncation_classes,
                                               custom_objects=custom_objects,
                                               layer_weights=layer_weights)
    except InputError as exc:
        raise with_prefix(exc, f"{path}: ") from None
    check_mappings(path, config, mapped, truncation_classes, layer_weights, custom_objects)
    keras2 = file_format != "keras"
    policies = _keras2_dtype_policies(new_config) if keras2 else 0
    policies += translate_keras2_keys(new_config) if keras2 else 0
    replaced = replace_training_objects(new_config, keras2=keras2)
    _warn_replaced(path, replaced + _unknown_compile_objects(path, file_format, config))
    weightless = [m.layer for m in mapped if layer_weights(m.layer)]
    namespace = lambda_globals(extra_globals) if trust_lambda else None
    rebuilt = lambdas_rebuilt_with(namespace) if trust_lambda else contextlib.nullcontext()
    links = _keras2_nested_model_links() if file_format != "keras" else contextlib.nullcontext()
    try:
        with _log.stdout_to_stderr(), rebuilt, links:
            model = _load_by_format(path, file_format, new_config,
                                    rewritten=bool(mapped or policies or replaced),
                                    safe_mode=not trust_lambda, weightless=weightless)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: cannot load the model ({culprit_line(exc)})") from None
    if not isinstance(model, keras.Model):
        raise InputError(f"{path}: holds a {type(model).__name__}, expected a Keras model")
    if trust_lambda:
        for layer, _ in lambda_layers(model):
            rebind_lambda_globals(layer, namespace)
    return _plain_single_input(model), file_format, mapped


def culprit_line(exc, limit=400) -> str:
    """One line of a Keras load error that keeps its culprit: Keras puts the cause after
    "Exception encountered:" below a long config dump, which a first line would cut off."""
    text = " ".join(str(exc).split())
    head, marker, cause = text.rpartition("Exception encountered:")
    if marker:
        head = head.split(" using config=")[0].split(" with config=")[0].rstrip(" .:")
        text = f"{head}: {cause.strip()}" if head else cause.strip()
    text = text or type(exc).__name__
    return text if len(text) <= limit else f"{text[:limit // 2 - 3]} ... {text[-(limit // 2):]}"


def _warn_replaced(path, replaced):
    if replaced:
        _log.warn(f"{path}: training-only objects Keras 3 cannot rebuild (their code is not in "
                  f"the file) replaced by Keras defaults; the weights come from the file: "
                  + "; ".join(replaced))


def _unknown_compile_objects(path, file_format, config) -> list[str]:
    """Losses/metrics of the saved training config Keras 3 cannot rebuild (not compiled)."""
    training = config.get("compile_config") if file_format == "tf-keras" else None
    if file_format == "h5":
        import h5py

        try:
            with h5py.File(path, "r") as handle:
                text = handle.attrs.get("training_config")
            training = json.loads(text) if text is not None else None
        except (OSError, ValueError, TypeError):
            training = None
    return [f"{found} -> not compiled" for found in unknown_compile_objects(training)]


def _load_by_format(path, file_format, config, rewritten, safe_mode, weightless=()):
    import keras

    if file_format == "tf-keras":
        return _load_keras2_archive(path, config, safe_mode=safe_mode)
    if file_format == "savedmodel":
        return _load_keras2_savedmodel(path, config, safe_mode=safe_mode, weightless=weightless)
    if rewritten:
        return _load_rewritten(path, file_format, config, safe_mode=safe_mode,
                               weightless=weightless)
    return keras.saving.load_model(path, compile=False, safe_mode=safe_mode,
                                   custom_objects=_custom_objects())


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
        from keras.src.models import functional  # imported: keras_patched found it

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

    return keras_patched("keras.src.models.functional", "deserialize_node", wrap)


def _keras2_dtype_policies(config) -> int:
    """Write Keras 2 dtype policies (`{"class_name": "Policy", ...}`) as their names, which
    Keras 3 reads (it cannot read the Keras 2 object); return how many were changed."""
    changed = 0
    for node in config_dicts(config):
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


def _load_rewritten(path, file_format, config, safe_mode, weightless=()):
    """Load a copy of `path` whose model config is `config` (the input is not touched);
    the layers named in `weightless` (mapped to Truncation) lose their stored weights."""
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
                for layer in weightless:
                    group = handle.get("model_weights", handle).get(layer)
                    if group is not None:
                        group.attrs["weight_names"] = []
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
    for node in config_dicts(config):
        if "class_name" in node:
            node.pop("module", None)
            node.pop("registered_name", None)
    with saving_options.keras_option_scope(use_legacy_config=True), \
            serialization_lib.SafeModeScope(safe_mode):
        return saving_utils.model_from_config(config, custom_objects=_custom_objects())


class _Checkpoint:
    """A tf.keras 2 SavedModel's variables: the stored keys and the object-graph paths to them."""

    SKIPPED = ("_CHECKPOINTABLE_OBJECT_GRAPH", "optimizer/", "keras_api/", "save_counter/")

    def __init__(self, path):
        import tensorflow as tf
        from tensorflow.core.protobuf import trackable_object_graph_pb2

        try:
            self.reader = tf.train.load_checkpoint(str(path / "variables" / "variables"))
            self.graph = trackable_object_graph_pb2.TrackableObjectGraph()
            self.graph.ParseFromString(self.reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
        except Exception as exc:
            raise InputError(f"{path}: the SavedModel's variables cannot be read "
                             f"({first_line(exc)})") from None
        self.stored = {key for key in self.reader.get_variable_to_shape_map()
                       if not key.startswith(self.SKIPPED)}

    def key_of(self, names):
        """The checkpoint key of the variable at object-graph path `names`, or None."""
        node = self.graph.nodes[0]
        for name in names:
            ids = [child.node_id for child in node.children if child.local_name == name]
            if not ids:
                return None
            node = self.graph.nodes[ids[0]]
        keys = [a.checkpoint_key for a in node.attributes if a.name == "VARIABLE_VALUE"]
        return keys[0] if keys else None


def _load_keras2_savedmodel(path, config, safe_mode, weightless=()):
    """Rebuild a tf.keras 2 SavedModel: its Keras 2 config, then its checkpoint's weights.

    tf.keras 2 tracks a model's weights as `layer_with_weights-<i>/<name>`, `i` counting
    the layers that have weights, in order (nested models inside); the checkpoint's object
    graph maps each such path to the key its value is stored under. A layer named in
    `weightless` (mapped to Truncation) keeps its place in that count; its values are unused.
    """
    model = _model_from_keras2_config(path, config, safe_mode)
    checkpoint = _Checkpoint(path)
    used = set()
    _assign_checkpoint_weights(path, checkpoint, model.layers, [], used, set(weightless))
    if used != checkpoint.stored:
        unused = checkpoint.stored - used
        raise InputError(f"{path}: {len(unused)} saved weight(s) match no layer "
                         f"(e.g. {sorted(unused)[0]})")
    return model


def _assign_checkpoint_weights(path, checkpoint, layers, prefix, used, weightless=frozenset()):
    import keras

    for index, layer in enumerate(lay for lay in layers if lay.weights or lay.name in weightless):
        here = [*prefix, f"layer_with_weights-{index}"]
        if layer.name in weightless:
            used.update(k for k in checkpoint.stored if k.startswith("/".join(here) + "/"))
            continue
        if isinstance(layer, keras.Model):
            _assign_checkpoint_weights(path, checkpoint, layer.layers, here, used, weightless)
            continue
        for variable in layer.weights:
            key = checkpoint.key_of([*here, variable.name])
            if key is None or key not in checkpoint.stored:
                raise InputError(f"{path}: no saved value for weight '{variable.path}' "
                                 f"(expected at {'/'.join([*here, variable.name])})")
            value = checkpoint.reader.get_tensor(key)
            if tuple(value.shape) != tuple(variable.shape):
                raise InputError(f"{path}: weight '{variable.path}' is saved with shape "
                                 f"{list(value.shape)}, the model needs {list(variable.shape)}")
            variable.assign(value)
            used.add(key)


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
