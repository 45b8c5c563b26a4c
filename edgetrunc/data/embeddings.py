"""The embedding schemes a stego tile can come from, and the content-adaptive ones from conseal.

`EMBEDDINGS` names them: `lsbm` (LSB matching, `edgetrunc.data.stego`) and the
content-adaptive HILL, S-UNIWARD and WOW, simulated at a payload in bits per pixel by the
conseal package (its cost maps, then its ternary embedding simulator, exactly what its
`simulate_single_channel` does, with the same wet costs). `embed(cover, payload, seed,
embedding)` is the one entry point. Covers are uint8: conseal adds its +-1 change in the
cover's dtype, so a float cover would wrap (+255 where -1 was meant); every stego tile is
checked to differ from its cover by at most 1 per pixel and to stay in 0..255. A payload
the tile cannot carry (too many pixels whose every change is forbidden, e.g. a flat or
saturated tile under HILL or WOW) is an `InputError`. No TensorFlow; conseal is imported
only when a content-adaptive scheme is used.
"""

from __future__ import annotations

import warnings

import numpy as np

from edgetrunc.data.stego import embed_lsb_matching
from edgetrunc.errors import InputError

EMBEDDINGS = ("lsbm", "hill", "suniward", "wow")
DEFAULT_EMBEDDING = "lsbm"
# The wet cost each scheme's `simulate_single_channel` uses: a change at that cost is forbidden.
WET_COST = {"hill": 1e10, "suniward": 1e8, "wow": 1e8}
PAYLOAD_TOLERANCE = 0.01  # conseal's lambda search stops within payload / 1000


class PayloadTooLarge(InputError):
    """The tile cannot carry the payload under the scheme (too few pixels may change)."""


def check_embedding(name) -> str:
    """`name` when it is one of `EMBEDDINGS`; otherwise an `InputError` naming them."""
    if isinstance(name, str) and name.strip().lower() in EMBEDDINGS:
        return name.strip().lower()
    from edgetrunc._text import printable

    raise InputError(f"embedding: unknown embedding {printable(str(name))!r}; expected one of "
                     f"{', '.join(EMBEDDINGS)}", param="embedding")


def conseal_scheme(name: str):
    """The conseal module of a content-adaptive scheme (`conseal.hill`, ...)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import conseal
    except ImportError:
        raise InputError(f"embedding: {name} needs the conseal package "
                         "(pip install 'edgetrunc[full]')", param="embedding") from None
    return getattr(conseal, name)


def carried_payload(probabilities, costs, wet_cost: float) -> float:
    """The bits per pixel the change probabilities carry without a forbidden change: the
    ternary entropy per pixel, with the probability of every wet change set to 0."""
    allowed = [np.where(np.asarray(rho) < wet_cost, p, 0.0) for p, rho in zip(probabilities, costs)]
    stay = np.clip(1.0 - allowed[0] - allowed[1], 0.0, 1.0)
    bits = 0.0
    for p in (allowed[0], allowed[1], stay):
        p = p[p > 0]
        bits += float(-(p * np.log2(p)).sum())
    return bits / stay.size


def _embed_channel(cover: np.ndarray, payload: float, seed: int, scheme: str) -> np.ndarray:
    """conseal's `simulate_single_channel` (costs, change probabilities at the payload, the
    seeded draw), with the carried payload and every change checked."""
    module = conseal_scheme(scheme)
    from conseal.simulate import _ternary

    wet = WET_COST[scheme]
    costs = module.compute_cost_adjusted(x0=cover, wet_cost=wet)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # lambda search notes; judged below
        probabilities, _ = _ternary.probability(rhos=costs, alpha=payload, n=cover.size)
    carried = carried_payload(probabilities, costs, wet)
    if carried < payload * (1 - PAYLOAD_TOLERANCE):
        raise PayloadTooLarge(f"payload: {scheme} carries at most {carried:.3f} of {payload} bits "
                              "per pixel in this tile (too many pixels may not change)",
                              param="payload")
    delta = _ternary.simulate(ps=probabilities, seed=seed)
    stego = cover.astype(np.int16) + delta.astype(np.int16)
    if stego.min() < 0 or stego.max() > 255 or (np.asarray(costs[0])[delta > 0] >= wet).any() \
            or (np.asarray(costs[1])[delta < 0] >= wet).any():
        raise PayloadTooLarge(f"payload: {scheme} at {payload} bits per pixel made a forbidden "
                              "change in this tile", param="payload")
    return stego.astype(np.uint8)


def embed_adaptive(cover, payload: float, seed: int, scheme: str) -> np.ndarray:
    """The `scheme` (hill, suniward, wow) stego of the uint8 `cover` ([H, W] or [H, W, C],
    each channel embedded on its own) at `payload` bits per pixel, seeded."""
    cover = np.asarray(cover)
    if cover.dtype != np.uint8:
        raise InputError(f"cover must be uint8; got {cover.dtype}", param="cover")
    if not 0 < float(payload) <= 1:
        raise InputError(f"payload must be in (0, 1] bits per pixel; got {payload}", param="payload")
    if cover.ndim == 3 and cover.shape[-1] == 1:
        return embed_adaptive(cover[..., 0], payload, seed, scheme)[..., None]
    if cover.ndim == 2:
        return _embed_channel(np.ascontiguousarray(cover), float(payload), int(seed), scheme)
    seeds = np.random.SeedSequence(int(seed)).generate_state(cover.shape[-1], np.uint64)
    return np.stack([_embed_channel(np.ascontiguousarray(cover[..., c]), float(payload),
                                    int(seeds[c]), scheme) for c in range(cover.shape[-1])], -1)


def embed(cover, payload: float, seed: int, embedding: str = DEFAULT_EMBEDDING) -> np.ndarray:
    """The stego version of the uint8 `cover` under `embedding` at `payload` bpp, seeded."""
    embedding = check_embedding(embedding)
    if embedding == "lsbm":
        return embed_lsb_matching(cover, payload, seed)
    return embed_adaptive(cover, payload, seed, embedding)
