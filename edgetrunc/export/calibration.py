"""The images `convert` quantizes and evaluates int8 artifacts with.

`calibration_pairs` returns cover/stego tiles (the embedded photos or a folder of covers)
cut at the model's geometry (`edgetrunc.data.geometry.ImageGeometry`: its square input size,
256 for a free-size input, and 1 or 3 channels): the train split (every half tile, at most
`CALIBRATION_PAIRS` pairs) for calibration, the held-out test split (every quarter tile, at
most `HELD_OUT_VALUES` input values: 128 pairs of 256x256 gray tiles, more of smaller tiles)
for comparing int8 decisions with Keras. Photos smaller than a tile are skipped with a
warning; none left is one error naming the size.
"""

from __future__ import annotations

from pathlib import Path

from edgetrunc.errors import InputError

CALIBRATION_PAIRS = 64
HELD_OUT_VALUES = 128 * 256 * 256  # pairs x tile x tile x channels: bounds time and memory


def calibration_stride(tile: int) -> int:
    """Tile stride of the calibration pairs: half a tile (128 for 256x256)."""
    return max(1, tile // 2)


def evaluation_stride(tile: int) -> int:
    """Tile stride of the held-out pairs: a quarter tile (64 for 256x256)."""
    return max(1, tile // 4)


def calibration_pairs(calibration, geometry, split="train", stride=None,
                      max_pairs=CALIBRATION_PAIRS, seed=0):
    """Cover/stego tiles of `geometry` for calibration ("embedded" or a folder of covers)."""
    from edgetrunc.data.dataset import load_pairs

    covers = "embedded" if calibration in (None, "embedded") else calibration
    if covers != "embedded" and not Path(covers).is_dir():
        raise InputError(f"--calibration {covers}: expected 'embedded' or a folder of images")
    stride = stride or calibration_stride(geometry.tile)
    options = {"covers": covers, "payload": 0.4, "seed": seed, "max_pairs": max_pairs,
               "stride": stride, "tile": geometry.tile, "channels": geometry.channels}
    try:
        return load_pairs(split=split, **options)
    except InputError as exc:
        if split == "all" or "holds no photo" not in str(exc):
            raise
        return load_pairs(split="all", **options)


def held_out_pairs(calibration, geometry):
    """The held-out test pairs int8 decisions are compared with Keras on."""
    max_pairs = max(1, HELD_OUT_VALUES // (geometry.tile ** 2 * geometry.channels))
    return calibration_pairs(calibration, geometry, split="test",
                             stride=evaluation_stride(geometry.tile), max_pairs=max_pairs, seed=0)
