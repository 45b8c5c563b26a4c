"""Cover/stego tile pairs for training, evaluation, calibration and parity (no TensorFlow).

`load_pairs` gives a fixed, reproducible `PairSet` of one split: every `tile` x `tile` tile
(256 unless told otherwise: the model's input size, `edgetrunc.data.geometry`) with
`channels` 1 (luma) or 3 (RGB) of the split's photos (stride one tile unless told otherwise) and its LSB-matching stego, the cover at
index 2i and its stego at 2i+1. `TrainingTiles` holds the training photos' cover tiles and
`pair_batches` draws one epoch of pair batches from them: a fresh message and a random
rotation/flip (one of the 8) per pair every epoch, cover and stego always side by side in
the same batch. Every random stream is seeded, so the same arguments give the same pixels.
`stego` picks the embedding: LSB matching by default, or HILL / S-UNIWARD / WOW from the
stego cache (`edgetrunc.data.stego_cache`; K messages per training tile, cycled by epoch).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from edgetrunc.data.covers import Cover, resolve_covers
from edgetrunc.data.images import TILE, tile_positions
from edgetrunc.data.splits import DEFAULT_FRACTIONS, SPLITS, split_sources
from edgetrunc.data.stego import embed_lsb_matching
from edgetrunc.data.stego_cache import as_settings, pixel_digest
from edgetrunc.data.stego_tiles import pair_stegos, training_stego
from edgetrunc.errors import InputError

MAX_TILE_POSITIONS = 2_000_000  # tiles a run lists (their corners), whatever the stride
MAX_IN_MEMORY_BYTES = 2**30  # tiles or pairs held in memory at once (else: stream, or fewer)


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
    name = source.encode("utf-8", "surrogateescape")  # a file name's undecodable bytes as they are
    entropy = [int(seed) & 0xFFFFFFFF, zlib.crc32(name), int(position[0]), int(position[1]),
               int(round(payload * 1_000_000)), int(epoch) & 0xFFFFFFFF]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


def dihedral(tile: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 rotations/flips of a square tile (k in 0..7; 0 is the identity)."""
    out = np.rot90(tile, k % 4)
    return np.fliplr(out) if k >= 4 else out


