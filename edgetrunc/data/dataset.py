"""Cover/stego tile pairs for training, evaluation, calibration and parity (no TensorFlow).

`load_pairs` gives a fixed, reproducible `PairSet` of one split: every 256x256 tile of the
split's photos (stride 256 unless told otherwise) and its LSB-matching stego, the cover at
index 2i and its stego at 2i+1. `TrainingTiles` holds the training photos' cover tiles and
`pair_batches` draws one epoch of pair batches from them: a fresh message and a random
rotation/flip (one of the 8) per pair every epoch, cover and stego always side by side in
the same batch. Every random stream is seeded, so the same arguments give the same pixels.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from edgetrunc.data.covers import Cover, resolve_covers
from edgetrunc.data.images import TILE, tile_positions
from edgetrunc.data.splits import DEFAULT_FRACTIONS, SPLITS, split_sources
from edgetrunc.data.stego import embed_lsb_matching
from edgetrunc.errors import InputError


def check_payload(payload) -> float:
    try:
        value = float(payload)
    except (TypeError, ValueError):
        raise InputError(f"payload must be a number in (0, 1] bits per pixel; got {payload!r}",
                         param="payload") from None
    if not 0 < value <= 1:
        raise InputError(f"payload must be in (0, 1] bits per pixel; got {payload}", param="payload")
    return value


def tile_seed(seed: int, source: str, position, payload: float, epoch: int = -1) -> int:
    """The embedding seed of one tile: fixed by (seed, photo, position, payload, epoch)."""
    entropy = [int(seed) & 0xFFFFFFFF, zlib.crc32(source.encode()), int(position[0]),
               int(position[1]), int(round(payload * 1_000_000)), int(epoch) & 0xFFFFFFFF]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


def dihedral(tile: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 rotations/flips of a square tile (k in 0..7; 0 is the identity)."""
    out = np.rot90(tile, k % 4)
    return np.fliplr(out) if k >= 4 else out


@dataclass
class PairSet:
    """Cover/stego pairs: `x` float32 `[2N, 256, 256, 1]` in 0..255, `y` int64 `[2N]`.

    Sample 2i is the cover of pair i (label 0), sample 2i+1 its stego (label 1).
    `sources[k]` and `positions[k]` name the photo and tile corner of sample k.
    """

    x: np.ndarray
    y: np.ndarray
    sources: list
    positions: list
    payload: float
    seed: int
    split: str
    photos: list = field(default_factory=list)

    def __len__(self):
        return int(self.y.shape[0])

    @property
    def n_pairs(self) -> int:
        return len(self) // 2

    @property
    def covers(self) -> np.ndarray:
        return self.x[0::2]

    @property
    def stegos(self) -> np.ndarray:
        return self.x[1::2]

    def tiles_per_photo(self) -> dict:
        counts: dict[str, int] = {}
        for name in self.sources[0::2]:
            counts[name] = counts.get(name, 0) + 1
        return counts

    def describe(self) -> dict:
        return {"split": self.split, "payload": self.payload, "seed": self.seed,
                "pairs": self.n_pairs, "tiles_per_photo": self.tiles_per_photo(),
                "photos": list(self.photos)}


def select_split(covers, split: str, seed: int = 0, fractions=DEFAULT_FRACTIONS):
    """The covers of one split (`train`, `val`, `test`, or `all`) and the whole split map."""
    covers = resolve_covers(covers)
    if split not in SPLITS + ("all",):
        raise InputError(f"split must be one of {', '.join(SPLITS + ('all',))}; got {split!r}",
                         param="split")
    splits = split_sources(covers, seed=seed, fractions=fractions)
    if split == "all":
        return covers, splits
    chosen = set(splits[split])
    selected = [c for c in covers if c.name in chosen]
    if not selected:
        raise InputError(f"split {split!r} holds no photo ({len(covers)} photo(s) in all); "
                         "give more cover images or use split='all'")
    return selected, splits


def _round_robin(per_source: list[list], limit: int | None, rng) -> list:
    """Interleave each source's items (seeded order) so a limit keeps every photo represented."""
    queues = [[items[i] for i in rng.permutation(len(items))] for items in per_source]
    out, depth = [], 0
    while any(depth < len(q) for q in queues):
        for q in queues:
            if depth < len(q):
                out.append(q[depth])
        depth += 1
    return out[:limit] if limit is not None else out


