"""Content-adaptive stego for the tiles of a dataset, through the stego cache (no TensorFlow).

`pair_stegos` gives the stego of each `(cover, position)` tile of a scored set (message 0);
`prefill_training` embeds, before training starts, every message a run will draw (K per
tile and per payload of the curriculum) in parallel and leaves out the training tiles that
cannot carry a payload; `training_stego` fetches the stego of one training tile for an
epoch: message `epoch mod K`. Tiles that cannot carry the payload are left out with one
warning; when none is left, an `InputError` (exit 2). LSB matching never comes here.
"""

from __future__ import annotations

from edgetrunc import _log
from edgetrunc.data.stego_cache import (StegoKey, embed_entry, embed_tiles, pixel_digest,
                                        report_cannot_carry)
from edgetrunc.errors import InputError


def _digests(covers) -> dict:
    out = {}
    for cover in covers:
        if id(cover) not in out:
            out[id(cover)] = pixel_digest(cover.pixels)
    return out


def _embed(settings, requests, names, payload, desc, keep=True) -> list:
    """Embed-or-fetch `requests`: `(stego, reason)` per request (reason: cannot carry)."""
    results, stats = embed_tiles(settings.cache(), requests, settings.workers, keep, desc)
    settings.stats.add(stats)
    _log.info(f"stego cache ({settings.embedding}, {payload} bpp, {settings.cache_dir}): "
              f"{stats.describe()}")
    failed = [i for i, (_, reason) in enumerate(results) if reason is not None]
    if len(failed) < len(results):  # none carrying is the caller's error, not a warning
        report_cannot_carry([names[i] for i in failed], settings.embedding, payload,
                            [results[i][1] for i in failed])
    return results


def pair_stegos(items, tiles, payload: float, seed: int, settings) -> list:
    """The stego of each `(cover, (top, left))` item whose cover tile is `tiles[i]`
    (message 0); None for a tile that cannot carry `payload`."""
    digests = _digests(cover for cover, _ in items)
    requests = [(StegoKey(digests[id(cover)], tuple(pos), float(payload), settings.embedding,
                          int(seed), 0), tile) for (cover, pos), tile in zip(items, tiles)]
    names = [f"{cover.name}@{pos[0]},{pos[1]}" for cover, pos in items]
    results = _embed(settings, requests, names, payload, f"{settings.embedding} stego")
    return [None if reason is not None else stego for stego, reason in results]


def _training_key(tiles, j, payload, seed, settings, message) -> StegoKey:
    return StegoKey(tiles.digests[j], tuple(tiles.positions[j]), float(payload),
                    settings.embedding, int(seed), int(message))


def prefill_training(tiles, payloads, seed: int, settings) -> list:
    """Embed every (tile, payload, message) of a run into the cache; the indices of the
    tiles that carry every payload (the others get one warning)."""
    keep = set(range(len(tiles)))
    for payload in sorted(set(payloads), reverse=True):
        requests, names = [], []
        for j in sorted(keep):
            for message in range(int(settings.messages)):
                requests.append((_training_key(tiles, j, payload, seed, settings, message),
                                 tiles.tiles[j]))
                names.append((j, f"{tiles.sources[j]}@{tiles.positions[j][0]},"
                              f"{tiles.positions[j][1]}"))
        results = _embed(settings, requests, [name for _, name in names], payload,
                         f"{settings.embedding} stego {payload} bpp", keep=False)
        keep -= {j for (j, _), (_, reason) in zip(names, results) if reason is not None}
    if not keep:
        raise InputError(f"payload: {settings.embedding} cannot carry {max(payloads)} bits per "
                         "pixel in any training tile", param="payload")
    return sorted(keep)


def training_stego(tiles, j: int, payload: float, seed: int, settings, epoch: int):
    """The cached stego of training tile `j` for `epoch` (message `epoch mod K`)."""
    key = _training_key(tiles, j, payload, seed, settings, int(epoch) % int(settings.messages))
    cache = settings.cache()
    found = cache.load(key, tiles.tiles[j])
    if found is None or found[1] == "rebuild":
        found = embed_entry(cache.root, key, tiles.tiles[j])
    stego, reason = found
    if stego is None:
        raise InputError(f"payload: {tiles.sources[j]}@{tiles.positions[j]}: {reason}",
                         param="payload")
    return stego
