"""Cover folders larger than memory: photos by reference, tiles by index (no TensorFlow).

A folder whose decoded pixels would exceed `STREAM_ABOVE_BYTES` (estimated from the image
headers; `stream="on"` / `"off"` decide instead) is not held in memory: `scan_covers` reads
each photo once, one at a time, and keeps a `CoverRef` (name, file, size, JPEG history,
pixel digest for the stego cache) without its pixels, so the photo split is made on names
and JPEG histories alone. `stream_training_tiles` indexes the training tiles (`StreamTiles`:
the photo and corner of each tile, no pixels) with the same round-robin `max_tiles` and
the same tile order as `edgetrunc.data.dataset.training_tiles`, so a worker's share
(tile i -> worker i mod N) is the same tiles either way. `epoch_pairs` is the read stage of
one epoch: photos in a seeded order, each read once and cut into its tiles, each tile
embedded (LSB matching, a fresh message per epoch) or fetched from the stego cache
(message `epoch mod K`) and turned by one of the 8 rotations/flips; the shuffle buffer,
batching and prefetch are `tf.data` stages (`edgetrunc.train.tf_data`). `stream_pairs`
gives a split's scored pairs (`StreamPairs`: what `load_pairs` gives, read batch by batch
when scored, never all at once); `prefill_stream` fills the stego cache for a content-
adaptive embedding a bounded chunk of photos at a time.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgetrunc.data.covers import Cover, load_cover_dir, resolve_covers
from edgetrunc.data.dataset import (PairSet, TrainingTiles, check_payload, dihedral, tile_items,
                                    tile_seed)
from edgetrunc._io import open_regular
from edgetrunc.data.images import MAX_PIXELS, image_files, load_image
from edgetrunc.data.stego import embed_lsb_matching
from edgetrunc.data.stego_cache import as_settings, pixel_digest
from edgetrunc.data.stego_tiles import pair_stegos, prefill_training, training_stego
from edgetrunc.errors import InputError

STREAM_MODES = ("auto", "on", "off")
STREAM_ABOVE_BYTES = 64 * 2**20  # decoded cover pixels above which a folder is streamed
DEFAULT_SHUFFLE_BUFFER = 1024  # pairs
PREFILL_CHUNK_TILES = 1024  # cover tiles held at once while filling the stego cache
EVAL_BATCH_PAIRS = 64


@dataclass
class CoverRef(Cover):
    """A cover photo by reference: its file (`origin`), size and JPEG history, no pixels
    (`pixels` is None, or held for covers that were in memory already)."""

    height: int = 0
    width: int = 0
    channels: int = 1
    digest: str = ""  # SHA-256 of the decoded 8-bit pixels (stego cache keys)

    @property
    def shape(self):
        return (self.height, self.width) + ((3,) if self.channels == 3 else ())

    def read(self) -> np.ndarray:
        """The photo's 8-bit pixels, read from its file (or the ones held)."""
        if self.pixels is not None:
            return self.pixels
        pixels = load_image(self.origin, min_size=0, warn_jpeg=False, channels=self.channels)
        if tuple(pixels.shape) != self.shape or pixels_changed(pixels, self.digest):
            raise InputError(f"{self.origin}: changed since the folder was read "
                             f"({self.width}x{self.height} then, {pixels.shape[1]}x"
                             f"{pixels.shape[0]} now); leave the covers alone while a run "
                             "reads them")
        return pixels

    def describe(self) -> dict:
        return {"name": self.name, "origin": self.origin, "height": self.height,
                "width": self.width, "jpeg_history": self.jpeg_history,
                "blockiness": round(float(self.blockiness), 3), "note": self.note}


def pixels_changed(pixels, digest: str) -> bool:
    return bool(digest) and pixel_digest(pixels) != digest


def _reference(cover: Cover, channels: int, keep_pixels: bool) -> CoverRef:
    return CoverRef(name=cover.name, pixels=cover.pixels if keep_pixels else None,
                    origin=cover.origin, description=cover.description,
                    jpeg_file=cover.jpeg_file, blockiness=cover.blockiness,
                    height=int(cover.pixels.shape[0]), width=int(cover.pixels.shape[1]),
                    channels=channels, digest=pixel_digest(cover.pixels))


