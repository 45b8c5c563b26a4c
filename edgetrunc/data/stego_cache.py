"""The stego cache: content-adaptive stego tiles embedded once, kept on disk, checked when read.

A HILL, S-UNIWARD or WOW tile takes 0.06-0.4 s to embed, so each one is embedded once per
`StegoKey` (cover photo's pixel digest, tile position, payload, embedding, seed, message
index) and stored in a content-addressed folder (`default_cache_dir()`:
`$XDG_CACHE_HOME/edgetrunc/stego` or `~/.cache/edgetrunc/stego`), shared by every run and
command. An entry is `<root>/<first 2 hex digits>/<key digest>.stego`: a magic line, a JSON
header (the key, the digest of the cover tile it was made from, the shape, or why the tile
cannot carry the payload), the pixels and a SHA-256 over header and pixels. An entry whose
checksum, key or cover tile does not match is reported with a warning and rebuilt, never
used. Entries are written to a temporary file and renamed, so parallel writers are safe.
`embed_tiles` embeds the misses in a process pool with a progress bar and returns what it
did (`CacheStats`). LSB matching (1 ms a tile) bypasses the cache: a fresh message every
epoch, exactly as before the cache existed. `StegoSettings` holds the choices of a run
(embedding, cache folder, workers, messages per tile). No TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgetrunc import _log
from edgetrunc.data.embeddings import (DEFAULT_EMBEDDING, PayloadTooLarge, check_embedding,
                                       conseal_scheme, embed)
from edgetrunc.errors import InputError

MAGIC = b"edgetrunc stego cache entry v1\n"
DEFAULT_MESSAGES = 4
POOL_MIN_TILES = 8  # fewer misses than this are embedded in this process


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/edgetrunc/stego`, or `~/.cache/edgetrunc/stego`."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgetrunc" / "stego"


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def check_cache_dir(path) -> Path:
    """`path` created if needed, once a file can be written in it; else an `InputError`."""
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"stego_cache: {path} is not a writable folder ({exc.strerror or exc})",
                         param="stego_cache") from None
    return path


def pixel_digest(pixels) -> str:
    """SHA-256 of an image's decoded pixels (shape, dtype and bytes)."""
    pixels = np.ascontiguousarray(pixels)
    digest = hashlib.sha256(f"{pixels.shape}{pixels.dtype.str}".encode())
    digest.update(pixels.tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class StegoKey:
    """What a cached stego tile is a function of; its digest names the entry."""

    cover: str  # pixel_digest of the whole cover photo
    position: tuple  # (top, left) of the tile
    payload: float
    embedding: str
    seed: int
    message: int  # which of the K messages of this tile

    def fields(self) -> dict:
        out = asdict(self)
        out["position"] = [int(v) for v in self.position]
        return out

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.fields(), sort_keys=True).encode()).hexdigest()

    def embedding_seed(self) -> int:
        """The seed of the embedding simulator, derived from the whole key."""
        words = np.frombuffer(bytes.fromhex(self.digest()), np.uint32)
        return int(np.random.SeedSequence(words.tolist()).generate_state(1, np.uint64)[0])


