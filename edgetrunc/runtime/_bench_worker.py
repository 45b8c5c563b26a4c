"""Benchmark worker process: one runner, timed on request (see `edgetrunc.runtime.bench`).

Usage: `python -m edgetrunc.runtime._bench_worker ARTIFACT THREADS BATCH SEED OPTIONS_JSON`.
Prints one JSON line when ready (or `{"error": ...}`), then answers each `run` line on
stdin with `{"ms": latency}` and `stop` (or end of input) with `{"peak_rss_mb": ...}`.
"""

from __future__ import annotations

import json
import sys
import time


def _reply(obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main(argv) -> int:
    from edgetrunc.errors import InputError
    from edgetrunc.runtime._open import open_runner
    from edgetrunc.runtime.bench import peak_rss_mb, random_batch

    artifact, threads, batch, seed, options = argv[0], int(argv[1]), int(argv[2]), int(argv[3]), argv[4]
    try:
        options = json.loads(options)
        if artifact.lower().endswith(".onnx"):
            options = {"spin": False}  # idle busy-waiting threads would slow the next artifact
        runner = open_runner(artifact, threads=threads, **options)
        feed = random_batch(runner, batch, seed)
        meta = runner.metadata()
    except InputError as exc:
        _reply({"error": str(exc)})
        return 2
    _reply({"format": meta.format, "precision": meta.precision,
            "delegate_partitions": meta.delegate_partitions})
    for line in sys.stdin:
        command = line.strip()
        if command == "run":
            try:
                start = time.perf_counter()
                runner.infer(feed)
                _reply({"ms": (time.perf_counter() - start) * 1000.0})
            except InputError as exc:
                _reply({"error": str(exc)})
                return 2
        elif command == "stop":
            break
    _reply({"peak_rss_mb": peak_rss_mb()})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