@dataclass
class PairSet:
    """Cover/stego pairs: `x` float32 `[2N, tile, tile, channels]` in 0..255, `y` int64 `[2N]`.

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


def select_split(covers, split: str, seed: int = 0, fractions=DEFAULT_FRACTIONS,
                 tile: int = TILE, channels: int = 1):
    """The covers of one split (`train`, `val`, `test`, or `all`) and the whole split map."""
    covers = resolve_covers(covers, channels=channels, min_size=tile)
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


def _channels(covers) -> int:
    return 3 if covers and len(covers[0].shape) == 3 else 1


def check_in_memory(size: int, what: str, param: str) -> None:
    """Refuse `size` bytes of `what` held in memory at once beyond `MAX_IN_MEMORY_BYTES`."""
    if size > MAX_IN_MEMORY_BYTES:
        raise InputError(f"{param}: {size / 2**30:.1f} GiB of {what} would be held in memory, over "
                         f"{MAX_IN_MEMORY_BYTES // 2**30} GiB; lower it or give a larger stride "
                         "(training can stream the covers from disk instead)", param=param)


def round_robin(per_source: list[list], limit: int | None, rng) -> list:
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
               fractions=DEFAULT_FRACTIONS, tile: int = TILE, channels: int = 1,
               stego=None) -> PairSet:
    """Cover tiles of one split and their stego, as a reproducible `PairSet`.

    Args:
        covers: `"embedded"`, a folder of images, or a list of `Cover`.
        split: `"train"`, `"val"`, `"test"` or `"all"` (photos are split by `split_sources`).
        payload: bits per pixel, in (0, 1].
        seed: seeds the split and the embedding.
        max_pairs: keep at most this many pairs, drawn round-robin over the photos so each
            photo stays represented (seeded).
        stride: tile stride in pixels (default `tile`: non-overlapping tiles).
        tile, channels: the model's input geometry (`edgetrunc.data.geometry`): square tiles
            of `tile` pixels, 1 channel (luma) or 3 (RGB; LSB matching changes every channel).
        stego: the embedding: None or `"lsbm"` (LSB matching), `"hill"`, `"suniward"`,
            `"wow"`, or `StegoSettings` (embedding, cache folder, workers). A tile that
            cannot carry the payload is left out with a warning.
    """
    payload = check_payload(payload)
    settings = as_settings(stego)
    if max_pairs is not None and int(max_pairs) < 1:
        raise InputError(f"max_pairs must be >= 1; got {max_pairs}", param="max_pairs")
    if stride is not None and int(stride) < 1:
        raise InputError(f"stride must be >= 1; got {stride}", param="stride")
    selected, _ = select_split(covers, split, seed, fractions, tile, channels)
    items = tile_items(selected, stride, max_pairs, np.random.default_rng([int(seed) & 0xFFFFFFFF, 1]),
                        tile)
    order = {c.name: k for k, c in enumerate(selected)}
    items.sort(key=lambda item: (order[item[0].name], item[1]))
    items, stegos = _with_stego(items, payload, seed, settings, tile, split)
    check_in_memory(2 * len(items) * tile * tile * channels * 4, "cover/stego pairs", "max_pairs")
    x = np.empty((2 * len(items), tile, tile, channels), np.float32)
    sources, positions = [], []
    for i, (cover, (top, left)) in enumerate(items):
        x[2 * i] = _hwc(cover.pixels[top:top + tile, left:left + tile])
        x[2 * i + 1] = _hwc(stegos[i])
        sources += [cover.name, cover.name]
        positions += [(top, left), (top, left)]
    y = np.tile(np.array([0, 1], np.int64), len(items))
    return PairSet(x=x, y=y, sources=sources, positions=positions, payload=payload,
                   seed=int(seed), split=split, photos=[c.name for c in selected])


def _with_stego(items, payload, seed, settings, tile, split):
    """`(items, stegos)`: the stego tile of each item; items that cannot carry are left out."""
    covers = [cover.pixels[t:t + tile, l:l + tile] for cover, (t, l) in items]
    if not settings.cached:
        return items, [embed_lsb_matching(c, payload, tile_seed(seed, cover.name, pos, payload))
                       for c, (cover, pos) in zip(covers, items)]
    stegos = pair_stegos(items, covers, payload, seed, settings)
    kept = [i for i, stego in enumerate(stegos) if stego is not None]
    if items and not kept:
        raise InputError(f"payload: {settings.embedding} cannot carry {payload} bits per pixel in "
                         f"any tile of the {split} split", param="payload")
    return [items[i] for i in kept], [stegos[i] for i in kept]


@dataclass
class TrainingTiles:
    """Cover tiles (uint8 `[M, tile, tile]`, or `[M, tile, tile, 3]` RGB) of the training
    photos with their photo names."""

    tiles: np.ndarray
    sources: list
    positions: list
    digests: list = field(default_factory=list)  # each tile's cover photo (stego cache keys)

    def __len__(self):
        return int(self.tiles.shape[0])

    @property
    def tile_size(self) -> int:
        return int(self.tiles.shape[1])

    @property
    def channels(self) -> int:
        return int(self.tiles.shape[3]) if self.tiles.ndim == 4 else 1

    def subset(self, indices) -> "TrainingTiles":
        """The tiles at `indices`, in that order."""
        indices = list(indices)
        return TrainingTiles(tiles=self.tiles[indices], sources=[self.sources[i] for i in indices],
                             positions=[self.positions[i] for i in indices],
                             digests=[self.digests[i] for i in indices] if self.digests else [])

    def tiles_per_photo(self) -> dict:
        counts: dict[str, int] = {}
        for name in self.sources:
            counts[name] = counts.get(name, 0) + 1
        return counts


def _hwc(pixels: np.ndarray) -> np.ndarray:
    """`[H, W]` gray pixels as `[H, W, 1]`; `[H, W, C]` as they are."""
    return pixels[..., None] if pixels.ndim == 2 else pixels


def tile_items(covers, stride, limit, rng, tile: int = TILE):
    """`(cover, (top, left))` of every full tile, at most `limit` drawn round-robin over photos;
    more than `MAX_TILE_POSITIONS` tiles in all are refused before they are listed."""
    step = int(stride or tile)
    count = sum(max(0, (c.shape[0] - tile) // step + 1) * max(0, (c.shape[1] - tile) // step + 1)
                for c in covers)
    if count > MAX_TILE_POSITIONS:
        raise InputError(f"stride: {count} tiles of {tile}x{tile} at a stride of {step}, over the "
                         f"{MAX_TILE_POSITIONS} a run lists; give a larger stride", param="stride")
    per_source = [[(cover, pos) for pos in tile_positions(cover.shape[0], cover.shape[1], tile,
                                                          stride)]
                  for cover in covers]
    return round_robin(per_source, limit, rng)


def training_tiles(covers: list[Cover], stride: int | None = None,
                   max_tiles: int | None = None, seed: int = 0, tile: int = TILE) -> TrainingTiles:
    """All `tile` x `tile` tiles of `covers` at `stride` (default one tile); `max_tiles` keeps a
    round-robin subset. The tiles have the covers' channels."""
    items = tile_items(covers, stride, max_tiles, np.random.default_rng([int(seed) & 0xFFFFFFFF, 2]),
                        tile)
    if not items:
        raise InputError(f"covers: no {tile}x{tile} tile in the training photos")
    check_in_memory(len(items) * tile * tile * _channels(covers), "training tiles", "max_tiles")
    tiles = np.stack([c.pixels[t:t + tile, l:l + tile] for c, (t, l) in items])
    digests = {c.name: pixel_digest(c.pixels) for c in covers}
    return TrainingTiles(tiles=tiles, sources=[c.name for c, _ in items],
                         positions=[pos for _, pos in items],
                         digests=[digests[c.name] for c, _ in items])


