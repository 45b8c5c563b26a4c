"""Image loading and 256x256 tiling for covers and inference inputs (no TensorFlow).

`load_image` returns an 8-bit grayscale array or raises `InputError` naming the file and
the reason. Color converts to grayscale (ITU-R 601 luma, as Pillow's "L"); 16-bit,
multi-frame, palette-less float or unreadable files are refused: a steganalysis detector
must see the pixels as stored, so nothing is ever resized or re-quantized.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from edgetrunc.errors import InputError

TILE = 256
LOSSLESS_SUFFIXES = (".png", ".pgm", ".pnm", ".ppm", ".tif", ".tiff", ".bmp")
LOSSY_SUFFIXES = (".jpg", ".jpeg")
IMAGE_SUFFIXES = LOSSLESS_SUFFIXES + LOSSY_SUFFIXES

_EIGHT_BIT_MODES = {"L", "P", "RGB", "RGBA", "LA", "CMYK", "YCbCr", "1"}


def load_image(path, min_size: int = TILE, warn_jpeg: bool = True) -> np.ndarray:
    """Read `path` as a uint8 grayscale array `[H, W]`, at least `min_size` on each side."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected an image")
    try:
        with Image.open(path) as img:
            n_frames = getattr(img, "n_frames", 1)
            if n_frames > 1:
                raise InputError(f"{path}: multi-frame image ({n_frames} frames); expected one frame")
            mode = img.mode
            if mode not in _EIGHT_BIT_MODES:
                raise InputError(
                    f"{path}: {_describe_mode(mode)} image; expected 8-bit grayscale or color"
                )
            if img.format == "JPEG" and warn_jpeg:
                warnings.warn(f"{path}: JPEG input; stego detectors expect lossless covers",
                              stacklevel=2)
            gray = img.convert("L") if mode != "L" else img
            pixels = np.asarray(gray, dtype=np.uint8).copy()
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        reason = "not an image" if isinstance(exc, UnidentifiedImageError) else f"unreadable ({exc})"
        raise InputError(f"{path}: {reason}") from None
    h, w = pixels.shape
    if h < min_size or w < min_size:
        raise InputError(f"{path}: {w}x{h} pixels; expected at least {min_size}x{min_size}")
    return pixels


def _describe_mode(mode: str) -> str:
    if mode.startswith("I;16") or mode == "I":
        return "16-bit" if mode != "I" else "32-bit integer"
    if mode == "F":
        return "32-bit float"
    return f"mode {mode}"


def tile_positions(height: int, width: int, size: int = TILE, stride: int | None = None):
    """Top-left `(y, x)` of every full `size` tile, row by row (leftover border dropped)."""
    stride = stride or size
    return [(y, x) for y in range(0, height - size + 1, stride)
            for x in range(0, width - size + 1, stride)]


def tile_image(pixels: np.ndarray, size: int = TILE, stride: int | None = None):
    """Split `[H, W]` into full `size x size` tiles; returns `(tiles [N, size, size], positions)`.

    Tiles are never resized: resampling would destroy a +-1 stego signal.
    """
    positions = tile_positions(pixels.shape[0], pixels.shape[1], size, stride)
    tiles = np.stack([pixels[y:y + size, x:x + size] for y, x in positions]) if positions else (
        np.zeros((0, size, size), pixels.dtype))
    return tiles, positions


def to_model_input(tiles: np.ndarray) -> np.ndarray:
    """uint8 `[N, H, W]` tiles -> float32 `[N, H, W, 1]` in 0..255 (the training preprocessing)."""
    tiles = np.asarray(tiles)
    if tiles.ndim == 2:
        tiles = tiles[None]
    return tiles.astype(np.float32)[..., None]
