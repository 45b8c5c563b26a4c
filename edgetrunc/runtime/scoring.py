"""Image scoring on the device: preprocessing, tiling and per-image stego probability.

Preprocessing is the training one (`edgetrunc.data.images`): 8-bit grayscale pixels as
float32 0..255, NHWC. An image larger than the model input (256x256) is split into
non-overlapping tiles, never resized; a right or bottom border narrower than one tile is
dropped (and reported). A tile's stego probability is the detector's softmax output for
class 1 (stego); the image score is the mean over its tiles, and the decision is "stego"
when that mean is >= 0.5. No TensorFlow.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgetrunc.data.images import TILE, load_image, tile_image, tile_positions, to_model_input
from edgetrunc import metrics
from edgetrunc.errors import InputError

DECISION_THRESHOLD = 0.5


@dataclass
class ImageScore:
    image: str
    stego_probability: float
    decision: str
    tiles: list = field(default_factory=list)  # [{"x", "y", "stego_probability"}]
    width: int = 0
    height: int = 0

    @property
    def dropped_border(self) -> tuple:
        """`(right, bottom)` pixels not covered by any tile."""
        if not self.tiles:
            return (0, 0)
        tile = TILE
        covered_w = max(t["x"] for t in self.tiles) + tile
        covered_h = max(t["y"] for t in self.tiles) + tile
        return (self.width - covered_w, self.height - covered_h)

    def to_dict(self) -> dict:
        return {"image": self.image, "stego_probability": self.stego_probability,
                "decision": self.decision, "tiles": list(self.tiles)}


def _tile_size(runner) -> int:
    size = runner.input_size() if runner is not None else None
    if size is None:
        return TILE
    height, width = size
    if height != width:
        raise InputError(f"{runner.name}: expected a square model input; got {height}x{width}")
    return int(height)


def preprocess_image(path, tile: int = TILE):
    """Read `path` and cut it into model inputs.

    Returns `(batch float32 [N, tile, tile, 1] in 0..255, positions [(y, x)], (height, width))`.
    Raises `InputError` (one line naming the file) for non-images, 16-bit or multi-frame
    images and images smaller than one tile.
    """
    pixels = _read_pixels(path, tile)
    tiles, positions = tile_image(pixels, size=tile)
    return to_model_input(tiles), positions, pixels.shape


def stego_probability(outputs: dict, name: str = "", activation: str | None = None) -> np.ndarray:
    """Class-1 probability `[N]` from a runner's outputs (the first output, `[N, 2]`).

    A softmax output is used as is; logits (rows not summing to 1, or `activation`
    "linear", the runner's `output_activation`) get a softmax first; a single column `[N, 1]`
    is the probability itself (clipped to [0, 1]), or a logit that gets a sigmoid when the
    model's last op is known to be linear.
    """
    if not outputs:
        raise InputError(f"{name}: the model produced no output")
    values = np.asarray(next(iter(outputs.values())), dtype=np.float64)
    if values.ndim != 2 or values.shape[1] not in (1, 2):
        raise InputError(f"{name}: expected a detector output [N, 2] (cover, stego); "
                         f"got shape {list(values.shape)}")
    return np.clip(metrics.stego_probability(values, activation), 0.0, 1.0).astype(np.float32)


def runner_activation(runner) -> str | None:
    """The last activation of a runner's first output ("softmax", "sigmoid", "linear"), if known."""
    metadata = getattr(runner, "metadata", None)  # duck-typed runners may not say
    meta = metadata() if callable(metadata) else None
    return meta.extra.get("output_activation") if meta is not None else None


def score_batch(runner, batch: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Stego probability `[N]` of a float32 NHWC batch, run `batch_size` at a time."""
    activation = runner_activation(runner)
    parts = [stego_probability(runner.infer(batch[i:i + batch_size]), runner.name, activation)
             for i in range(0, len(batch), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0,), np.float32)


def _read_pixels(path, tile: int) -> np.ndarray:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pixels = load_image(path, min_size=tile)
    if caught:
        from edgetrunc import _log

        for item in caught:
            _log.warn(str(item.message))
    return pixels


def score_image(runner, path, batch_size: int = 16) -> ImageScore:
    """Score one image, `batch_size` tiles at a time (memory stays bounded for large photos)."""
    tile = _tile_size(runner)
    pixels = _read_pixels(path, tile)
    height, width = pixels.shape
    positions = tile_positions(height, width, tile)
    parts = []
    for start in range(0, len(positions), batch_size):
        tiles = np.stack([pixels[y:y + tile, x:x + tile] for y, x in positions[start:start + batch_size]])
        parts.append(stego_probability(runner.infer(to_model_input(tiles)), runner.name,
                                       runner_activation(runner)))
    probabilities = np.concatenate(parts)
    if not np.all(np.isfinite(probabilities)):
        raise InputError(f"{path}: {runner.name} gave a non-finite output (NaN or inf); "
                         "expected probabilities in [0, 1]")
    mean = float(np.mean(probabilities))
    return ImageScore(
        image=str(path), stego_probability=mean,
        decision="stego" if mean >= DECISION_THRESHOLD else "cover",
        tiles=[{"x": int(x), "y": int(y), "stego_probability": float(p)}
               for (y, x), p in zip(positions, probabilities)],
        width=int(width), height=int(height))


def score_images(runner, paths, batch_size: int = 16, on_error=None) -> list:
    """Score each image in `paths`; returns a list of `ImageScore` in the same order.

    With `on_error=None` the first bad image raises `InputError`; otherwise
    `on_error(path, error)` is called and the image is skipped.
    """
    results = []
    for path in paths:
        try:
            results.append(score_image(runner, Path(path), batch_size))
        except InputError as exc:
            if on_error is None:
                raise
            on_error(path, exc)
    return results