def _is_folder(covers) -> bool:
    return isinstance(covers, (str, Path)) and str(covers) != "embedded"


def estimate_cover_bytes(folder, channels: int = 1) -> int:
    """The decoded size of a folder's images (8-bit, `channels`), from their headers only."""
    from PIL import Image

    files, _ = image_files(folder, "cover folder")
    total = 0
    for path in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with open_regular(path, "image") as handle, Image.open(handle) as img:
                    pixels = img.size[0] * img.size[1]
        except Exception:  # noqa: BLE001  (unreadable files are reported when the folder is read)
            continue
        total += pixels * channels if pixels <= MAX_PIXELS else 0  # refused when read
    return total


def use_streaming(covers, channels: int = 1, mode: str = "auto",
                  limit: int = STREAM_ABOVE_BYTES) -> bool:
    """Whether training streams `covers`: `mode` "on" / "off", or "auto": a folder whose
    decoded pixels exceed `limit` bytes (the embedded covers and lists of `Cover` are in
    memory already)."""
    if mode not in STREAM_MODES:
        raise InputError(f"stream: expected one of {', '.join(STREAM_MODES)}; got {mode!r}", param="stream")
    if mode != "auto":
        return mode == "on"
    return _is_folder(covers) and estimate_cover_bytes(covers, channels) > limit


def scan_covers(covers, channels: int = 1, min_size: int = 256) -> list[CoverRef]:
    """`CoverRef`s of `covers` (a folder, `"embedded"` or a list of `Cover`), sorted by name.

    A folder is read one photo at a time (the same checks and warnings as
    `edgetrunc.data.covers.load_cover_dir`) and no pixels are kept; covers that were in
    memory already keep theirs."""
    if not _is_folder(covers):
        return [_reference(c, channels, True) for c in resolve_covers(covers, channels, min_size)]
    return load_cover_dir(covers, min_size, channels,
                          keep=lambda cover: _reference(cover, channels, False))


@dataclass
class StreamTiles:
    """The training tiles by index: the `CoverRef` and top-left corner of each tile."""

    covers: list
    positions: list
    tile_size: int = 256
    channels: int = 1

    def __len__(self):
        return len(self.positions)

    @property
    def sources(self) -> list:
        return [c.name for c in self.covers]

    def subset(self, indices) -> "StreamTiles":
        indices = list(indices)
        return StreamTiles([self.covers[i] for i in indices],
                           [self.positions[i] for i in indices], self.tile_size, self.channels)

    def tiles_per_photo(self) -> dict:
        counts: dict[str, int] = {}
        for cover in self.covers:
            counts[cover.name] = counts.get(cover.name, 0) + 1
        return counts

    def by_photo(self) -> list[list[int]]:
        """The tile indices of each photo (photos in order of first appearance)."""
        groups: dict = {}
        for j, cover in enumerate(self.covers):
            groups.setdefault(id(cover), []).append(j)
        return list(groups.values())


def stream_training_tiles(refs: list, stride: int | None = None, max_tiles: int | None = None,
                          seed: int = 0, tile: int = 256, channels: int = 1) -> StreamTiles:
    """The index of every `tile` tile of `refs` at `stride`, in the order (and with the
    round-robin `max_tiles` subset) of `edgetrunc.data.dataset.training_tiles`."""
    items = tile_items(refs, stride, max_tiles, np.random.default_rng([int(seed) & 0xFFFFFFFF, 2]),
                       tile)
    if not items:
        raise InputError(f"covers: no {tile}x{tile} tile in the training photos")
    return StreamTiles([ref for ref, _ in items], [pos for _, pos in items], tile, channels)


def _hwc(pixels: np.ndarray) -> np.ndarray:
    return pixels[..., None] if pixels.ndim == 2 else pixels


def _one_tile(ref, position, cover_tile) -> TrainingTiles:
    return TrainingTiles(tiles=cover_tile[None], sources=[ref.name], positions=[position],
                         digests=[ref.digest])


