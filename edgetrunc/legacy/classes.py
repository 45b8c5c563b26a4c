"""Layer classes Keras 3 cannot build, and the ones that become `Truncation` in the config.

`map_config_layers` rewrites a model config before loading: tf.keras 2 op layers that are
exact clips (`tf.clip_by_value`, `tf.minimum(tf.maximum(...))` fused into one layer) and
layers of user classes named with `parse_truncation_classes` become `Truncation` entries
(`MappedLayer` says which and why); any other class Keras 3 does not know raises
`UnknownLayerClass` naming it. A class resolves only through Keras's own namespace, the
registry (`keras.saving.register_keras_serializable`, edgetrunc's `Truncation`) and the
caller's custom objects: nothing named in a file is imported.
"""

from __future__ import annotations

import dataclasses
import json
import math

from edgetrunc.errors import InputError
from edgetrunc.legacy.activations import (
    activation_bounds,
    asked_activation,
    insert_after,
    unknown_activation,
)
from edgetrunc.legacy._nodes import (
    first_reference,
    number,
    one_sided_op_bounds,
    sole_numeric_threshold,
)
from edgetrunc.legacy.config import config_dicts, references_to
from edgetrunc.legacy.unknown import UnknownLayerClass, refuse_foreign_module
from edgetrunc.legacy.weights import threshold_from_weights

TRUNCATION_CONFIG_KEYS = ("threshold", "T", "t", "thresh", "truncation", "clip_value", "limit",
                          "bound", "value")
MODEL_CLASSES = ("Functional", "Model", "Sequential")
TF_OP_LAYERS = ("TFOpLambda", "SlicingOpLambda")
# Packages whose saved modules name classes Keras resolves by name (tf_keras: Keras 2 files,
# whose modules are dropped before loading); any other module resolves only when registered.
KERAS_PACKAGES = ("keras", "tf_keras")
# Packages besides keras whose saved module Keras 3 itself imports while loading a config;
# an object saved under one of them must be registered, else it is refused before loading.
KERAS_IMPORTED_PACKAGES = ("keras_hub", "keras_cv", "keras_nlp")


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


def parse_truncation_classes(items) -> dict:
    """`["TLU", "Clip=2.5"]` -> `{"TLU": None, "Clip": 2.5}` (a given T overrides the config)."""
    classes = {}
    for item in items or []:
        name, sep, text = str(item).partition("=")
        name = name.strip()
        if not all(part.isidentifier() for part in name.split(">")):
            raise InputError(f"truncation_classes={item}: expected a class name, optionally "
                             "with its threshold, e.g. TLU or TLU=3.0")
        threshold = None
        if sep:
            try:
                threshold = float(text)
            except ValueError:
                threshold = math.nan
            if not (math.isfinite(threshold) and threshold > 0):
                raise InputError(f"truncation_classes={item}: the threshold must be a finite "
                                 "number > 0, e.g. TLU=3.0")
        classes[name] = threshold
    return classes


def map_config_layers(config, truncation_classes=None, custom_objects=None,
                      layer_weights=None):
    """Replace layers Keras 3 cannot build by `Truncation` where that is exact or asked for.

    tf.keras 2 op layers (`TFOpLambda`) of `tf.clip_by_value(x, a, b)` and of
    `tf.minimum(tf.maximum(x, a), b)` with constant bounds are exact clips and become
    `Truncation(lower=a, upper=b, gradient="clip")`. A layer of a class named in
    `truncation_classes` (`{class name: threshold or None}`) becomes a `Truncation` whose
    bounds come from its saved config (`threshold`, `T`, `lower`/`upper`, ...) or the given
    threshold. Any other class Keras 3 does not know (see `_is_known_class`; `custom_objects`
    as given to `keras.saving.load_model`) raises UnknownLayerClass naming it, and so does
    any object saved under a module Keras would import (`KERAS_IMPORTED_PACKAGES`) that is
    not registered. `layer_weights(layer name)` gives the `{name: array}` a mapped class
    stores: one scalar weight (a learned threshold) gives T (`threshold_from_weights`).
    An activation function saved by name and named in `truncation_classes` becomes a
    `Truncation` (`Activation(fn)`) or is split off its layer into one. Returns `(new config, [MappedLayer])`; `config` itself is not changed.
    """
    config = json.loads(json.dumps(config))
    truncation_classes = dict(truncation_classes or {})
    mapped, unknown, used = [], [], set()
    for model_config in [d for d in config_dicts(config) if isinstance(d.get("layers"), list)]:
        _map_model_layers(model_config, truncation_classes, mapped, unknown, used,
                          custom_objects, layer_weights)
    for found in _objects_keras_would_import(config, custom_objects):
        if found not in unknown:
            unknown.append(found)
    missing = [f"truncation_classes={name}: no layer of class {name} and no activation "
               "function of that name in the model"
               for name in sorted(set(truncation_classes) - used)]
    if len(missing) == 1 and not unknown:
        raise InputError(missing[0])
    if missing or unknown:
        raise UnknownLayerClass(unknown, missing)
    return config, mapped


