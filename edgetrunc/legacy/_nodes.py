"""Small readers of saved layer configs shared by the legacy mappings: a layer's only call
(`first_reference`), a finite number (`number`), a one-sided clip written as one tf.keras 2
op layer (`one_sided_op_bounds`), and the threshold a class's config holds under a key of
its own (`sole_numeric_threshold`).
"""

from __future__ import annotations

import math

from edgetrunc.errors import InputError

# config keys that are not a layer's own parameters
BASE_CONFIG_KEYS = ("name", "trainable", "dtype")


def number(value):
    """`value` as a finite float, or None (booleans and text are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def first_reference(inbound_nodes):
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


def one_sided_op_bounds(node):
    """`(reference, lower, upper)` of a tf.keras 2 `tf.minimum(x, b)` (`[-inf, b]`) or
    `tf.maximum(x, a)` (`[a, inf]`) op layer with a constant bound, else None."""
    config = node.get("config") or {}
    reference = first_reference(node.get("inbound_nodes"))
    function = config.get("function")
    if function not in ("math.minimum", "math.maximum") or reference is None:
        return None
    bound = number(reference[3].get("y"))
    if bound is None:
        return None
    return (reference, -math.inf, bound) if function == "math.minimum" else (
        reference, bound, math.inf)


def sole_numeric_threshold(class_name, layer, config):
    """`(value, key)` when a class's saved config holds exactly one numeric parameter (its
    own key, `TLU(th=3.0)`) and it is > 0; else InputError listing the numeric keys."""
    numeric = {k: number(v) for k, v in config.items()
               if k not in BASE_CONFIG_KEYS and number(v) is not None}
    if len(numeric) == 1:
        ((key, value),) = numeric.items()
        if value > 0:
            return value, key
    shown = ", ".join(f"{k}={v:g}" for k, v in sorted(numeric.items()))
    keys = ", ".join(sorted(k for k in config if k not in BASE_CONFIG_KEYS)) or "none"
    what = (f"several numeric parameters ({shown}), so T is ambiguous" if len(numeric) > 1
            else f"its only numeric parameter {shown} is not > 0" if numeric
            else f"no numeric parameter (keys: {keys})")
    raise InputError(f"layer '{layer}' (class {class_name}): its saved config has {what}; "
                     f"give the threshold as --truncation-class {class_name}=T")