def epoch_pairs(tiles: StreamTiles, payload: float, seed: int = 0, epoch: int = 0,
                augment: bool = True, stego=None, reads: list | None = None):
    """One epoch's pairs, one at a time: uint8 `[2, tile, tile, channels]` (cover, stego).

    Photos come in a seeded order (per epoch), each read once (appended to `reads` when
    given) and cut into its tiles; each tile gets one of the 8 rotations/flips and its stego:
    LSB matching with a fresh message (seeded as in `pair_batches`), or message
    `epoch mod K` from the stego cache, turned with its cover."""
    payload = check_payload(payload)
    settings = as_settings(stego)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 4, int(epoch)])
    flips = rng.integers(0, 8, len(tiles)) if augment else np.zeros(len(tiles), int)
    groups = tiles.by_photo()
    size = tiles.tile_size
    for g in rng.permutation(len(groups)):
        ref = tiles.covers[groups[g][0]]
        pixels = ref.read()
        if reads is not None:
            reads.append(ref.name)
        for j in groups[g]:
            (top, left), k = tiles.positions[j], int(flips[j])
            tile = pixels[top:top + size, left:left + size]
            pair = np.empty((2, size, size, tiles.channels), np.uint8)
            pair[0] = cover = np.ascontiguousarray(_hwc(dihedral(tile, k)))
            if settings.cached:
                stego_tile = training_stego(_one_tile(ref, (top, left), tile), 0, payload, seed,
                                            settings, epoch)
                pair[1] = _hwc(dihedral(stego_tile, k))
            else:
                pair[1] = embed_lsb_matching(cover, payload, tile_seed(
                    seed, ref.name, (top, left), payload, epoch * 8 + k))
            yield pair


def _chunks(tiles: StreamTiles, chunk_tiles: int):
    """Lists of tile indices, whole photos each, about `chunk_tiles` tiles a list."""
    chunk: list = []
    for group in tiles.by_photo():
        chunk += group
        if len(chunk) >= chunk_tiles:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _read_chunk(tiles: StreamTiles, chunk: list) -> TrainingTiles:
    pixels: dict = {}
    cut = []
    size = tiles.tile_size
    for j in chunk:
        ref, (top, left) = tiles.covers[j], tiles.positions[j]
        if id(ref) not in pixels:
            pixels = {id(ref): ref.read()}  # one photo at a time: chunks hold whole photos
        cut.append(pixels[id(ref)][top:top + size, left:left + size])
    return TrainingTiles(tiles=np.stack(cut), sources=[tiles.covers[j].name for j in chunk],
                         positions=[tiles.positions[j] for j in chunk],
                         digests=[tiles.covers[j].digest for j in chunk])


def prefill_stream(tiles: StreamTiles, payloads, seed: int, settings,
                   chunk_tiles: int = PREFILL_CHUNK_TILES) -> list:
    """`prefill_training` a chunk of photos at a time (at most about `chunk_tiles` cover
    tiles in memory); the indices of the tiles that carry every payload."""
    keep = []
    for chunk in _chunks(tiles, chunk_tiles):
        try:
            kept = prefill_training(_read_chunk(tiles, chunk), payloads, seed, settings)
        except InputError:  # no tile of this chunk carries; the whole set is checked below
            kept = []
        keep += [chunk[i] for i in kept]
    if not keep:
        raise InputError(f"payload: {settings.embedding} cannot carry {max(payloads)} bits per "
                         "pixel in any training tile", param="payload")
    return sorted(keep)


