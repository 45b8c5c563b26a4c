"""Integer inputs and outputs of quantized artifacts: pixels in, float values out.

An artifact with an int8 / uint8 input (TFLite `int8-full` or `--int8-io`, ONNX `int8-full`)
is fed pixel values quantized with the model's own scale and zero point (`quantize_input`:
rounded, saturated); its integer outputs are read back with theirs (`dequantize_output`).
One owner for every runner (TFLite, ONNX Runtime, TFLite Micro).
"""

from __future__ import annotations

import numpy as np


def quantize_input(batch: np.ndarray, dtype, scale: float, zero_point: int) -> np.ndarray:
    """`batch` in the integer `dtype` of a quantized input (rounded, saturated)."""
    info = np.iinfo(dtype)
    q = np.round(batch / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize_output(values: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """The float32 values of an integer tensor with quantization `scale`, `zero_point`."""
    return ((values.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)).astype(np.float32)
