"""The one walk that finds the `Truncation` layers of a Keras model, nested models included.

`walk_layers` yields every layer depth-first (a nested model, then its layers);
`find_truncations` lists the Truncation layers among them with the bounds in force (learned
thresholds included); `truncation_layers` returns the layer objects themselves.
"""

from __future__ import annotations


def walk_layers(model):
    """Every layer of `model`, depth-first, the layers of nested models included."""
    for layer in getattr(model, "layers", []):
        yield layer
        if hasattr(layer, "layers") and layer is not model:
            yield from walk_layers(layer)


def truncation_layers(model) -> list:
    """The `Truncation` layers of `model` in layer order, nested models included."""
    from edgetrunc.layers import Truncation

    return [layer for layer in walk_layers(model) if isinstance(layer, Truncation)]


def find_truncations(model) -> list[dict]:
    """`[{"layer", "lower", "upper"}]` for every Truncation layer, in layer order."""
    found = []
    for layer in truncation_layers(model):
        lower, upper = layer.bounds
        found.append({"layer": layer.name, "lower": float(lower), "upper": float(upper)})
    return found
