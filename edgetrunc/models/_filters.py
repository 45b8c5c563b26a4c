"""Fixed high-pass filters of spatial steganalysis: the KV filter and small SRM banks.

Each filter is returned as exact rational coefficients (integer numerators over a
denominator) so that exporters can keep them exact; every filter sums to zero (no DC).
"""

from __future__ import annotations

import numpy as np

MAX_STEPS = 127  # an exact int8 weight is at most 127 steps

# Ker-Boehme 5x5 "KV" filter (Qian et al. 2015, Xu et al. 2016), numerators over 12.
KV = (np.array(
    [[-1, 2, -2, 2, -1],
     [2, -6, 8, -6, 2],
     [-2, 8, -12, 8, -2],
     [2, -6, 8, -6, 2],
     [-1, 2, -2, 2, -1]]), 12)

# 3x3 "KB" filter (SRM, Fridrich & Kodovsky 2012), numerators over 4.
KB = (np.array(
    [[-1, 2, -1],
     [2, -4, 2],
     [-1, 2, -1]]), 4)

# Second-order horizontal / vertical residuals, numerators over 2.
SECOND_H = (np.array([[1, -2, 1]]), 2)
SECOND_V = (np.array([[1], [-2], [1]]), 2)

# 3x3 "EDGE" residuals (SRM), numerators over 4.
EDGE3_H = (np.array(
    [[-1, 2, -1],
     [2, -4, 2],
     [0, 0, 0]]), 4)
EDGE3_V = (np.array(
    [[-1, 2, 0],
     [2, -4, 0],
     [-1, 2, 0]]), 4)

_DIRECTIONS = ((0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1))


def _taps(offsets_values, size=5):
    out = np.zeros((size, size), dtype=np.int64)
    for (dy, dx), value in offsets_values:
        out[size // 2 + dy, size // 2 + dx] += value
    return out


def _srm30():
    """The 30 basic high-pass filters of the spatial rich model (Ye-Net's front end): 8 first
    order (over 1), 4 second order (over 2), 8 third order (over 3), SQUARE 3x3 (KB) and its 4
    EDGE halves (over 4), SQUARE 5x5 (KV) and its 4 EDGE halves (over 12)."""
    first = [(_taps([((0, 0), -1), (d, 1)]), 1) for d in _DIRECTIONS]
    second = [(_taps([((-dy, -dx), 1), ((0, 0), -2), ((dy, dx), 1)]), 2)
              for dy, dx in _DIRECTIONS[:4]]
    third = [(_taps([((-dy, -dx), -1), ((0, 0), 3), ((dy, dx), -3), ((2 * dy, 2 * dx), 1)]), 3)
             for dy, dx in _DIRECTIONS]
    edge3 = np.array(EDGE3_H[0])
    edge5 = np.array(KV[0]) * (np.arange(5) < 3)[:, None]
    edges3 = [(np.rot90(edge3, k), 4) for k in range(4)]
    edges5 = [(np.rot90(edge5, k), 12) for k in range(4)]
    return tuple(first + second + third + [KB] + edges3 + [KV] + edges5)


BANKS = {
    "kv": (KV,),
    "srm6": (KV, KB, SECOND_H, SECOND_V, EDGE3_H, EDGE3_V),
    "srm30": _srm30(),
}


def _centered(numerators, size):
    out = np.zeros((size, size), dtype=np.int64)
    h, w = numerators.shape
    top, left = (size - h) // 2, (size - w) // 2
    out[top:top + h, left:left + w] = numerators
    return out


def high_pass_bank(name: str = "kv", size: int = 5):
    """Return `(kernel, numerators, denominators)` for the named bank.

    `kernel` is float32 `[size, size, 1, n]` ready for `Conv2D`; `numerators` is the
    integer kernel of the same shape and `denominators` the per-filter divisors, so that
    `kernel[..., i] == numerators[..., i] / denominators[i]` exactly.
    """
    if name not in BANKS:
        raise ValueError(
            f"front_end must be one of {sorted(BANKS)}. Received: front_end={name!r}"
        )
    filters = BANKS[name]
    numerators = np.stack([_centered(n, size) for n, _ in filters], axis=-1)[:, :, None, :]
    denominators = np.array([d for _, d in filters], dtype=np.int64)
    kernel = (numerators / denominators).astype(np.float32)
    return kernel, numerators, denominators


def exact_steps(weights: np.ndarray, axis: int, tolerance: float = 1e-5) -> np.ndarray | None:
    """The largest step per output channel (`axis`) of which every weight is an integer
    multiple of at most `MAX_STEPS` steps, or None when some channel has no such step."""
    w = np.moveaxis(np.asarray(weights, np.float64), axis, 0).reshape(weights.shape[axis], -1)
    steps = []
    for row in w:
        peak = float(np.max(np.abs(row)))
        if peak == 0:
            steps.append(1.0)
            continue
        for n in range(1, MAX_STEPS + 1):
            ratio = row / (peak / n)
            if np.max(np.abs(ratio - np.round(ratio))) <= tolerance * n:
                steps.append(peak / n)
                break
        else:
            return None
    return np.asarray(steps)
