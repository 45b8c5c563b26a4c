"""The stego cache: content-adaptive stego tiles embedded once, kept on disk, checked when read.

A HILL, S-UNIWARD or WOW tile takes 0.06-0.4 s to embed, so each one is embedded once per
`StegoKey` (cover photo's pixel digest, tile position, payload, embedding, seed, message
index) and stored in a content-addressed folder (`default_cache_dir()`:
`$XDG_CACHE_HOME/edgetrunc/stego` or `~/.cache/edgetrunc/stego`), shared by every run and
command. An entry is `<root>/<first 2 hex digits>/<key digest>.stego` (its format and checks:
`edgetrunc.data.stego_entry`). An entry that is not a regular file in a real shard folder,
is over its size, or fails its checks (binding to key and cover tile, the scheme's
invariants) is reported with a warning and rebuilt, never used; a shard folder that is a
link or a file is refused. Entries are written to a temporary file and renamed, so parallel
writers are safe.
`embed_tiles` embeds the misses in a process pool with a progress bar and returns what it
did (`CacheStats`). LSB matching (1 ms a tile) bypasses the cache: a fresh message every
epoch, exactly as before the cache existed. `StegoSettings` holds the choices of a run
(embedding, cache folder, workers, messages per tile). No TensorFlow.
"""

from __future__ import annotations

import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgetrunc import _log
from edgetrunc._io import read_regular
from edgetrunc._options import option, positive_int
from edgetrunc.data.embeddings import (DEFAULT_EMBEDDING, PayloadTooLarge, check_embedding,
                                       conseal_scheme, embed)
from edgetrunc.data.stego_entry import (MAGIC, MAX_HEADER_BYTES, CacheEntryError, OldCacheEntry,
                                        StegoKey, decode_entry, encode_entry, pixel_digest)
from edgetrunc.errors import InputError

DEFAULT_MESSAGES = 4
MAX_MESSAGES = 256  # messages per tile; a run draws at most one per epoch
POOL_MIN_TILES = 8  # fewer misses than this are embedded in this process
STEGO_OPTIONS = {  # a run's stego parameters (train, evaluate, parity), each declared once
    "embedding": dict(default=DEFAULT_EMBEDDING, metavar="NAME", help=(
        "stego embedding: lsbm (LSB matching, a fresh message each time), hill, suniward or "
        "wow (content-adaptive, conseal; embedded once into the stego cache)")),
    "stego_cache": dict(metavar="DIR", help=(
        "stego cache folder of the content-adaptive embeddings (default: "
        "$XDG_CACHE_HOME/edgetrunc/stego or ~/.cache/edgetrunc/stego)")),
    "workers": dict(type=positive_int, help=(
        "processes that embed into the stego cache (default: every usable core)")),
    "messages": dict(default=DEFAULT_MESSAGES, type=positive_int, metavar="K", help=(
        "messages per training tile of a cached embedding, cycled over the epochs "
        "(message `epoch mod K`)")),
}


def stego_option(name: str):
    """The dataclass field of the run parameter `name` of `STEGO_OPTIONS`."""
    return option(**STEGO_OPTIONS[name])


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
    if os.path.lexists(path) and not path.is_dir():
        raise InputError(f"stego_cache: {path} is a file (or a link to one); expected a folder",
                         param="stego_cache")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"stego_cache: {path} is not a writable folder ({exc.strerror or exc})",
                         param="stego_cache") from None
    return path


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


class StegoCache:
    """A stego cache folder: `load` a checked entry, `store` one atomically. Entries and
    their shard folders are used only as what this class makes: a shard that is a link or
    not a folder is refused, an entry that is a link or not a regular file is rebuilt."""

    def __init__(self, root):
        self.root = Path(root)

    def path(self, key: StegoKey) -> Path:
        digest = key.digest()
        return self.root / digest[:2] / f"{digest}.stego"

    def _shard(self, path: Path, create: bool) -> Path:
        """The shard folder of an entry at `path`, a real folder inside the cache."""
        shard = path.parent
        try:
            if create and not os.path.lexists(shard):
                shard.mkdir(parents=True, exist_ok=True)
            info = os.lstat(shard)
        except FileNotFoundError:
            return shard
        except OSError as exc:
            raise InputError(f"stego cache {self.root}: cannot create its folder {shard.name} "
                             f"({exc.strerror or exc})") from None
        if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
            kind = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a folder"
            raise InputError(f"stego cache {self.root}: {shard} is {kind}; expected a folder of "
                             "entries made by edgetrunc (remove it)")
        return shard

    def _entry_bytes(self, path: Path, cover_tile) -> bytes:
        limit = len(MAGIC) + 4 + MAX_HEADER_BYTES + int(np.size(cover_tile)) + 32
        try:
            self._shard(path, create=False)
            return read_regular(path, "stego cache entry", limit, follow_links=False,
                                folder=Path(os.path.realpath(self.root)) / path.parent.name)
        except InputError as exc:
            raise CacheEntryError(str(exc).replace(f"{path}: ", "", 1)) from None
        except OSError as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            raise CacheEntryError(exc.strerror or str(exc)) from None

    def load(self, key: StegoKey, cover_tile):
        """`(stego, reason)` of a good entry, `None` when there is none; a bad entry is
        reported (warning) and treated as missing: `(None, "rebuild")` then."""
        path = self.path(key)
        try:
            return decode_entry(self._entry_bytes(path, cover_tile), key, cover_tile)
        except (FileNotFoundError, OldCacheEntry):
            return None
        except CacheEntryError as exc:
            _log.warn(f"stego cache: entry {path} is not usable ({exc}); rebuilding it")
            return None, "rebuild"

    def store(self, key: StegoKey, cover_tile, stego, reason=None) -> None:
        path = self.path(key)
        shard = self._shard(path, create=True)
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=shard)
        except OSError as exc:
            raise InputError(f"stego cache {self.root}: cannot write in {shard} "
                             f"({exc.strerror or exc})") from None
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(encode_entry(key, cover_tile, stego, reason))
            os.replace(tmp, path)
        except OSError as exc:
            reason = "a folder is in its place" if isinstance(exc, IsADirectoryError) else (
                exc.strerror or str(exc))
            raise InputError(f"stego cache {self.root}: cannot write the entry {path} "
                             f"({reason})") from None
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)


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
        if (not isinstance(self.messages, (int, np.integer)) or isinstance(self.messages, bool)
                or not 1 <= int(self.messages) <= MAX_MESSAGES):
            raise InputError(f"messages: expected a positive integer up to {MAX_MESSAGES}; "
                             f"got {self.messages!r}", param="messages")
        if self.workers is None:
            self.workers = usable_cores()
        cores = usable_cores()
        if (not isinstance(self.workers, (int, np.integer)) or isinstance(self.workers, bool)
                or not 1 <= int(self.workers) <= cores):
            raise InputError(f"workers: expected a positive integer up to {cores} (the usable "
                             f"cores of this machine); got {self.workers!r}", param="workers")
        if self.cached:
            self.cache_dir = check_cache_dir(self.cache_dir or default_cache_dir())

    @classmethod
    def of_run(cls, embedding=DEFAULT_EMBEDDING, stego_cache=None, workers=None,
               messages=DEFAULT_MESSAGES, epochs=None) -> "StegoSettings":
        """The settings from a run's parameters (`STEGO_OPTIONS`); a run of `epochs` draws
        one message per epoch, so it never asks for more messages than that."""
        if epochs is not None and isinstance(messages, int) and not isinstance(messages, bool):
            messages = min(messages, int(epochs))
        return cls(embedding, stego_cache, workers, messages)

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
