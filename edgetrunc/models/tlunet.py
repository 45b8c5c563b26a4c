"""`tlunet`: the reference steganalysis detector (Xu-Net-style with a TLU seed block).

Layout for a 256x256x1 input of pixel values 0..255:

    front_end  fixed, non-trainable high-pass bank (KV filter, or a small SRM bank)
    group1     the seed block: Conv2D(8, 5x5) -> Truncation(T) -> tanh -> AvgPool(5, 2) -> BN
    group2     Conv2D(16, 5x5) -> BN -> tanh -> AvgPool(5, 2, same)
    group3-5   Conv2D(32|64|128, 1x1) -> BN -> ReLU -> AvgPool(5, 2, same)   (last: none)
    head       GlobalAveragePooling2D -> Dense(2, softmax)   (cover, stego)

With the default `front_end="kv"` and `width=1`: 15,427 parameters (14,906 trainable;
the 25 filter taps and the batch-norm statistics are not) and about 72 M multiply-adds
(0.144 GFLOP) per 256x256 image, 20% of them before the truncation;
`edgetrunc.models.flops.count_flops` gives the exact figures.
"""

from __future__ import annotations

import keras

from edgetrunc.models._filters import high_pass_bank
from edgetrunc.models._registry import register
from edgetrunc.models.seed_block import seed_layers


def _group(x, filters, kernel, activation, name, pool=True, bn_momentum=0.9):
    x = keras.layers.Conv2D(filters, kernel, padding="same", use_bias=False,
                            name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn")(x)
    x = keras.layers.Activation(activation, name=f"{name}_{activation}")(x)
    if pool:
        x = keras.layers.AveragePooling2D((5, 5), strides=2, padding="same",
                                          name=f"{name}_pool")(x)
    return x


@register
def tlunet(threshold=3.0, gradient="ste", front_end="kv", width=1, bn_momentum=0.9,
           truncation=True, input_shape=(256, 256, 1), seed=None):
    """Build the reference detector.

    Args:
        threshold: T of the seed block's Truncation. Defaults to `3.0`.
        gradient: gradient mode of the Truncation (`"ste"` or `"clip"`).
        front_end: fixed high-pass bank, `"kv"` (1 filter) or `"srm6"` (6 filters).
        width: channel multiplier of groups 1-5. Defaults to `1`.
        bn_momentum: batch normalization momentum (0.9 keeps the running statistics
            close to the training statistics). Defaults to `0.9`.
        truncation: `False` puts a ReLU where the Truncation is (for the overhead benchmark).
        input_shape: defaults to `(256, 256, 1)`.
        seed: if given, seeds weight initialization.
    """
    if seed is not None:
        keras.utils.set_random_seed(seed)
    width = int(width)
    if width < 1:
        raise ValueError(f"width must be >= 1. Received: width={width}")
    kernel, _, _ = high_pass_bank(front_end)
    inputs = keras.Input(input_shape, name="input")
    front = keras.layers.Conv2D(kernel.shape[-1], kernel.shape[:2], padding="same",
                                use_bias=False, trainable=False, name="front_end")
    x = front(inputs)
    front.set_weights([kernel])
    for layer in seed_layers(threshold, gradient, prefix="group1_", bn_momentum=bn_momentum):
        if layer.name == "group1_conv" and width > 1:
            layer = keras.layers.Conv2D(8 * width, (5, 5), padding="same", use_bias=False,
                                        name="group1_conv")
        if layer.name == "group1_truncation" and not truncation:
            layer = keras.layers.Activation("relu", name="group1_relu")
        x = layer(x)
    x = _group(x, 16 * width, (5, 5), "tanh", "group2", bn_momentum=bn_momentum)
    x = _group(x, 32 * width, (1, 1), "relu", "group3", bn_momentum=bn_momentum)
    x = _group(x, 64 * width, (1, 1), "relu", "group4", bn_momentum=bn_momentum)
    x = _group(x, 128 * width, (1, 1), "relu", "group5", pool=False, bn_momentum=bn_momentum)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="classifier")(x)
    return keras.Model(inputs, outputs, name="tlunet")
