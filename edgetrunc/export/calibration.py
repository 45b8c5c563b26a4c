"""The images `convert` quantizes and evaluates int8 artifacts with.

`calibration_pairs` returns cover/stego tiles (the embedded photos or a folder of covers),
cropped to the model's input size: the train split (every `CALIBRATION_STRIDE` pixels, at
most `CALIBRATION_PAIRS` pairs) for calibration, the held-out test split (every
`EVALUATION_STRIDE` pixels) for comparing int8 decisions with Keras.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetrunc.errors import InputError

CALIBRATION_PAIRS = 64
CALIBRATION_STRIDE = 128
EVALUATION_STRIDE = 64


def fit_to_model(x, shape):
    """Crop 256x256x1 tiles to the model's input size `(H, W, C)` (for smaller inputs)."""
    h, w, c = shape
    h = h or x.shape[1]
    w = w or x.shape[2]
    if h > x.shape[1] or w > x.shape[2] or (c or 1) != x.shape[3]:
        raise InputError(f"calibration: tiles {list(x.shape[1:])} do not fit the model input "
                         f"{[h, w, c]}")
    return np.ascontiguousarray(x[:, :h, :w, :])


def calibration_pairs(calibration, shape, split="train", stride=CALIBRATION_STRIDE,
                      max_pairs=CALIBRATION_PAIRS, seed=0):
    """Cover/stego tiles for calibration ("embedded" or a folder of covers)."""
    from edgetrunc.data.dataset import load_pairs

    covers = "embedded" if calibration in (None, "embedded") else calibration
    if covers != "embedded" and not Path(covers).is_dir():
        raise InputError(f"--calibration {covers}: expected 'embedded' or a folder of images")
    try:
        pairs = load_pairs(covers=covers, split=split, payload=0.4, seed=seed,
                           max_pairs=max_pairs, stride=stride)
    except InputError:
        if split == "all":
            raise
        pairs = load_pairs(covers=covers, split="all", payload=0.4, seed=seed,
                           max_pairs=max_pairs, stride=stride)
    pairs.x = fit_to_model(pairs.x, shape)
    return pairs


def held_out_pairs(calibration, shape):
    """The held-out test pairs int8 decisions are compared with Keras on."""
    return calibration_pairs(calibration, shape, split="test", stride=EVALUATION_STRIDE,
                             max_pairs=None, seed=0)