def _map_model_layers(model_config, truncation_classes, mapped, unknown, used,
                      custom_objects=None, layer_weights=None):
    """Map the layers of one model config in place; collect what was mapped and unknown."""
    layers = model_config["layers"]
    index = 0
    while index < len(layers):
        node = layers[index]
        index += 1
        if not isinstance(node, dict) or not isinstance(node.get("class_name"), str):
            continue
        activation = asked_activation(node, truncation_classes)
        if activation is not None:
            used.add(activation[0])
            index += _map_activation(layers, model_config, index - 1, activation, mapped)
            continue
        function = unknown_activation(node)
        if function is not None:
            unknown.append((_layer_name(node), f"activation {function}"))
        class_name, name = node["class_name"], _layer_name(node)
        # a registered Keras 2 class is saved as "Package>Name": "Name" also matches it
        asked = next((c for c in (class_name, class_name.rsplit(">", 1)[-1])
                      if c in truncation_classes), None)
        if asked is not None:
            used.add(asked)
            weights = layer_weights(name) if layer_weights else {}
            layers[index - 1], found = _map_asked_class(node, truncation_classes[asked], weights)
            mapped.append(found)
        elif class_name != "TFOpLambda":
            if not _is_known_class(node, custom_objects):
                refuse_foreign_module(node, name, class_name)
                unknown.append((name, class_name))
        else:
            found = _map_op_layer(layers, model_config, index - 1, node)
            if found is None:
                unknown.append((name, f"TFOpLambda tf.{(node.get('config') or {}).get('function')}"))
            else:
                mapped.append(found)


def _map_asked_class(node, threshold, weights=None):
    """`(Truncation entry, MappedLayer)` of a layer whose class the user named."""
    class_name, name = node["class_name"], _layer_name(node)
    saved = node.get("config") if isinstance(node.get("config"), dict) else {}
    if weights:
        lower, upper, key = threshold_from_weights(class_name, name, weights, threshold)
        source = f"its stored weight {key!r}"
    else:
        lower, upper, key = _bounds_from_config(class_name, name, saved, threshold)
        source = "the option" if key == "given" else f"its config key {key!r} = {upper:g}"
    return _truncation_node(node, lower, upper, "clip"), MappedLayer(
        name, f"class {class_name}", lower, upper, "clip",
        f"class {class_name} mapped by --truncation-class (bounds from {source}); "
        "its code is not in the file, so its behaviour was not checked")


def _map_activation(layers, model_config, index, activation, mapped) -> int:
    """Map an activation function named by the user; return how many layers were inserted."""
    node = layers[index]
    name, layer = activation[0], _layer_name(node)
    lower, upper, source = activation_bounds(layer, name, activation[1])
    note = (f"activation function {name} mapped by --truncation-class (bounds from {source})"
            + ("" if source.startswith("Keras") else
               "; its code is not in the file, so its behaviour was not checked"))
    if node["class_name"] == "Activation":
        layers[index] = _truncation_node(node, lower, upper, "clip")
        mapped.append(MappedLayer(layer, f"activation {name}", lower, upper, "clip", note))
        return 0
    taken = {_layer_name(other) for other in layers if isinstance(other, dict)}
    new_name = next(f"{layer}_{name}" + (f"_{n}" if n else "") for n in range(len(layers) + 1)
                    if f"{layer}_{name}" + (f"_{n}" if n else "") not in taken)
    new = _truncation_node(node, lower, upper, "clip")
    new["config"]["name"] = new["name"] = new_name
    new.pop("inbound_nodes", None)
    node["config"]["activation"] = "linear"
    insert_after(layers, model_config, index, new)
    mapped.append(MappedLayer(new_name, f"activation {name} of layer '{layer}'", lower, upper,
                              "clip", note))
    return 1


def _map_op_layer(layers, model_config, index, node):
    """Map a `TFOpLambda` at `layers[index]` that is an exact clip; None if it is not one."""
    name = _layer_name(node)
    clip = _tf_op_clip(node)
    if clip is not None:
        reference, lower, upper = clip
        layers[index] = _truncation_node(node, lower, upper, "clip",
                                         [[list(reference[:3]) + [{}]]])
        return MappedLayer(name, "tf.clip_by_value", lower, upper, "clip",
                           "tf.keras 2 op layer tf.clip_by_value: an exact clip")
    pair = _fuse_min_max(layers, model_config, node)
    if pair is None:
        return _map_one_sided_op(layers, index, node)
    first, second_node, lower, upper = pair
    second_name = _layer_name(second_node)
    layers[index] = _truncation_node(node, lower, upper, "clip", [[list(first[:3]) + [{}]]])
    layers.remove(second_node)
    for reference in references_to([layers, model_config.get("output_layers", [])], second_name):
        reference[0] = name
    return MappedLayer(name, f"tf.maximum + tf.minimum ({second_name})", lower, upper, "clip",
                       "tf.keras 2 op layers tf.maximum/tf.minimum: an exact clip")


