"""Train / validation / test splits by source photograph, seeded and reproducible (no TensorFlow).

Tiles of one photograph are strongly correlated, so the split is made over photographs,
never over tiles: no photo contributes tiles to two splits. Photos with and without a
JPEG history are shuffled separately and interleaved, so that every split gets both
kinds when there are enough of each.
"""

from __future__ import annotations

import zlib

import numpy as np

from edgetrunc.errors import InputError

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.6, 0.15, 0.25)


def _names_and_groups(covers):
    names, groups = [], []
    for cover in covers:
        if isinstance(cover, str):
            names.append(cover)
            groups.append(False)
        else:
            names.append(cover.name)
            groups.append(bool(getattr(cover, "jpeg_history", False)))
    return names, groups


def split_counts(n: int, fractions) -> tuple[int, int, int]:
    """Number of photos in train, val and test; val and test get at least one when n >= 3."""
    f_train, f_val, f_test = fractions
    n_test = int(round(n * f_test))
    n_val = int(round(n * f_val))
    if n >= 3:
        n_test = max(n_test, 1) if f_test > 0 else 0
        n_val = max(n_val, 1) if f_val > 0 else 0
    n_test = min(n_test, n)
    n_val = min(n_val, n - n_test)
    if f_train > 0 and n - n_test - n_val < 1 and n >= 1:
        if n_val > 0 and n_val >= n_test:
            n_val -= 1
        elif n_test > 0:
            n_test -= 1
    return n - n_val - n_test, n_val, n_test


def split_sources(covers, seed: int = 0, fractions=DEFAULT_FRACTIONS) -> dict[str, list[str]]:
    """Split photos (a list of `Cover` or of names) into `{"train", "val", "test"}` name lists.

    The same covers, seed and fractions always give the same split; names in each list
    are sorted. With fewer than 3 photos, validation and test may be empty.
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) < 0 or not 0.999 <= sum(fractions) <= 1.001:
        raise InputError(f"split fractions must be three numbers >= 0 summing to 1 "
                         f"(train, val, test); got {fractions}")
    names, jpeg = _names_and_groups(covers)
    if not names:
        raise InputError("covers: no photos to split")
    if len(set(names)) != len(names):
        duplicate = sorted({n for n in names if names.count(n) > 1})[0]
        raise InputError(f"covers: photo name {duplicate!r} appears twice; names must be unique")
    order = sorted(range(len(names)), key=lambda i: names[i])
    fingerprint = zlib.crc32("\n".join(sorted(names)).encode("utf-8", "surrogateescape"))
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, fingerprint])
    strata = [[i for i in order if jpeg[i] == flag] for flag in (False, True)]
    strata = [[s[j] for j in rng.permutation(len(s))] for s in strata if s]
    sequence, taken = [], [0] * len(strata)
    while len(sequence) < len(names):
        k = min((taken[g] / len(strata[g]), g) for g in range(len(strata))
                if taken[g] < len(strata[g]))[1]
        sequence.append(strata[k][taken[k]])
        taken[k] += 1
    n_train, n_val, n_test = split_counts(len(names), fractions)
    test = sequence[:n_test]
    val = sequence[n_test:n_test + n_val]
    train = sequence[n_test + n_val:]
    return {"train": sorted(names[i] for i in train), "val": sorted(names[i] for i in val),
            "test": sorted(names[i] for i in test)}