def pair_batches(tiles: TrainingTiles, payload: float, batch_pairs: int, seed: int = 0,
                 epoch: int = 0, augment: bool = True, drop_remainder: bool = True, stego=None):
    """One epoch of `(x float32 [2B, tile, tile, channels], y int64 [2B])` pair batches.

    Pairs are shuffled per epoch; each gets a fresh message (seeded by seed, photo,
    position, payload and epoch) and, with `augment`, one of the 8 rotations/flips applied
    to the cover before embedding. Sample 2i is a cover, 2i+1 its stego. With a cached
    embedding (`stego`: a content-adaptive name or `StegoSettings`), the stego is message
    `epoch mod K` of the tile from the stego cache, turned with its cover.
    """
    payload = check_payload(payload)
    settings = as_settings(stego)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 3, int(epoch)])
    order = rng.permutation(len(tiles))
    flips = rng.integers(0, 8, len(tiles)) if augment else np.zeros(len(tiles), int)
    n_batches = len(order) // batch_pairs if drop_remainder else -(-len(order) // batch_pairs)
    labels = np.tile(np.array([0, 1], np.int64), batch_pairs)
    for b in range(n_batches):
        chosen = order[b * batch_pairs:(b + 1) * batch_pairs]
        x = np.empty((2 * len(chosen), *_hwc(tiles.tiles[0]).shape), np.float32)
        for i, j in enumerate(chosen):
            cover = np.ascontiguousarray(_hwc(dihedral(tiles.tiles[j], int(flips[j]))))
            x[2 * i] = cover
            x[2 * i + 1] = _hwc(dihedral(training_stego(tiles, j, payload, seed, settings, epoch),
                                         int(flips[j]))) if settings.cached else embed_lsb_matching(
                cover, payload, tile_seed(seed, tiles.sources[j], tiles.positions[j], payload,
                                          epoch * 8 + int(flips[j])))
        yield x, labels[:2 * len(chosen)].copy()