def _map_one_sided_op(layers, index, node):
    """A lone `tf.minimum(x, b)` / `tf.maximum(x, a)` op layer: a one-sided Truncation."""
    found = one_sided_op_bounds(node)
    if found is None:
        return None
    reference, lower, upper = found
    layers[index] = _truncation_node(node, lower, upper, "clip", [[list(reference[:3]) + [{}]]])
    function = (node.get("config") or {}).get("function")
    return MappedLayer(_layer_name(node), f"tf.{function}", lower, upper, "clip",
                       f"tf.keras 2 op layer tf.{function}: an exact one-sided clip")


def _layer_name(node) -> str:
    config = node.get("config") if isinstance(node.get("config"), dict) else {}
    return str(node.get("name") or config.get("name") or "?")


def _is_registered(node, custom_objects=None) -> bool:
    """Whether the registry (or `custom_objects`) holds the class a config node names."""
    import keras

    import edgetrunc.layers  # noqa: F401  (registers Truncation)

    return any(isinstance(key, str) and key and keras.saving.get_registered_object(
        key, custom_objects=custom_objects) is not None
        for key in (node.get("registered_name"), node.get("class_name")))


def _is_known_class(node, custom_objects=None) -> bool:
    """Whether Keras can build a layer config's class without importing anything the file
    names: a registered class (user's, edgetrunc's, `custom_objects`), or a Keras layer or
    model class saved under a Keras module (or none), or edgetrunc's `Truncation`. A class
    saved under any other module is unknown; its module is never imported."""
    import keras

    if _is_registered(node, custom_objects):
        return True
    name, module = node["class_name"], node.get("module")
    if module not in (None, "") and not (isinstance(module, str) and module.split(".")[0]
                                         in (*KERAS_PACKAGES, "edgetrunc")):
        return False
    if isinstance(module, str) and module.startswith("edgetrunc"):
        return name == "Truncation"
    return name in MODEL_CLASSES or name == "Truncation" or (
        name not in TF_OP_LAYERS and isinstance(getattr(keras.layers, name, None), type))


def _objects_keras_would_import(node, custom_objects=None, layer="?") -> list:
    """`(layer, class)` of every object in a config saved under a module Keras itself would
    import (`KERAS_IMPORTED_PACKAGES`) that no registry resolves; `layer` is the nearest
    enclosing layer's name."""
    found = []
    if isinstance(node, dict):
        config = node.get("config")
        if isinstance(config, dict) and isinstance(config.get("name"), str):
            layer = _layer_name(node)
        module = node.get("module")
        if isinstance(module, str) and module.split(".")[0] in KERAS_IMPORTED_PACKAGES \
                and isinstance(node.get("class_name"), str) \
                and not _is_registered(node, custom_objects):
            found.append((layer, node["class_name"]))
        values = node.values()
    else:
        values = node if isinstance(node, list) else ()
    for value in values:
        if isinstance(value, (dict, list)):
            found.extend(_objects_keras_would_import(value, custom_objects, layer))
    return found


def _bounds_from_config(class_name, layer, config, threshold):
    """`(lower, upper, which key)` of a user truncation class, from its config or `threshold`."""
    if threshold is not None:
        return -threshold, threshold, "given"
    for low, high in (("lower", "upper"), ("min_value", "max_value"), ("low", "high")):
        lower, upper = number(config.get(low)), number(config.get(high))
        if lower is not None and upper is not None and lower < upper:
            return lower, upper, f"{low}/{high}"
    for key in TRUNCATION_CONFIG_KEYS:
        value = number(config.get(key))
        if value is not None and value > 0:
            return -value, value, key
    value, key = sole_numeric_threshold(class_name, layer, config)
    return -value, value, key


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


def _tf_op_clip(node):
    """Bounds of a tf.keras 2 `tf.clip_by_value` op layer called with constant bounds."""
    config = node.get("config") or {}
    reference = first_reference(node.get("inbound_nodes"))
    if config.get("function") != "clip_by_value" or reference is None:
        return None
    lower = number(reference[3].get("clip_value_min"))
    upper = number(reference[3].get("clip_value_max"))
    if lower is None or upper is None or not lower < upper:
        return None
    return reference, lower, upper


def _fuse_min_max(layers, model_config, node):
    """`tf.maximum(x, a)` then `tf.minimum(., b)` (either order) -> one Truncation(a, b)."""
    config = node.get("config") or {}
    first = first_reference(node.get("inbound_nodes"))
    if config.get("function") not in ("math.maximum", "math.minimum") or first is None:
        return None
    name = _layer_name(node)
    users = [other for other in layers if other is not node
             and references_to(other.get("inbound_nodes", []), name)]
    outputs = references_to(model_config.get("output_layers", []), name)
    if len(users) != 1 or outputs:
        return None
    second_node = users[0]
    second = first_reference(second_node.get("inbound_nodes"))
    pair = {config.get("function"), (second_node.get("config") or {}).get("function")}
    if second is None or second[0] != name or pair != {"math.maximum", "math.minimum"}:
        return None
    a, b = number(first[3].get("y")), number(second[3].get("y"))
    if a is None or b is None:
        return None
    lower, upper = (a, b) if config["function"] == "math.maximum" else (b, a)
    if not lower < upper:
        return None
    return first, second_node, lower, upper
