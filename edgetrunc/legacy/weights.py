"""The weights a saved layer stores, read from the file without building the model.

`stored_layer_weights(path, format)` returns a function `layer name -> {weight name: array}`
for a full-model `.h5` (`model_weights/<layer>/...`) and for Keras 3 / tf.keras 2 `.keras`
archives (`model.weights.h5`, `layers/<class>/vars/<i>`) and tf.keras 2 SavedModel folders
(the checkpoint's `layer-<i>` objects). `threshold_from_weights` reads a learned threshold: a class mapped to
`Truncation` may store one scalar weight, whose value is its T.
"""

from __future__ import annotations

import math
import zipfile

from edgetrunc.errors import InputError


def stored_layer_weights(path, file_format, config=None):
    """`layer name -> {weight name: numpy array}` of what the file stores for that layer.

    A `.keras` archive files a layer's weights under its class's snake-case name, numbered in
    the model's layer order (`layers/learned_tlu_1/vars/0`), not under the layer's name:
    `archive_layer_paths(config)` gives that path. A SavedModel's come from its checkpoint."""
    paths = archive_layer_paths(config) if config is not None else {}
    if file_format == "savedmodel":
        return _savedmodel_layer_weights(path, config)

    def read(layer):
        import h5py

        found = {}

        def keep(name, item):
            if isinstance(item, h5py.Dataset):
                found[name.split(":")[0]] = item[()]
        try:
            if file_format == "h5":
                with h5py.File(path, "r") as handle:
                    group = handle.get("model_weights", handle).get(layer)
                    if group is not None:
                        group.visititems(keep)
            elif file_format in ("keras", "tf-keras"):
                with zipfile.ZipFile(path) as archive, \
                        archive.open("model.weights.h5") as data, h5py.File(data, "r") as handle:
                    group = handle.get(paths.get(layer, f"layers/{layer}"))
                    if group is not None:
                        group.visititems(keep)
        except (OSError, KeyError):
            return {}
        # an .h5 names a weight (`threshold`); an archive numbers them (`vars/0`)
        return {"/".join(name.split("/")[-2:]) if name.split("/")[-2:-1] == ["vars"]
                else name.rsplit("/", 1)[-1]: value for name, value in found.items()}
    return read


def threshold_from_weights(class_name, layer, weights, threshold):
    """`(lower, upper, weight name)` of a class storing one scalar weight (a learned T).

    Anything else is refused naming the weights; a given `threshold` must equal the stored
    one (the file's value is never dropped)."""
    import numpy as np

    names = ", ".join(f"'{key}' {list(np.shape(value))}" for key, value in weights.items())
    if len(weights) != 1 or np.size(next(iter(weights.values()))) != 1:
        raise InputError(f"layer '{layer}' (class {class_name}) stores the weight(s) {names}; "
                         "only a class with one scalar weight (a learned threshold) can be "
                         "mapped to Truncation")
    key, value = next(iter(weights.items()))
    stored = abs(float(np.asarray(value, dtype="float64").reshape(-1)[0]))
    if not (math.isfinite(stored) and stored > 0):
        raise InputError(f"layer '{layer}' (class {class_name}): its stored weight '{key}' is "
                         f"{stored:g}, not a threshold > 0")
    if threshold is not None and not math.isclose(threshold, stored, rel_tol=1e-6):
        raise InputError(f"layer '{layer}' (class {class_name}) stores its threshold as the "
                         f"weight '{key}' = {stored:.7g}, not {threshold:g}; give "
                         f"--truncation-class {class_name} without =T to use the stored value")
    return -stored, stored, key


def archive_layer_paths(config, prefix="layers") -> dict:
    """`{layer name: weights path}` in a `.keras` archive, as Keras's saving library names
    them: the snake-case class name, `_1`, `_2`, ... for repeats, per model (nested models
    inside their own `layers/`)."""
    from keras.src.utils.naming import to_snake_case

    model = config.get("config") if isinstance(config, dict) else None
    layers = model.get("layers") if isinstance(model, dict) else None
    paths, used = {}, {}
    for node in layers if isinstance(layers, list) else []:
        if not isinstance(node, dict) or not isinstance(node.get("class_name"), str):
            continue
        class_name = node["class_name"].rsplit(">", 1)[-1]
        base = to_snake_case(class_name)
        used[base] = used.get(base, -1) + 1
        where = f"{prefix}/{base}" + (f"_{used[base]}" if used[base] else "")
        name = (node.get("config") or {}).get("name") or node.get("name")
        if isinstance(name, str):
            paths.setdefault(name, where)
        if isinstance((node.get("config") or {}).get("layers"), list):
            for inner, inner_path in archive_layer_paths(node, f"{where}/layers").items():
                paths.setdefault(inner, inner_path)
    return paths


def _savedmodel_layer_weights(path, config):
    """`layer name -> {weight name: array}` of a tf.keras 2 SavedModel: the checkpoint's
    object graph tracks every layer of the model as `layer-<i>` (model order), its
    variables as children by name."""
    model = config.get("config") if isinstance(config, dict) else None
    names = [(node.get("config") or {}).get("name") for node in (model or {}).get("layers", [])
             if isinstance(node, dict)]

    def read(layer):
        if layer not in names:
            return {}
        try:
            import tensorflow as tf
            from tensorflow.core.protobuf import trackable_object_graph_pb2

            reader = tf.train.load_checkpoint(str(path / "variables" / "variables"))
            graph = trackable_object_graph_pb2.TrackableObjectGraph()
            graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
        except Exception:
            return {}
        ids = [c.node_id for c in graph.nodes[0].children
               if c.local_name == f"layer-{names.index(layer)}"]
        if not ids:
            return {}
        found = {}
        for child in graph.nodes[ids[0]].children:
            keys = [a.checkpoint_key for a in graph.nodes[child.node_id].attributes
                    if a.name == "VARIABLE_VALUE"]
            if keys:
                found[child.local_name] = reader.get_tensor(keys[0])
        return found
    return read
