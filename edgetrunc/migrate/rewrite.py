"""Rebuilding a model with `Truncation` in place of the Lambda layers probed as clips.

`replace_lambdas` clones a Functional or Sequential model (nested ones too) with every other
layer kept as the same object, so weights are shared, not copied. `lambda_layers` (from
`edgetrunc.legacy`) lists the Lambda layers it looks at.
"""

from __future__ import annotations

from edgetrunc.legacy import is_graph_model, lambda_layers

__all__ = ["lambda_layers", "replace_lambdas"]


def replace_lambdas(model, verdicts: dict):
    """A copy of `model` where every Lambda whose `id` maps to a clip verdict is a Truncation.

    A verdict with a `replacement(layer)` (an elementwise Lambda, `migrate.elementwise`)
    gives the layer in its place. Every other layer is the same object (weights kept, not
    copied); nested Functional and Sequential models are rebuilt the same way.
    """
    import keras

    from edgetrunc.elementwise import Elementwise
    from edgetrunc.layers import Truncation

    def clone(layer):
        if isinstance(layer, keras.Model) and is_graph_model(layer):
            return replace_lambdas(layer, verdicts)
        verdict = verdicts.get(id(layer))
        if hasattr(verdict, "replacement"):
            return verdict.replacement(layer)
        if verdict is None or not verdict.is_clip:
            return layer
        return Truncation(**verdict.truncation_kwargs(), name=layer.name,
                          dtype=layer.dtype_policy)

    def call(layer, *args, **kwargs):
        if isinstance(layer, (Truncation, Elementwise)):
            return layer(args[0])  # drop the Lambda's mask/training call arguments
        return layer(*args, **kwargs)

    if isinstance(model, keras.Sequential):
        return keras.models.clone_model(model, clone_function=clone)
    return keras.models.clone_model(model, clone_function=clone, call_function=call)
