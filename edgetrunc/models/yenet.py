"""`yenet`: the Ye-Net pattern (Ye, Ni and Yi, 2017) with its 30 SRM filters and truncation.

Layout for a `size` x `size` x 1 input of pixel values 0..255:

    srm        fixed, non-trainable bank of the 30 basic SRM high-pass filters (5x5, `srm30`)
    truncation Truncation(T), T = 3 as in the paper
    conv2-4    three Conv2D(30 * width, 3x3) -> BN -> ReLU at full resolution
    conv5-8    Conv2D(32|32|32|16 * width, 5x5|5x5|3x3|3x3) -> BN -> ReLU -> AvgPool(2)
               (a 2x2 average pool after conv4 too: five halvings in all)
    head       GlobalAveragePooling2D -> Dense(2, softmax)   (cover, stego)

The paper's body has no batch normalization; `batch_norm=True` (the default) adds it after
each trainable convolution, which lets the net train in minutes from its SRM start, and which
every export folds into the convolution before it. Fully convolutional: a model trained at
one `size` takes the weights of another (`model.set_weights`). With `width=1`: 30 filters
x 25 taps fixed and about 31 k multiply-adds per pixel, 28x tlunet's.
"""

from __future__ import annotations

import keras

from edgetrunc.layers import Truncation
from edgetrunc.models._filters import high_pass_bank
from edgetrunc.models._registry import register

BODY = ((30, 3, False), (30, 3, False), (30, 3, True), (32, 5, True), (32, 5, True),
        (32, 3, True), (16, 3, True))  # (filters, kernel, pool after) of conv2..conv8


@register
def yenet(threshold=3.0, gradient="ste", front_end="srm30", width=1.0, batch_norm=True,
          input_shape=(256, 256, 1), seed=None):
    """Build the Ye-Net-pattern detector.

    Args:
        threshold: T of the Truncation after the SRM bank. Defaults to `3.0`.
        gradient: gradient mode of the Truncation (`"ste"` or `"clip"`).
        front_end: fixed high-pass bank (`edgetrunc.models.high_pass_bank`). Defaults to
            `"srm30"`.
        width: channel multiplier of the body (conv2..conv8). Defaults to `1.0`.
        batch_norm: batch normalization after each body convolution. Defaults to `True`.
        input_shape: defaults to `(256, 256, 1)`.
        seed: if given, seeds weight initialization.
    """
    if seed is not None:
        keras.utils.set_random_seed(seed)
    if float(width) <= 0:
        raise ValueError(f"width must be > 0. Received: width={width}")
    kernel, _, _ = high_pass_bank(front_end)
    inputs = keras.Input(tuple(input_shape), name="input")
    srm = keras.layers.Conv2D(kernel.shape[-1], kernel.shape[:2], padding="same",
                              use_bias=False, trainable=False, name="srm")
    x = srm(inputs)
    srm.set_weights([kernel])
    x = Truncation(threshold, gradient=gradient, name="truncation")(x)
    for i, (filters, size, pool) in enumerate(BODY, start=2):
        x = keras.layers.Conv2D(max(1, round(filters * float(width))), size, padding="same",
                                use_bias=not batch_norm, name=f"conv{i}")(x)
        if batch_norm:
            x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{i}")(x)
        x = keras.layers.Activation("relu", name=f"relu{i}")(x)
        if pool:
            x = keras.layers.AveragePooling2D(2, name=f"pool{i}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="classifier")(x)
    return keras.Model(inputs, outputs, name="yenet")