@dataclass
class StreamPairs:
    """The scored pairs of one split, read lazily: what `load_pairs` gives (`y`, `sources`,
    `positions`, per-photo counts), the pixels only batch by batch (`batches`)."""

    items: list  # (CoverRef, (top, left)) per pair
    payload: float
    seed: int
    split: str
    tile_size: int
    channels: int
    stego: object = None
    photos: list = field(default_factory=list)

    def __len__(self):
        return 2 * len(self.items)

    @property
    def n_pairs(self) -> int:
        return len(self.items)

    @property
    def y(self) -> np.ndarray:
        return np.tile(np.array([0, 1], np.int64), len(self.items))

    @property
    def sources(self) -> list:
        return [ref.name for ref, _ in self.items for _ in (0, 1)]

    @property
    def positions(self) -> list:
        return [tuple(pos) for _, pos in self.items for _ in (0, 1)]

    def tiles_per_photo(self) -> dict:
        counts: dict[str, int] = {}
        for ref, _ in self.items:
            counts[ref.name] = counts.get(ref.name, 0) + 1
        return counts

    def describe(self) -> dict:
        return {"split": self.split, "payload": self.payload, "seed": self.seed,
                "pairs": self.n_pairs, "tiles_per_photo": self.tiles_per_photo(),
                "photos": list(self.photos)}

    def batches(self, pairs_per_batch: int = EVAL_BATCH_PAIRS):
        """float32 `[2B, tile, tile, channels]` batches, cover 2i and its stego 2i+1, in order;
        each photo is read once per pass (its pairs are consecutive)."""
        settings, size, held = as_settings(self.stego), self.tile_size, (None, None)
        for start in range(0, len(self.items), int(pairs_per_batch)):
            chunk = self.items[start:start + int(pairs_per_batch)]
            x = np.empty((2 * len(chunk), size, size, self.channels), np.float32)
            for i, (ref, (top, left)) in enumerate(chunk):
                if held[0] is not ref:
                    held = (ref, ref.read())
                tile = held[1][top:top + size, left:left + size]
                x[2 * i] = _hwc(tile)
                x[2 * i + 1] = _hwc(training_stego(_one_tile(ref, (top, left), tile), 0,
                                                   self.payload, self.seed, settings, 0)
                                    if settings.cached else embed_lsb_matching(
                    tile, self.payload, tile_seed(self.seed, ref.name, (top, left), self.payload)))
            yield x

    def materialize(self) -> PairSet:
        """The same pairs as a `PairSet` in memory."""
        parts = list(self.batches())
        x = np.concatenate(parts) if parts else np.zeros((0, self.tile_size, self.tile_size,
                                                           self.channels), np.float32)
        return PairSet(x=x, y=self.y, sources=self.sources, positions=self.positions,
                       payload=self.payload, seed=self.seed, split=self.split,
                       photos=list(self.photos))


def stream_pairs(refs: list, splits: dict, split: str, payload: float = 0.4, seed: int = 0,
                 max_pairs: int | None = None, stride: int | None = None, tile: int = 256,
                 channels: int = 1, stego=None) -> StreamPairs:
    """The pairs `load_pairs` gives for `split` (same tiles, order and stego), as
    `StreamPairs`; `splits` is the photo split of `refs` (`split_sources`). For a cached
    embedding the stego cache is filled (message 0) a chunk of photos at a time and the
    tiles that cannot carry the payload are left out."""
    payload = check_payload(payload)
    settings = as_settings(stego)
    chosen = set(splits[split])
    selected = [ref for ref in refs if ref.name in chosen]
    if not selected:
        raise InputError(f"split {split!r} holds no photo ({len(refs)} photo(s) in all); "
                         "give more cover images or use split='all'")
    items = tile_items(selected, stride, max_pairs,
                       np.random.default_rng([int(seed) & 0xFFFFFFFF, 1]), tile)
    order = {ref.name: k for k, ref in enumerate(selected)}
    items.sort(key=lambda item: (order[item[0].name], item[1]))
    if settings.cached and items:
        index = StreamTiles([ref for ref, _ in items], [pos for _, pos in items], tile, channels)
        kept = []
        for chunk in _chunks(index, PREFILL_CHUNK_TILES):
            read = _read_chunk(index, chunk)
            stegos = pair_stegos([items[j] for j in chunk], list(read.tiles), payload, seed,
                                 settings)
            kept += [j for j, s in zip(chunk, stegos) if s is not None]
        if not kept:
            raise InputError(f"payload: {settings.embedding} cannot carry {payload} bits per "
                             f"pixel in any tile of the {split} split", param="payload")
        items = [items[j] for j in sorted(kept)]
    return StreamPairs(items=items, payload=payload, seed=int(seed), split=split, tile_size=tile,
                       channels=channels, stego=settings if settings.cached else None,
                       photos=[ref.name for ref in selected])
