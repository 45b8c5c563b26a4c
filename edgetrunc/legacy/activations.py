"""Truncations written as activation functions saved by name, in a model config.

tf.keras 2 saves `Activation(tlu)` and `Dense(..., activation=tlu)` with the function's name
only (`{"class_name": "function", "config": "tlu"}`): its code is not in the file. When the
user names it with `--truncation-class tlu[=T]`, `Activation(tlu)` becomes a `Truncation` and
a layer with `activation=tlu` gets a linear activation followed by a new `Truncation`
(`insert_after` links it in). `activation_function_name` reads the saved name,
`activation_bounds` the bounds (a known clip's own, else the given T), and
`unknown_activation` names a function Keras 3 cannot find.
"""

from __future__ import annotations

from edgetrunc.errors import InputError
from edgetrunc.legacy.config import references_to

# activation functions of Keras that are clips: mapped to Truncation without a given T, and
# checked against the legacy model (Keras runs them)
KNOWN_CLIPS = {"relu6": (0.0, 6.0), "hard_tanh": (-1.0, 1.0)}


def activation_function_name(value):
    """The name of an activation function saved by name (`"tlu"` or a `function` entry)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and value.get("class_name") == "function" \
            and isinstance(value.get("config"), str):
        return value["config"]
    return None


def asked_activation(node, truncation_classes):
    """`(name, threshold)` when `node` has an activation function named in
    `truncation_classes`, else None."""
    config = node.get("config") if isinstance(node.get("config"), dict) else {}
    name = activation_function_name(config.get("activation"))
    if name is None or name not in truncation_classes:
        return None
    return name, truncation_classes[name]


def activation_bounds(layer, name, threshold):
    """`(lower, upper, source)`: the given T, or a known clip's own bounds; else InputError."""
    known = KNOWN_CLIPS.get(name)
    if threshold is not None:
        if known is not None and known != (-threshold, threshold):
            raise InputError(f"layer '{layer}': activation '{name}' clips to "
                             f"[{known[0]:g}, {known[1]:g}], not [-{threshold:g}, {threshold:g}]; "
                             f"give --truncation-class {name} without =T")
        return -threshold, threshold, "the option"
    if known is not None:
        return known[0], known[1], f"Keras's {name}"
    raise InputError(f"layer '{layer}': activation function '{name}' is saved by name only "
                     f"(its code is not in the file), so its threshold is unknown; give it as "
                     f"--truncation-class {name}=T")


def unknown_activation(node):
    """The name of an activation function saved by name that Keras 3 does not know, or None."""
    import keras

    config = node.get("config") if isinstance(node.get("config"), dict) else {}
    name = activation_function_name(config.get("activation"))
    if name is None or keras.saving.get_registered_object(name) is not None:
        return None  # registered, or given as a custom object (`legacy.custom`)
    try:
        keras.activations.get(name)
    except Exception:
        return name
    return None


def insert_after(layers, model_config, index, new_node):
    """Insert `new_node` after `layers[index]` and route every use of that layer through it.

    In a Sequential config, the order alone links layers; in a Functional one every link to
    the layer (by later layers or as a model output) moves to the new node, which is called on
    the layer's output. A layer called more than once is refused.
    """
    node = layers[index]
    name = node.get("name") or node["config"].get("name")
    inbound = node.get("inbound_nodes")
    if "inbound_nodes" in node or model_config.get("output_layers") is not None:
        if not isinstance(inbound, list) or len(inbound) != 1:
            raise InputError(f"layer '{name}' is called {len(inbound or [])} times; its "
                             "activation cannot be split into a Truncation layer")
        users = [layer.get("inbound_nodes", []) for layer in layers[index + 1:]]
        for reference in references_to([users, model_config.get("output_layers", [])], name):
            reference[0] = new_node["name"]
        if isinstance(inbound[0], dict):  # Keras 3: call arguments with tensor histories
            history = {"class_name": "__keras_tensor__",
                       "config": {"shape": None, "dtype": None, "keras_history": [name, 0, 0]}}
            new_node["inbound_nodes"] = [{"args": [history], "kwargs": {}}]
        else:
            new_node["inbound_nodes"] = [[[name, 0, 0, {}]]]
    layers.insert(index + 1, new_node)
