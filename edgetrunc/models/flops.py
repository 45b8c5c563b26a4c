"""FLOPs of a Keras model, counted from its layer shapes (imports Keras inside the function).

`count_flops(model)` gives, per layer and for one image, the multiply-adds and the FLOPs:
convolutions and dense layers 2 FLOPs per multiply-add (plus the bias), pooling one add per
window element, batch normalization (inference) 2 per element, activations, the truncation
and softmax 1 per element. The benchmarks report achieved GFLOP/s from it.
"""

from __future__ import annotations

import numpy as np


def count_flops(model) -> list:
    """Per layer `{"layer", "kind", "macs", "flops"}` for one image, from the layer shapes.

    Convolutions and dense layers: 2 FLOPs per multiply-add. Pooling: one add per window
    element; batch normalization (inference): 2 per element; activations, truncation,
    softmax: 1 per element (a tanh counts as one); merging layers (`Add`, ...): one per element
    of every input after the first. Input layers count nothing.
    """
    import keras

    rows = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        inputs = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
        macs, flops = _layer_cost(layer, tuple(inputs[0].shape[1:]),
                                  int(np.prod(tuple(layer.output.shape[1:]))))
        if len(inputs) > 1:  # Add, Multiply, Concatenate...: one FLOP per input element merged
            flops = max(flops, (len(inputs) - 1) * int(np.prod(tuple(layer.output.shape[1:]))))
        rows.append({"layer": layer.name, "kind": type(layer).__name__, "macs": int(macs),
                     "flops": int(2 * macs + flops)})
    return rows


def _layer_cost(layer, in_shape: tuple, out_elems: int) -> tuple:
    """`(multiply-adds, other FLOPs)` of one layer for one image."""
    import keras

    layers = keras.layers
    if isinstance(layer, layers.DepthwiseConv2D):
        kh, kw = layer.kernel_size
        return out_elems * kh * kw, 0
    if isinstance(layer, layers.Conv2D):
        kh, kw = layer.kernel_size
        return (out_elems * kh * kw * in_shape[-1] // layer.groups,
                out_elems if layer.use_bias else 0)
    if isinstance(layer, layers.Dense):
        flops = out_elems if layer.use_bias else 0
        if getattr(layer.activation, "__name__", "linear") != "linear":
            flops += 3 * out_elems
        return int(np.prod(in_shape)) * layer.units, flops
    if isinstance(layer, (layers.AveragePooling2D, layers.MaxPooling2D)):
        ph, pw = layer.pool_size
        return 0, out_elems * ph * pw
    if isinstance(layer, (layers.GlobalAveragePooling2D, layers.GlobalMaxPooling2D)):
        return 0, int(np.prod(in_shape))
    if isinstance(layer, layers.BatchNormalization):
        return 0, 2 * out_elems
    return 0, out_elems
