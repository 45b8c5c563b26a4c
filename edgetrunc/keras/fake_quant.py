"""Fake quantization layers for quantization-aware training, in `keras.ops` (any backend).

`FakeQuant` rounds a tensor to the int8 grid of its range `[min, max]` (per tensor, as the
converter's int8 activations): a fixed range (a truncation's `[-T, T]`, tanh's
`[-1, 127/128]`, an exact filter's `[-128, 127]` steps) or one tracked during training as a
moving average of batch extremes. Its range is stored as weights, so a saved model keeps
it; `keras.qat.export_ready` says what the converter takes from it.

`QuantizedConv2D`, `QuantizedDepthwiseConv2D`, `QuantizedSeparableConv2D` and
`QuantizedDense` compute with their weights fake-quantized per output channel, symmetric,
narrow range (`max|w| / 127`, as the converter stores int8 weights); a kernel whose weights
are already exact integer multiples of one step (a fixed high-pass filter) is left as it
is, as the converter stores it exactly. `keras.quantizers.fake_quant_with_min_max_vars` is
the building block (straight-through gradients).
"""

from __future__ import annotations

import keras
from keras import ops

TANH_RANGE = (-1.0, 127.0 / 128.0)  # TFLite int8 TANH output: scale 1/128, zero point 0
UNIT_RANGE = (0.0, 255.0 / 256.0)  # LOGISTIC / SOFTMAX output: scale 1/256, zero point -128


def fake_quant_weights(kernel, axis: int = -1):
    """`kernel` on the symmetric int8 grid of each output channel along `axis`."""
    reduce = [i for i in range(len(kernel.shape)) if i != axis % len(kernel.shape)]
    peak = ops.maximum(ops.max(ops.abs(ops.stop_gradient(kernel)), axis=reduce), 1e-12)
    return keras.quantizers.fake_quant_with_min_max_vars(
        kernel, -peak, peak, num_bits=8, narrow_range=True, axis=axis)


@keras.saving.register_keras_serializable(package="edgetrunc")
class FakeQuant(keras.layers.Layer):
    """int8 fake quantization of a tensor to `[min, max]`.

    Args:
        fixed: `(min, max)` of a range that never changes, or None (tracked: batch extremes
            averaged with `momentum` while training). Defaults to None.
        momentum: moving-average factor of a tracked range. Defaults to `0.99`.
    """

    def __init__(self, fixed=None, momentum=0.99, **kwargs):
        super().__init__(**kwargs)
        if fixed is not None and (len(fixed) != 2 or not float(fixed[0]) < float(fixed[1])):
            raise ValueError(f"fixed must be (min, max) with min < max. Received: fixed={fixed}")
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"momentum must be in [0, 1). Received: momentum={momentum}")
        self.fixed = None if fixed is None else [float(fixed[0]), float(fixed[1])]
        self.momentum = float(momentum)
        self.supports_masking = True

    def build(self, input_shape):
        low, high = self.fixed or (-1.0, 1.0)
        self.range_min = self.add_weight(shape=(), initializer=keras.initializers.Constant(low),
                                         trainable=False, name="range_min")
        self.range_max = self.add_weight(shape=(), initializer=keras.initializers.Constant(high),
                                         trainable=False, name="range_max")

    def set_range(self, low: float, high: float) -> None:
        """Set a tracked range (from calibration); widened to hold 0, as int8 does."""
        self.range_min.assign(min(0.0, float(low)))
        self.range_max.assign(max(0.0, float(high), float(low) + 1e-6))

    def call(self, x, training=False):
        if training and self.fixed is None:
            m = self.momentum
            low = ops.minimum(ops.min(ops.stop_gradient(x)), 0.0)
            high = ops.maximum(ops.max(ops.stop_gradient(x)), 0.0)
            self.range_min.assign(m * self.range_min + (1 - m) * low)
            self.range_max.assign(m * self.range_max + (1 - m) * high)
        return keras.quantizers.fake_quant_with_min_max_vars(
            x, self.range_min, self.range_max, num_bits=8)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"fixed": self.fixed, "momentum": self.momentum})
        return config


def _exact(layer) -> bool:
    return bool(getattr(layer, "exact_weights", False))


class _ExactWeights:
    """`exact_weights=True`: the kernel is an exactly representable fixed filter, used as it is."""

    def __init__(self, *args, exact_weights=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.exact_weights = bool(exact_weights)

    def get_config(self):
        return {**super().get_config(), "exact_weights": self.exact_weights}


@keras.saving.register_keras_serializable(package="edgetrunc")
class QuantizedConv2D(_ExactWeights, keras.layers.Conv2D):
    """`Conv2D` computing with per-channel int8 fake-quantized weights."""

    def convolution_op(self, inputs, kernel):
        kernel = kernel if _exact(self) else fake_quant_weights(kernel, -1)
        return super().convolution_op(inputs, kernel)


@keras.saving.register_keras_serializable(package="edgetrunc")
class QuantizedDense(keras.layers.Dense):
    """`Dense` computing with per-unit int8 fake-quantized weights."""

    def call(self, inputs, training=None):
        x = ops.matmul(inputs, fake_quant_weights(self.kernel, -1))
        if self.bias is not None:
            x = ops.add(x, self.bias)
        return self.activation(x) if self.activation is not None else x


def _depthwise_fake_quant(kernel):
    """A depthwise kernel `[kh, kw, C, M]` quantized per output channel (C * M of them)."""
    kh, kw, channels, multiplier = kernel.shape
    flat = ops.reshape(kernel, (kh, kw, channels * multiplier))
    return ops.reshape(fake_quant_weights(flat, -1), (kh, kw, channels, multiplier))


def _bias_and_activation(layer, outputs):
    if layer.use_bias:
        outputs = ops.add(outputs, layer.bias)
    return layer.activation(outputs) if layer.activation is not None else outputs


@keras.saving.register_keras_serializable(package="edgetrunc")
class QuantizedDepthwiseConv2D(_ExactWeights, keras.layers.DepthwiseConv2D):
    """`DepthwiseConv2D` (channels last) computing with per-channel int8 fake-quantized weights."""

    def call(self, inputs):
        kernel = self.kernel if _exact(self) else _depthwise_fake_quant(self.kernel)
        outputs = ops.depthwise_conv(inputs, kernel, strides=self.strides, padding=self.padding,
                                     dilation_rate=self.dilation_rate, data_format=self.data_format)
        return _bias_and_activation(self, outputs)


@keras.saving.register_keras_serializable(package="edgetrunc")
class QuantizedSeparableConv2D(keras.layers.SeparableConv2D):
    """`SeparableConv2D` (channels last): both kernels per-channel int8 fake-quantized, as the
    converter's DEPTHWISE_CONV_2D + CONV_2D store them."""

    def call(self, inputs):
        outputs = ops.separable_conv(
            inputs, _depthwise_fake_quant(self.depthwise_kernel),
            fake_quant_weights(self.pointwise_kernel, -1), strides=self.strides,
            padding=self.padding, dilation_rate=self.dilation_rate, data_format=self.data_format)
        return _bias_and_activation(self, outputs)


QUANTIZED = {"Conv2D": QuantizedConv2D, "Dense": QuantizedDense,
             "DepthwiseConv2D": QuantizedDepthwiseConv2D,
             "SeparableConv2D": QuantizedSeparableConv2D}
