"""`seed_block`: the question's first block, verbatim, as a registered model.

`Input((256, 256, 1)) -> Conv2D(8, 5x5, same, no bias) -> Truncation(T) -> tanh ->
AveragePooling2D(5, 2) -> BatchNormalization`.
"""

from __future__ import annotations

import keras

from edgetrunc.layers import Truncation
from edgetrunc.models._registry import register


def seed_layers(threshold=3.0, gradient="ste", prefix="", bn_momentum=0.99):
    """The seed block as a list of layers (shared by `seed_block` and `tlunet`)."""
    return [
        keras.layers.Conv2D(8, (5, 5), padding="same", strides=1, use_bias=False,
                            name=f"{prefix}conv"),
        Truncation(threshold, gradient=gradient, name=f"{prefix}truncation"),
        keras.layers.Activation("tanh", name=f"{prefix}tanh"),
        keras.layers.AveragePooling2D(pool_size=(5, 5), strides=2, name=f"{prefix}pool"),
        keras.layers.BatchNormalization(momentum=bn_momentum, name=f"{prefix}bn"),
    ]


@register
def seed_block(threshold=3.0, gradient="ste", input_shape=(256, 256, 1), seed=None):
    """The question's block as a standalone functional model (output 126x126x8)."""
    if seed is not None:
        keras.utils.set_random_seed(seed)
    inputs = keras.Input(input_shape, name="input")
    x = inputs
    for layer in seed_layers(threshold, gradient):
        x = layer(x)
    return keras.Model(inputs, x, name="seed_block")
