"""LSB matching (+-1 embedding) at a payload in bits per pixel (no TensorFlow).

Each pixel changes with probability `payload / 2` (a random message bit differs from
the pixel's LSB half the time), by +1 or -1 with equal probability; 0 only goes up and
255 only down. The random stream is seeded per image, so the same cover, payload and seed
always give the same stego image. An RGB cover `[H, W, 3]` is embedded in every channel:
each sample is one pixel value here.
"""

from __future__ import annotations

import numpy as np

from edgetrunc.errors import InputError


def embed_lsb_matching(cover: np.ndarray, payload: float, seed: int) -> np.ndarray:
    """Return the stego version of the uint8 `cover` at `payload` bpp (0 < payload <= 1)."""
    payload = float(payload)
    if not 0 < payload <= 1:
        raise InputError(f"payload must be in (0, 1] bits per pixel; got {payload}", param="payload")
    cover = np.asarray(cover)
    if cover.dtype != np.uint8:
        raise InputError(f"cover must be uint8; got {cover.dtype}", param="cover")
    rng = np.random.default_rng(seed)
    change = rng.random(cover.shape) < payload / 2
    sign = np.where(rng.random(cover.shape) < 0.5, -1, 1).astype(np.int16)
    stego = cover.astype(np.int16)
    sign = np.where(stego == 0, 1, np.where(stego == 255, -1, sign))
    stego = stego + np.where(change, sign, 0)
    return stego.astype(np.uint8)