@dataclass
class CacheStats:
    """What one pass over the cache did: tiles embedded, reused, rebuilt, unable to carry."""

    embedded: int = 0
    reused: int = 0
    rebuilt: int = 0
    cannot_carry: int = 0

    def add(self, other: "CacheStats") -> None:
        for name in ("embedded", "reused", "rebuilt", "cannot_carry"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def describe(self) -> str:
        return (f"{self.embedded} embedded, {self.reused} reused from the cache"
                + (f", {self.rebuilt} rebuilt" if self.rebuilt else ""))


class CacheEntryError(Exception):
    """A cache entry that must not be used (corrupt, or made for another key or cover)."""


def _encode(key: StegoKey, cover_tile, stego, reason) -> bytes:
    header = {"key": key.fields(), "key_sha256": key.digest(),
              "cover_tile_sha256": pixel_digest(cover_tile), "shape": list(np.shape(cover_tile)),
              "cannot_carry": reason}
    body = json.dumps(header, sort_keys=True).encode()
    pixels = b"" if stego is None else np.ascontiguousarray(stego, np.uint8).tobytes()
    content = struct.pack("<I", len(body)) + body + pixels
    return MAGIC + content + hashlib.sha256(content).digest()


def _decode(data: bytes, key: StegoKey, cover_tile):
    """`(stego or None, reason or None)` of an entry; `CacheEntryError` says why it is refused."""
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 4 + 32:
        raise CacheEntryError("not a stego cache entry")
    content, checksum = data[len(MAGIC):-32], data[-32:]
    if hashlib.sha256(content).digest() != checksum:
        raise CacheEntryError("checksum mismatch")
    (size,) = struct.unpack("<I", content[:4])
    try:
        header = json.loads(content[4:4 + size])
    except ValueError:
        raise CacheEntryError("unreadable header") from None
    if header.get("key_sha256") != key.digest() or header.get("key") != key.fields():
        raise CacheEntryError("made for another key")
    cover_tile = np.asarray(cover_tile)
    if header.get("cover_tile_sha256") != pixel_digest(cover_tile):
        raise CacheEntryError("made from another cover tile")
    if header.get("cannot_carry"):
        return None, str(header["cannot_carry"])
    pixels = content[4 + size:]
    if header.get("shape") != list(cover_tile.shape) or len(pixels) != cover_tile.size:
        raise CacheEntryError("wrong size")
    stego = np.frombuffer(pixels, np.uint8).reshape(cover_tile.shape)
    if np.abs(stego.astype(np.int16) - cover_tile.astype(np.int16)).max(initial=0) > 1:
        raise CacheEntryError("a change larger than 1")
    return stego, None


class StegoCache:
    """A stego cache folder: `load` a checked entry, `store` one atomically."""

    def __init__(self, root):
        self.root = Path(root)

    def path(self, key: StegoKey) -> Path:
        digest = key.digest()
        return self.root / digest[:2] / f"{digest}.stego"

    def load(self, key: StegoKey, cover_tile):
        """`(stego, reason)` of a good entry, `None` when there is none; a bad entry is
        reported (warning) and treated as missing: `(None, "rebuild")` then."""
        path = self.path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            data, error = None, CacheEntryError(exc.strerror or str(exc))
        try:
            if data is None:
                raise error
            return _decode(data, key, cover_tile)
        except CacheEntryError as exc:
            _log.warn(f"stego cache: entry {path} is not usable ({exc}); rebuilding it")
            return None, "rebuild"

    def store(self, key: StegoKey, cover_tile, stego, reason=None) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(_encode(key, cover_tile, stego, reason))
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


def embed_entry(root, key: StegoKey, cover_tile, keep: bool = True):
    """Embed one tile, store it in the cache at `root`; `(stego or None, reason or None)`."""
    try:
        stego, reason = embed(np.asarray(cover_tile), key.payload, key.embedding_seed(),
                              key.embedding), None
    except PayloadTooLarge as exc:
        stego, reason = None, str(exc).split(": ", 1)[-1]
    StegoCache(root).store(key, cover_tile, stego, reason)
    return (stego if keep else None), reason


def _embed_job(job):
    root, key, cover_tile, keep = job
    return embed_entry(root, key, cover_tile, keep)


def _pool_context():
    """fork while this process holds no TensorFlow (fast, nothing re-imported); spawn once it
    does (forking a process with TensorFlow's threads can hang)."""
    import multiprocessing
    import sys

    methods = multiprocessing.get_all_start_methods()
    safe = "tensorflow" not in sys.modules and "fork" in methods
    return multiprocessing.get_context("fork" if safe else "spawn")


def _run_jobs(jobs: list, workers: int, desc: str) -> list:
    """Each job's `(stego, reason)`, in a process pool when there are enough."""
    if len(jobs) < POOL_MIN_TILES or workers <= 1:
        return [_embed_job(job) for job in _log.progress(jobs, desc=desc, total=len(jobs),
                                                         unit="tile")]
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    workers = min(int(workers), len(jobs))
    chunk = max(1, min(16, len(jobs) // (4 * workers)))
    context = _pool_context()
    if context.get_start_method() == "fork":
        conseal_scheme(jobs[0][1].embedding)  # imported once, before the workers are forked
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            return list(_log.progress(pool.map(_embed_job, jobs, chunksize=chunk), desc=desc,
                                      total=len(jobs), unit="tile"))
    except BrokenProcessPool:
        _log.warn("stego cache: the worker processes stopped; embedding in this process")
        return _run_jobs(jobs, 1, desc)


def embed_tiles(cache: StegoCache, requests: list, workers: int = 1, keep: bool = True,
                desc: str = "embedding") -> tuple[list, CacheStats]:
    """`(results, stats)` for `requests` of `(StegoKey, cover tile)`: each result is
    `(stego, None)`, or `(None, reason)` for a tile that cannot carry the payload (`stego` is
    None too when not `keep`). Good entries are reused; the others are embedded and stored."""
    results, stats, misses = [None] * len(requests), CacheStats(), []
    for i, (key, tile) in enumerate(requests):
        found = cache.load(key, tile)
        if found is None or found[1] == "rebuild":
            misses.append(i)
            stats.rebuilt += found is not None
            continue
        results[i] = found if keep else (None, found[1])
        stats.reused += 1
        stats.cannot_carry += found[1] is not None
    jobs = [(str(cache.root), *requests[i], keep) for i in misses]
    for i, result in zip(misses, _run_jobs(jobs, workers, desc)):
        results[i] = result
        stats.embedded += 1
        stats.cannot_carry += result[1] is not None
    return results, stats


def report_cannot_carry(names: list, embedding: str, payload: float, reasons: list) -> None:
    """One warning for the tiles left out because they cannot carry the payload."""
    names = list(dict.fromkeys(names))
    if names:
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        _log.warn_once(f"{embedding} at {payload} bpp: {len(names)} tile(s) cannot carry the payload "
                  f"and are left out ({shown}; {reasons[0]})")


@dataclass
class StegoSettings:
    """How stego tiles are made: the embedding, and for the cached (content-adaptive) ones
    the cache folder, the worker processes and the messages per tile (K)."""

    embedding: str = DEFAULT_EMBEDDING
    cache_dir: object = None
    workers: int | None = None
    messages: int = DEFAULT_MESSAGES
    stats: CacheStats = field(default_factory=CacheStats, compare=False)

    def __post_init__(self):
        self.embedding = check_embedding(self.embedding)
        if not isinstance(self.messages, (int, np.integer)) or int(self.messages) < 1:
            raise InputError(f"messages: expected a positive integer; got {self.messages!r}",
                             param="messages")
        if self.workers is None:
            self.workers = usable_cores()
        if not isinstance(self.workers, (int, np.integer)) or int(self.workers) < 1:
            raise InputError(f"workers: expected a positive integer; got {self.workers!r}",
                             param="workers")
        if self.cached:
            self.cache_dir = check_cache_dir(self.cache_dir or default_cache_dir())

    @property
    def cached(self) -> bool:
        """LSB matching bypasses the cache; the content-adaptive schemes use it."""
        return self.embedding != "lsbm"

    def cache(self) -> StegoCache:
        return StegoCache(self.cache_dir)

    def describe(self) -> dict:
        return {"embedding": self.embedding, "messages": int(self.messages) if self.cached else None,
                "stego_cache": str(self.cache_dir) if self.cached else None}


def as_settings(stego) -> StegoSettings:
    """`None` (LSB matching), an embedding name or `StegoSettings` as `StegoSettings`."""
    if isinstance(stego, StegoSettings):
        return stego
    return StegoSettings() if stego is None else StegoSettings(embedding=stego)