def load_pairs(covers="embedded", split: str = "test", payload: float = 0.4, seed: int = 0,
               max_pairs: int | None = None, stride: int | None = None,
               fractions=DEFAULT_FRACTIONS) -> PairSet:
    """Cover tiles of one split and their LSB-matching stego, as a reproducible `PairSet`.

    Args:
        covers: `"embedded"`, a folder of images, or a list of `Cover`.
        split: `"train"`, `"val"`, `"test"` or `"all"` (photos are split by `split_sources`).
        payload: bits per pixel, in (0, 1].
        seed: seeds the split and the embedding.
        max_pairs: keep at most this many pairs, drawn round-robin over the photos so each
            photo stays represented (seeded).
        stride: tile stride in pixels (default 256: non-overlapping tiles).
    """
    payload = check_payload(payload)
    if max_pairs is not None and int(max_pairs) < 1:
        raise InputError(f"max_pairs must be >= 1; got {max_pairs}", param="max_pairs")
    if stride is not None and int(stride) < 1:
        raise InputError(f"stride must be >= 1; got {stride}", param="stride")
    selected, _ = select_split(covers, split, seed, fractions)
    items = _tile_items(selected, stride, max_pairs, np.random.default_rng([int(seed) & 0xFFFFFFFF, 1]))
    order = {c.name: k for k, c in enumerate(selected)}
    items.sort(key=lambda item: (order[item[0].name], item[1]))
    x = np.empty((2 * len(items), TILE, TILE, 1), np.float32)
    sources, positions = [], []
    for i, (cover, (top, left)) in enumerate(items):
        tile = cover.pixels[top:top + TILE, left:left + TILE]
        stego = embed_lsb_matching(tile, payload, tile_seed(seed, cover.name, (top, left), payload))
        x[2 * i, ..., 0] = tile
        x[2 * i + 1, ..., 0] = stego
        sources += [cover.name, cover.name]
        positions += [(top, left), (top, left)]
    y = np.tile(np.array([0, 1], np.int64), len(items))
    return PairSet(x=x, y=y, sources=sources, positions=positions, payload=payload,
                   seed=int(seed), split=split, photos=[c.name for c in selected])


@dataclass
class TrainingTiles:
    """Cover tiles (uint8 `[M, 256, 256]`) of the training photos with their photo names."""

    tiles: np.ndarray
    sources: list
    positions: list

    def __len__(self):
        return int(self.tiles.shape[0])

    def tiles_per_photo(self) -> dict:
        counts: dict[str, int] = {}
        for name in self.sources:
            counts[name] = counts.get(name, 0) + 1
        return counts


def _tile_items(covers, stride, limit, rng):
    """`(cover, (top, left))` of every full tile, at most `limit` drawn round-robin over photos."""
    per_source = [[(cover, pos) for pos in tile_positions(*cover.pixels.shape, TILE, stride)]
                  for cover in covers]
    return _round_robin(per_source, limit, rng)


def training_tiles(covers: list[Cover], stride: int | None = None,
                   max_tiles: int | None = None, seed: int = 0) -> TrainingTiles:
    """All tiles of `covers` at `stride` (default 256); `max_tiles` keeps a round-robin subset."""
    items = _tile_items(covers, stride, max_tiles, np.random.default_rng([int(seed) & 0xFFFFFFFF, 2]))
    if not items:
        raise InputError("covers: no 256x256 tile in the training photos")
    tiles = np.stack([c.pixels[t:t + TILE, l:l + TILE] for c, (t, l) in items])
    return TrainingTiles(tiles=tiles, sources=[c.name for c, _ in items],
                         positions=[pos for _, pos in items])


def pair_batches(tiles: TrainingTiles, payload: float, batch_pairs: int, seed: int = 0,
                 epoch: int = 0, augment: bool = True, drop_remainder: bool = True):
    """One epoch of `(x float32 [2B, 256, 256, 1], y int64 [2B])` pair batches.

    Pairs are shuffled per epoch; each gets a fresh message (seeded by seed, photo,
    position, payload and epoch) and, with `augment`, one of the 8 rotations/flips applied
    to the cover before embedding. Sample 2i is a cover, 2i+1 its stego.
    """
    payload = check_payload(payload)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 3, int(epoch)])
    order = rng.permutation(len(tiles))
    flips = rng.integers(0, 8, len(tiles)) if augment else np.zeros(len(tiles), int)
    n_batches = len(order) // batch_pairs if drop_remainder else -(-len(order) // batch_pairs)
    labels = np.tile(np.array([0, 1], np.int64), batch_pairs)
    for b in range(n_batches):
        chosen = order[b * batch_pairs:(b + 1) * batch_pairs]
        x = np.empty((2 * len(chosen), TILE, TILE, 1), np.float32)
        for i, j in enumerate(chosen):
            cover = np.ascontiguousarray(dihedral(tiles.tiles[j], int(flips[j])))
            x[2 * i, ..., 0] = cover
            x[2 * i + 1, ..., 0] = embed_lsb_matching(
                cover, payload, tile_seed(seed, tiles.sources[j], tiles.positions[j], payload,
                                          epoch * 8 + int(flips[j])))
        yield x, labels[:2 * len(chosen)].copy()
