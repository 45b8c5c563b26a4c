"""Scoring on the device: the one artifact scorer, preprocessing, tiling, per-image probability.

`score_batch(runner, x)` is the stego probability `[N]` of a batch under any runner (TFLite,
ONNX, recorded or Keras), run in batches (`run_batched` / `iter_batches` give the raw
outputs); `probability_from_outputs` turns one runner's outputs into that probability with
the one rule of `edgetrunc.metrics.stego_probability`.

Preprocessing is the training one (`edgetrunc.data.images`): 8-bit pixels as float32
0..255, NHWC, grayscale (luma) or RGB as the model's input says (`edgetrunc.data.geometry`).
An image larger than the model input (its square size; 256x256 for a free size) is split into
non-overlapping tiles, never resized; a right or bottom border narrower than one tile is
dropped (and reported). A tile's stego probability is the detector's softmax output for
class 1 (stego); the image score is the mean over its tiles, and the decision is "stego"
when that mean is >= `metrics.DECISION_THRESHOLD` (0.5). No TensorFlow.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgetrunc.data.geometry import ImageGeometry, image_geometry, why_not_image
from edgetrunc.data.images import TILE, load_image, tile_image, tile_positions, to_model_input
from edgetrunc.errors import InputError
from edgetrunc.metrics import DECISION_THRESHOLD, is_detector_shape, stego_probability

DEFAULT_BATCH_SIZE = 16


@dataclass
class ImageScore:
    image: str
    stego_probability: float
    decision: str
    tiles: list = field(default_factory=list)  # [{"x", "y", "stego_probability"}]
    width: int = 0
    height: int = 0
    tile: int = TILE  # the tile size in pixels (the model's square input)

    @property
    def dropped_border(self) -> tuple:
        """`(right, bottom)` pixels not covered by any tile."""
        if not self.tiles:
            return (0, 0)
        tile = self.tile
        covered_w = max(t["x"] for t in self.tiles) + tile
        covered_h = max(t["y"] for t in self.tiles) + tile
        return (self.width - covered_w, self.height - covered_h)

    def to_dict(self) -> dict:
        return {"image": self.image, "stego_probability": self.stego_probability,
                "decision": self.decision, "tiles": list(self.tiles)}


def runner_geometry(runner) -> ImageGeometry:
    """The runner's `ImageGeometry` (`image_geometry`), or a one-line `InputError`."""
    if runner is None:
        return ImageGeometry(TILE, 1)
    geometry = image_geometry(runner)
    if geometry is None:
        raise InputError(f"{runner.name}: {why_not_image(runner)}; expected one square image "
                         "input [N, S, S, 1 or 3] (images are tiled at the model's input size)")
    return geometry


def preprocess_image(path, tile: int = TILE, channels: int = 1):
    """Read `path` and cut it into model inputs.

    Returns `(batch float32 [N, tile, tile, channels] in 0..255, positions [(y, x)], (height,
    width))`. Raises `InputError` (one line naming the file) for non-images, 16-bit or
    multi-frame images and images smaller than one tile.
    """
    pixels = _read_pixels(path, tile, channels)
    tiles, positions = tile_image(pixels, size=tile)
    return to_model_input(tiles), positions, pixels.shape[:2]


def probability_from_outputs(outputs: dict, name: str = "", activation: str | None = None,
                             clip: bool = True) -> np.ndarray:
    """Stego probability `[N]` from a runner's outputs (the first output, `[N, 2]` or `[N, 1]`).

    The rule is `edgetrunc.metrics.stego_probability`: a softmax output is used as is;
    logits (rows not summing to 1, or `activation` "linear", the runner's
    `output_activation`) get a softmax first; a single column is the probability itself,
    or a logit that gets a sigmoid when the model's last op is known to be linear.
    `clip=True` (default) returns float32 clipped to [0, 1] (int8 outputs dequantize a few
    steps past 1); `clip=False` returns the float64 values as they are. A missing output or
    another shape raises `InputError` naming `name`.
    """
    if not outputs:
        raise InputError(f"{name}: the model produced no output")
    values = np.asarray(next(iter(outputs.values())), dtype=np.float64)
    if not is_detector_shape(values.shape):
        raise InputError(f"{name}: expected a detector output [N, 2] (cover, stego); "
                         f"got shape {list(values.shape)}")
    probability = stego_probability(values, activation)
    return np.clip(probability, 0.0, 1.0).astype(np.float32) if clip else probability


def runner_activation(runner) -> str | None:
    """The last activation of a runner's first output ("softmax", "sigmoid", "linear"), if known."""
    metadata = getattr(runner, "metadata", None)  # duck-typed runners may not say
    meta = metadata() if callable(metadata) else None
    return meta.output_activation if meta is not None else None


def iter_batches(runner, x: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE, progress=None):
    """Yield `runner.infer` of `x`, `batch_size` inputs at a time.

    `progress`, if given, wraps the sequence of batch starts (e.g. `edgetrunc._log.progress`).
    """
    starts = range(0, len(x), int(batch_size))
    for start in (progress(starts) if progress is not None else starts):
        yield runner.infer(x[start:start + int(batch_size)])


def run_batched(runner, x: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE, progress=None) -> dict:
    """`{output name: array}` of `runner` on all of `x`, run `batch_size` inputs at a time."""
    parts = list(iter_batches(runner, x, batch_size, progress))
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]} if parts else {}


def score_batch(runner, batch: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE,
                clip: bool = True) -> np.ndarray:
    """Stego probability `[N]` of a float32 NHWC batch under any runner (artifact or Keras).

    Runs `batch_size` inputs at a time; each batch's outputs go through
    `probability_from_outputs` with the runner's `output_activation` (`clip` as there).
    """
    activation = runner_activation(runner)
    parts = [probability_from_outputs(outputs, runner.name, activation, clip)
             for outputs in iter_batches(runner, batch, batch_size)]
    if parts:
        return np.concatenate(parts)
    return np.zeros((0,), np.float32 if clip else np.float64)


def _read_pixels(path, tile: int, channels: int = 1) -> np.ndarray:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pixels = load_image(path, min_size=tile, channels=channels)
    if caught:
        from edgetrunc import _log

        for item in caught:
            _log.warn(str(item.message))
    return pixels


def score_image(runner, path, batch_size: int = DEFAULT_BATCH_SIZE) -> ImageScore:
    """Score one image, `batch_size` tiles at a time (memory stays bounded for large photos)."""
    tile, channels = runner_geometry(runner)
    pixels = _read_pixels(path, tile, channels)
    height, width = pixels.shape[:2]
    positions = tile_positions(height, width, tile)
    activation = runner_activation(runner)
    parts = []
    for start in range(0, len(positions), batch_size):
        tiles = np.stack([pixels[y:y + tile, x:x + tile] for y, x in positions[start:start + batch_size]])
        parts.append(probability_from_outputs(runner.infer(to_model_input(tiles)), runner.name, activation))
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
        width=int(width), height=int(height), tile=int(tile))


def score_images(runner, paths, batch_size: int = DEFAULT_BATCH_SIZE, on_error=None) -> list:
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
