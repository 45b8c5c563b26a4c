"""The stego cache's entry format: what an entry is a function of, and how it is checked.

An entry is `MAGIC`, a JSON header (the key, the digest of the cover tile it was made from,
the shape, or why the tile cannot carry the payload), the pixels, and a SHA-256 that binds
all of it to its `StegoKey` (cover photo digest and every setting) and to the pixels of the
cover tile (`encode_entry`). `decode_entry` refuses, with the reason (`CacheEntryError`),
an entry that is not one, is bound to another key or cover tile, has a forged header (not
a JSON object, nested too deep, larger than `MAX_HEADER_BYTES`), or breaks the scheme's
invariants: +-1 changes only, as many changes as the payload needs at least
(`min_change_rate`) and no more than a ternary code ever makes, never the cover itself.
No TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import asdict, dataclass

import numpy as np

MAGIC = b"edgetrunc stego cache entry v2\n"
OLD_MAGIC = b"edgetrunc stego cache entry v1\n"


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


class CacheEntryError(Exception):
    """A cache entry that must not be used (corrupt, forged, or made for another key or cover)."""


MAX_HEADER_BYTES = 1 << 16
MAX_CHANGE_RATE = 2 / 3  # ternary changes carry the most at 2/3 of the pixels changed


def _binding(key: StegoKey, cover_digest: str, content: bytes) -> bytes:
    """The digest that binds an entry's content to its key (settings included) and to the
    pixels of the cover tile it was made from."""
    digest = hashlib.sha256(f"{MAGIC.decode().strip()}|{key.digest()}|{cover_digest}|".encode())
    digest.update(content)
    return digest.digest()


def encode_entry(key: StegoKey, cover_tile, stego, reason) -> bytes:
    cover_digest = pixel_digest(cover_tile)
    header = {"key": key.fields(), "key_sha256": key.digest(), "cover_tile_sha256": cover_digest,
              "shape": list(np.shape(cover_tile)), "cannot_carry": reason}
    body = json.dumps(header, sort_keys=True).encode()
    pixels = b"" if stego is None else np.ascontiguousarray(stego, np.uint8).tobytes()
    content = struct.pack("<I", len(body)) + body + pixels
    return MAGIC + content + _binding(key, cover_digest, content)


def min_change_rate(payload: float) -> float:
    """The fewest pixels (a fraction) that +-1 changes must touch to carry `payload` bits per
    pixel: the rate whose ternary entropy is `payload` (every scheme changes more)."""
    low, high = 0.0, MAX_CHANGE_RATE
    for _ in range(40):
        rate = (low + high) / 2
        entropy = -rate * np.log2(rate / 2) - (1 - rate) * np.log2(1 - rate)
        low, high = (rate, high) if entropy < payload else (low, rate)
    return high


def _check_changes(stego, cover_tile, payload: float) -> None:
    """The scheme's invariants: +-1 changes only, as many as the payload needs (within a
    margin for the simulator's randomness), no more than a ternary code ever makes."""
    diff = np.abs(stego.astype(np.int16) - cover_tile.astype(np.int16))
    if diff.max(initial=0) > 1:
        raise CacheEntryError("a change larger than 1")
    rate = float(np.count_nonzero(diff)) / max(diff.size, 1)
    if rate == 0:
        raise CacheEntryError("identical to its cover tile")
    if rate < 0.5 * min_change_rate(payload) or rate > MAX_CHANGE_RATE:
        raise CacheEntryError(f"{rate:.4f} of the pixels changed, implausible for "
                              f"{payload} bits per pixel")


def _header(content: bytes) -> tuple[dict, int]:
    (size,) = struct.unpack("<I", content[:4])
    if size > min(MAX_HEADER_BYTES, len(content) - 4):
        raise CacheEntryError("header size out of range")
    try:
        header = json.loads(content[4:4 + size])
    except (ValueError, RecursionError):
        raise CacheEntryError("unreadable header") from None
    if not isinstance(header, dict):
        raise CacheEntryError("header is not a JSON object")
    return header, size


def decode_entry(data: bytes, key: StegoKey, cover_tile):
    """`(stego or None, reason or None)` of an entry; `CacheEntryError` says why it is refused."""
    if data.startswith(OLD_MAGIC):
        raise CacheEntryError("written by an older edgetrunc")
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 4 + 32:
        raise CacheEntryError("not a stego cache entry")
    content, checksum = data[len(MAGIC):-32], data[-32:]
    cover_tile = np.asarray(cover_tile)
    cover_digest = pixel_digest(cover_tile)
    header, size = _header(content)
    if header.get("key_sha256") != key.digest() or header.get("key") != key.fields():
        raise CacheEntryError("made for another key")
    if header.get("cover_tile_sha256") != cover_digest:
        raise CacheEntryError("made from another cover tile")
    if _binding(key, cover_digest, content) != checksum:
        raise CacheEntryError("checksum mismatch: not bound to this key and cover tile")
    if header.get("cannot_carry"):
        return None, str(header["cannot_carry"])
    pixels = content[4 + size:]
    if header.get("shape") != list(cover_tile.shape) or len(pixels) != cover_tile.size:
        raise CacheEntryError("wrong size")
    stego = np.frombuffer(pixels, np.uint8).reshape(cover_tile.shape)
    _check_changes(stego, cover_tile, key.payload)
    return stego, None
