"""Peak memory of `edgetrunc train` on cover folders of growing size, streamed and in memory.

Writes folders of 512x512 8-bit PGM covers (random crops, rotations and flips of the
embedded photographs), then trains on each for the same number of steps (`--max-tiles`,
one epoch, a capped validation/test set) in a subprocess and reads that subprocess's peak
resident memory (`os.wait4`). Also times the streamed read stage (LSB-matching pairs per
second, one core), one stego-cache entry per content-adaptive scheme (seconds, bytes), and
from these states what 10,000 BOSSbase-size covers need. Prints the tables and writes the
"streaming" section of BENCHMARKS.md.

    python -m scripts.benchmarks streaming [--sizes 60,600] [--max-tiles 144] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from scripts.benchmarks._markdown import (log, machine_description, markdown_table,  # noqa: E402
                                          publish)

import numpy as np  # noqa: E402

COVER = 512
TILE = 256
BOSS_COVERS = 10_000
SCHEMES = ("hill", "suniward", "wow")


def write_covers(folder: Path, count: int, seed: int = 0) -> None:
    """`count` 512x512 PGM covers cut from the embedded photographs (random crop and turn)."""
    from PIL import Image

    from edgetrunc.data.covers import embedded_covers
    from edgetrunc.data.dataset import dihedral

    photos = [c.pixels for c in embedded_covers() if min(c.pixels.shape) >= COVER]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = photos[i % len(photos)]
        top = int(rng.integers(0, pixels.shape[0] - COVER + 1))
        left = int(rng.integers(0, pixels.shape[1] - COVER + 1))
        crop = dihedral(pixels[top:top + COVER, left:left + COVER], int(rng.integers(0, 8)))
        Image.fromarray(np.ascontiguousarray(crop)).save(folder / f"c{i:05d}.pgm")


def train_peak(folder: Path, stream: str, max_tiles: int | None, out: Path) -> dict:
    """Train in a subprocess; its peak RSS (MiB), wall time and the record's figures."""
    command = [sys.executable, "-m", "edgetrunc", "-q", "train", "--covers", str(folder),
               "--stream", stream, "--epochs", "2", "--batch-size", "16",
               *(["--max-tiles", str(max_tiles)] if max_tiles else []),
               "--max-eval-pairs", "64", "--eval-stride", "256",
               "--out", str(out), "--force"]
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"train failed ({process.returncode}): {stderr.decode()[-2000:]}")
    record = json.loads(out.with_name(out.stem + ".training.json").read_text())
    return {"peak_mib": usage.ru_maxrss / 1024, "wall": time.monotonic() - started,
            "streamed": record["data"]["streamed"], "tiles": record["data"]["train_tiles"],
            "images_per_second": record["epochs"][-1]["images_per_second"],  # traced already
            "steps": record["trained_images"] // (2 * record["config"]["batch_pairs"])
            // len(record["epochs"])}


def read_stage_rate(folder: Path, seconds: float = 5.0) -> float:
    """Pairs per second of the streamed read stage (read, tile, LSB matching, turn)."""
    from edgetrunc.data.stream import epoch_pairs, scan_covers, stream_training_tiles

    index = stream_training_tiles(scan_covers(folder))
    started, count = time.monotonic(), 0
    for _ in epoch_pairs(index, 0.4, seed=0, epoch=0):
        count += 1
        if time.monotonic() - started > seconds:
            break
    return count / (time.monotonic() - started)


def cache_entry_costs(folder: Path, tiles: int = 3) -> dict:
    """Per scheme: seconds per 256x256 tile at 0.4 bpp (one core) and bytes per cache entry."""
    from edgetrunc.data.images import load_image
    from edgetrunc.data.stego_cache import StegoKey, StegoCache, embed_entry, pixel_digest

    covers = sorted(folder.glob("*.pgm"))[:tiles]
    out = {}
    with tempfile.TemporaryDirectory() as root:
        for scheme in SCHEMES:  # a first tile each, untimed: imports conseal, warms caches
            pixels = load_image(covers[0])
            embed_entry(root, StegoKey("warm-up", (0, 0), 0.4, scheme, 1, 0), pixels[:TILE, :TILE])
        for scheme in SCHEMES:
            times, sizes = [], []
            for k, path in enumerate(covers):
                pixels = load_image(path)
                key = StegoKey(pixel_digest(pixels), (0, 0), 0.4, scheme, 0, 0)
                started = time.monotonic()
                embed_entry(root, key, pixels[:TILE, :TILE], keep=False)
                times.append(time.monotonic() - started)
                sizes.append(StegoCache(root).path(key).stat().st_size)
            out[scheme] = {"seconds": float(np.median(times)), "bytes": int(np.median(sizes))}
    return out


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def boss_estimate(rows: list, read_rate: float, costs: dict, cores: int) -> list[str]:
    """What 10,000 512x512 covers need: memory, cache disk per scheme and K, time."""
    streamed = [r for r in rows if r["streamed"]]
    peak = max(r["peak_mib"] for r in streamed)
    rate = np.median([r["images_per_second"] for r in rows])
    train_tiles = int(BOSS_COVERS * 0.6) * (COVER // TILE) ** 2
    eval_tiles = int(BOSS_COVERS * 0.4) * ((COVER - TILE) // 128 + 1) ** 2  # stride 128
    in_memory = (BOSS_COVERS * COVER * COVER + train_tiles * TILE * TILE
                 + eval_tiles * 2 * TILE * TILE * 4) / 2**30
    lines = [
        f"**10,000 BOSSbase-size covers** (512x512 PGM; 6,000 training photos = {train_tiles:,} "
        f"tiles of 256x256 at stride 256, {eval_tiles:,} validation and test tiles at stride 128):",
        "",
        f"- Memory, streamed: about the {peak:.0f} MiB measured above (the largest streamed "
        f"run, TensorFlow included, shuffle buffer full) plus the index (a name, size and "
        f"digest per photo, a corner per tile: about 10 MiB); in memory it would be "
        f"{in_memory:.1f} GiB (covers, training tiles and float32 "
        "validation/test pairs without `--max-eval-pairs`).",
        f"- Time per epoch: {2 * train_tiles:,} images at the measured {rate:.0f} images/s "
        f"(tlunet, second epoch of the runs above, this machine) = "
        f"{2 * train_tiles / rate / 60:.0f} min; the read stage alone "
        f"makes {read_rate:.0f} pairs/s on one core ({train_tiles / read_rate / 60:.1f} min "
        "an epoch), so it keeps ahead of the model. Validation scores 13,500 pairs (stride "
        "128) after every epoch unless `--max-eval-pairs` caps it.",
        "",
        markdown_table(
            ("scheme", "s per tile (1 core)", "entry", "cache, K=1", "cache, K=4",
             f"embedding K=4 on {cores} cores", "on 16 cores", "on 64 cores"),
            [(scheme, f"{c['seconds']:.3f}", f"{c['bytes'] / 1024:.1f} KiB",
              f"{(train_tiles + eval_tiles) * c['bytes'] / 2**30:.1f} GiB",
              f"{(4 * train_tiles + eval_tiles) * c['bytes'] / 2**30:.1f} GiB",
              *(_duration((4 * train_tiles + eval_tiles) * c["seconds"] / n)
                for n in (cores, 16, 64)))
             for scheme, c in costs.items()]),
        "",
        "Cache entries: K messages per training tile and payload of the curriculum (one "
        "payload here) plus message 0 of every validation and test tile; a curriculum of "
        "three payloads triples the training part. Embedding time assumes the cores scale "
        "linearly (one process per core, `--workers`); LSB matching needs no cache.",
    ]
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="60,600", help="cover counts (default: 60,600)")
    parser.add_argument("--max-tiles", type=int, default=144,
                        help="training tiles of every run: the same steps (default: 144)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows, load = [], [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for size in sizes:
            folder = root / f"covers{size}"
            write_covers(folder, size)
            for stream in ("on", "off", "auto"):
                log(f"{size} covers, --stream {stream}")
                result = train_peak(folder, stream, args.max_tiles, root / "bench.keras")
                rows.append({"covers": size, "stream": stream, **result})
                log(f"  peak {result['peak_mib']:.0f} MiB, {result['wall']:.0f} s")
                load.append(os.getloadavg()[0])
        log(f"{sizes[-1]} covers, --stream on, every tile (the shuffle buffer fills)")
        result = train_peak(root / f"covers{sizes[-1]}", "on", None, root / "bench.keras")
        rows.append({"covers": sizes[-1], "stream": "on", **result})
        read_rate = read_stage_rate(root / f"covers{sizes[-1]}")
        costs = cache_entry_costs(root / f"covers{sizes[0]}")
    base = {r["stream"]: r["peak_mib"] for r in rows if r["covers"] == sizes[0]}
    table = markdown_table(
        ("covers (512x512)", "--stream", "streamed", "training tiles", "steps per epoch",
         "peak RSS",
         f"vs {sizes[0]} covers, same --stream", "wall time"),
        [(r["covers"], r["stream"], "yes" if r["streamed"] else "no", r["tiles"], r["steps"],
          f"{r['peak_mib']:.0f} MiB", f"{r['peak_mib'] / base[r['stream']]:.2f}x",
          f"{r['wall']:.0f} s") for r in rows])
    lines = ["## Streaming cover folders (`python -m scripts.benchmarks streaming`)", "",
             f"Machine: {machine_description()}; load average {min(load):.1f}-{max(load):.1f} "
             "during the runs (shared cores: times are slower than on an idle machine, the "
             "memory figures are not affected).", "",
             f"`edgetrunc train` (tlunet, LSB matching) for two epochs of the same "
             f"{args.max_tiles} training tiles (`--max-tiles {args.max_tiles} --batch-size 16`, "
             "`--max-eval-pairs 64 --eval-stride 256`; the last row: every tile, so that the "
             "shuffle buffer of 1024 pairs fills) on folders of 512x512 PGM covers; peak "
             "resident memory of the training process (`os.wait4`), TensorFlow included. "
             "`auto` streams a folder over 64 MiB of decoded pixels.", "", table, "",
             f"The largest folder, streamed with every tile, peaks at "
             f"{rows[-1]['peak_mib'] / base['auto']:.2f}x the {sizes[0]}-cover run as `edgetrunc "
             f"train` runs it by default (`auto`: in memory) and "
             f"{rows[-1]['peak_mib'] / base['on']:.2f}x the streamed {sizes[0]}-cover run.", "",
             *boss_estimate(rows, read_rate, costs, os.cpu_count() or 1)]
    markdown = "\n".join(lines)
    return publish("streaming", markdown, not args.no_write)


if __name__ == "__main__":
    raise SystemExit(main())
