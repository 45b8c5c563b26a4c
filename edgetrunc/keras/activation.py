"""The last activation of a Keras model's output, and which layer produced a tensor."""

from __future__ import annotations


def output_activation(model) -> str | None:
    """The last activation of the model's first output: "softmax", "sigmoid", "linear" (logits)
    or None when the output layer does not say (a layer of another kind)."""
    history = getattr(model.outputs[0], "_keras_history", None) if model.outputs else None
    layer = history[0] if history is not None else None
    while type(layer).__name__ == "FakeQuant":  # quantization-aware rounding: look through it
        history = getattr(layer.input, "_keras_history", None)
        layer = history[0] if history is not None else None
    if layer is None:
        return None
    if type(layer).__name__ == "Softmax":
        return "softmax"
    activation = getattr(layer, "activation", None)
    name = getattr(activation, "__name__", None)
    return name if name in ("softmax", "sigmoid", "linear") else None


def layer_name_of(tensor, model) -> str | None:
    """The name of the layer that produced `tensor`, or None."""
    history = getattr(tensor, "_keras_history", None)
    if history is not None:
        return history[0].name
    return None
