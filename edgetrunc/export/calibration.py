"""The images `convert` quantizes and evaluates int8 artifacts with.

`calibration_pairs` returns cover/stego tiles (the embedded photos or a folder of covers)
cut at the model's geometry (`edgetrunc.data.geometry.ImageGeometry`: its square input size,
256 for a free-size input, and 1 or 3 channels): the train split (every half tile, at most
`CALIBRATION_PAIRS` pairs) for calibration, the held-out test split (every quarter tile, at
most `HELD_OUT_VALUES` input values: 128 pairs of 256x256 gray tiles, more of smaller tiles
up to `MAX_HELD_OUT_PAIRS`) for comparing int8 decisions with Keras. Photos smaller than a
tile are skipped with a warning; none left is one error naming the size. Given the model, both counts also shrink
with its size (`activation_values`: what one image costs through every layer), down to
`MIN_CALIBRATION_PAIRS` / `MIN_HELD_OUT_PAIRS`, so that a deep or large-input net is not
calibrated and checked on as many images as the small shipped one (tlunet keeps 64 / 128);
`evaluation_batch` bounds the images of one held-out batch the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgetrunc.errors import InputError

CALIBRATION_PAIRS = 64
HELD_OUT_VALUES = 128 * 256 * 256  # pairs x tile x tile x channels: bounds time and memory
# Layer outputs summed over every image (about 3.5 M values per image for tlunet): bounds the
# converters' calibration and the held-out int8 check of bigger nets.
CALIBRATION_ACTIVATIONS = 2 ** 29
HELD_OUT_ACTIVATIONS = 2 ** 30
MIN_CALIBRATION_PAIRS = 16
MIN_HELD_OUT_PAIRS = 32
MAX_HELD_OUT_PAIRS = 512  # small tiles: enough pairs for the agreement rule, not every tile
EVALUATION_BATCH = 16
BATCH_ACTIVATIONS = 2 ** 27  # layer outputs of one held-out batch (tlunet: 16 images)


def activation_values(model, geometry) -> int:
    """Values one image produces through every layer (free dimensions taken at the tile size)."""
    from edgetrunc.keras.runner import layer_outputs

    total = 0
    for _, outputs in layer_outputs(model):
        for output in outputs if isinstance(outputs, (list, tuple)) else [outputs]:
            size = 1
            for dim in tuple(output.shape)[1:]:
                size *= int(dim) if dim is not None else geometry.tile
            total += size
    return max(1, total)


def _pairs_within(budget: int, model, geometry, lowest: int, highest: int) -> int:
    if model is None:
        return highest
    return max(lowest, min(highest, budget // (2 * activation_values(model, geometry))))


def evaluation_batch(model, geometry) -> int:
    """Images per batch of the held-out int8 check: `EVALUATION_BATCH`, fewer for a net whose
    layer outputs of one image are many (`BATCH_ACTIVATIONS` in one batch), down to 1."""
    return max(1, min(EVALUATION_BATCH, BATCH_ACTIVATIONS // activation_values(model, geometry)))


def calibration_stride(tile: int) -> int:
    """Tile stride of the calibration pairs: half a tile (128 for 256x256)."""
    return max(1, tile // 2)


def evaluation_stride(tile: int) -> int:
    """Tile stride of the held-out pairs: a quarter tile (64 for 256x256)."""
    return max(1, tile // 4)


def calibration_pairs(calibration, geometry, split="train", stride=None,
                      max_pairs=CALIBRATION_PAIRS, seed=0, model=None):
    """Cover/stego tiles of `geometry` for calibration ("embedded" or a folder of covers);
    given the `model`, fewer for a bigger one (see the module docstring)."""
    from edgetrunc.data.dataset import load_pairs

    if split == "train":
        max_pairs = min(max_pairs, _pairs_within(CALIBRATION_ACTIVATIONS, model, geometry,
                                                 MIN_CALIBRATION_PAIRS, max_pairs))

    covers = "embedded" if calibration in (None, "embedded") else calibration
    if covers != "embedded" and not Path(covers).is_dir():
        raise InputError(f"calibration {covers}: expected 'embedded' or a folder of images",
                         param="calibration")
    stride = stride or calibration_stride(geometry.tile)
    options = {"covers": covers, "payload": 0.4, "seed": seed, "max_pairs": max_pairs,
               "stride": stride, "tile": geometry.tile, "channels": geometry.channels}
    try:
        return load_pairs(split=split, **options)
    except InputError as exc:
        if split == "all" or "holds no photo" not in str(exc):
            raise
        return load_pairs(split="all", **options)


def held_out_pairs(calibration, geometry, model=None):
    """The held-out test pairs int8 decisions are compared with Keras on (fewer for a bigger
    `model`, see the module docstring)."""
    max_pairs = max(1, min(MAX_HELD_OUT_PAIRS,
                           HELD_OUT_VALUES // (geometry.tile ** 2 * geometry.channels)))
    max_pairs = _pairs_within(HELD_OUT_ACTIVATIONS, model, geometry,
                              min(MIN_HELD_OUT_PAIRS, max_pairs), max_pairs)
    return calibration_pairs(calibration, geometry, split="test",
                             stride=evaluation_stride(geometry.tile), max_pairs=max_pairs, seed=0)


def model_calibration(calibration, geometry, model):
    """The calibration samples of `model`: `calibration_pairs` at its `geometry`, or for a
    model with several inputs one array per input (`calibration_feed`)."""
    if len(model.inputs) > 1:
        return calibration_feed(calibration, model)
    return calibration_pairs(calibration, geometry, model=model)


@dataclass
class FeedCalibration:
    """Calibration samples of a model with several inputs: `x` (`NamedInputs`, one array per
    input, Keras names and order) and what the manifest says of them."""

    x: object
    split: str
    photos: list
    payload: float | None


def calibration_feed(calibration, model, seed: int = 0) -> FeedCalibration:
    """One calibration array per input of a model with several inputs: cover/stego tiles of
    each image input's geometry (`calibration_pairs`), seeded uniform 0..255 values for every
    other input (parity's random inputs), the same number of samples for each."""
    import numpy as np

    from edgetrunc.data.geometry import geometry_of_shape
    from edgetrunc.runtime.feeds import NamedInputs

    arrays, photos, pairs = {}, [], None
    for tensor in model.inputs:
        geometry = geometry_of_shape(tuple(tensor.shape))
        if geometry is not None:
            pairs = calibration_pairs(calibration, geometry, model=model)
            arrays[tensor.name] = pairs.x
            photos += [p for p in pairs.photos if p not in photos]
    count = min((len(x) for x in arrays.values()), default=2 * MIN_CALIBRATION_PAIRS)
    rng = np.random.default_rng([seed, 0xCA1B])
    for tensor in model.inputs:
        if tensor.name not in arrays:
            shape = [int(d) if d is not None else 1 for d in tuple(tensor.shape)[1:]]
            arrays[tensor.name] = rng.integers(0, 256, size=(count, *shape)).astype(np.float32)
    feed = NamedInputs({t.name: arrays[t.name][:count] for t in model.inputs})
    return FeedCalibration(feed, pairs.split if pairs else "random", photos,
                           pairs.payload if pairs else None)
