"""Training-only objects and Keras 2 layer keys that Keras 3 cannot read, made readable.

`replace_training_objects` finds, in a model config, the initializers, regularizers and
constraints Keras 3 cannot rebuild (a function or an unregistered class saved by name: its
code is not in the file) and replaces them by Keras defaults: an initializer by the layer's
default, a regularizer or constraint by None. They only matter for training; the weights come
from the file. Nothing is imported or executed to decide. `unknown_compile_objects` names the
losses and metrics of a saved training config that Keras 3 cannot rebuild (the model is
loaded without compiling). `translate_keras2_keys` drops the keys tf.keras 2 writes for
`SeparableConv*` / `DepthwiseConv*` layers that their Keras 3 classes refuse.
"""

from __future__ import annotations

import contextlib
import json

from edgetrunc.legacy.config import config_dicts

KINDS = {"_initializer": "initializers", "_regularizer": "regularizers",
         "_constraint": "constraints"}

# tf.keras 2 writes these for the depthwise layers; Keras 3 refuses them as unknown arguments
# (a separable convolution has no single kernel: Keras 2 never used its kernel_* settings)
KERAS2_ONLY_KEYS = {
    "SeparableConv1D": ("groups", "kernel_initializer", "kernel_regularizer", "kernel_constraint"),
    "SeparableConv2D": ("groups", "kernel_initializer", "kernel_regularizer", "kernel_constraint"),
    "DepthwiseConv1D": ("groups",),
    "DepthwiseConv2D": ("groups",),
}


def _object_name(value) -> str:
    if isinstance(value, dict):
        inner = value.get("config")
        if value.get("class_name") == "function" and isinstance(inner, str):
            return inner
        return str(value.get("class_name"))
    return str(value)


def _legacy_scope(keras2):
    if not keras2:
        return contextlib.nullcontext()
    from keras.src.legacy.saving import saving_options

    return saving_options.keras_option_scope(use_legacy_config=True)


def _readable(kind, value, keras2) -> bool:
    """Whether Keras 3 rebuilds `value` from its own or registered objects (imports nothing)."""
    import keras
    from keras.src.saving import serialization_lib

    if value is None:
        return True
    if isinstance(value, dict):
        registered = value.get("registered_name")
        if isinstance(registered, str) and registered != "function" \
                and keras.saving.get_registered_object(registered) is not None:
            return True
        module = value.get("module")
        if isinstance(module, str) and module and module != "builtins" \
                and not module.startswith(("keras", "tf_keras")):
            return False  # a class of the saving script: Keras would import its module
        value = {key: item for key, item in value.items()
                 if key not in ("module", "registered_name")} if keras2 else value
    try:
        with serialization_lib.SafeModeScope(True), _legacy_scope(keras2):
            getattr(keras, kind).get(json.loads(json.dumps(value)))
    except Exception:
        return False
    return True


def replace_training_objects(config, keras2=True) -> list[str]:
    """Replace, in place, the initializers, regularizers and constraints Keras 3 cannot
    rebuild by defaults; return what was replaced, as `layer.key 'name' -> default`."""
    replaced = []
    for node in config_dicts(config):
        layer_config = node.get("config")
        if not isinstance(node.get("class_name"), str) or not isinstance(layer_config, dict):
            continue
        for key in list(layer_config):
            kind = next((k for suffix, k in KINDS.items() if key.endswith(suffix)), None)
            if kind is None or _readable(kind, layer_config[key], keras2):
                continue
            name = _object_name(layer_config[key])
            if kind == "initializers":
                del layer_config[key]
                default = "the default initializer"
            else:
                layer_config[key] = None
                default = "none"
            replaced.append(f"{layer_config.get('name', '?')}.{key} '{name}' -> {default}")
    return replaced


def unknown_compile_objects(training_config) -> list[str]:
    """Losses and metrics of a saved training config that Keras 3 cannot rebuild."""
    if not isinstance(training_config, dict):
        return []
    found = []
    for key, kind in (("loss", "losses"), ("metrics", "metrics"),
                      ("weighted_metrics", "metrics")):
        values = training_config.get(key)
        stack = list(values.values()) if isinstance(values, dict) else [values]
        while stack:
            value = stack.pop(0)
            if isinstance(value, (list, tuple)):
                stack.extend(value)
            elif isinstance(value, dict) and value.get("class_name") == "MeanMetricWrapper":
                stack.append((value.get("config") or {}).get("fn"))
            elif value is not None and not _readable(kind, value, True):
                found.append(f"{key} '{_object_name(value)}'")
    return found


def translate_keras2_keys(config) -> int:
    """Drop the tf.keras 2 keys Keras 3 refuses in depthwise layers; return how many layers
    changed. `groups` is dropped only at 1 (its only value for these layers)."""
    changed = 0
    for node in config_dicts(config):
        layer_config = node.get("config")
        keys = KERAS2_ONLY_KEYS.get(node.get("class_name"))
        if not keys or not isinstance(layer_config, dict):
            continue
        dropped = [key for key in keys if key in layer_config
                   and (key != "groups" or layer_config[key] in (1, None))]
        for key in dropped:
            del layer_config[key]
        changed += bool(dropped)
    return changed
