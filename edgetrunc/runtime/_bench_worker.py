"""Benchmark worker process: one runner, timed on request (see `edgetrunc.runtime.bench`).

Usage: `python -m edgetrunc.runtime._bench_worker ARTIFACT THREADS BATCH SEED OPTIONS_JSON
[PLUGINS_JSON]`: `RunnerOptions` fields as JSON, and the modules that register formats
defined outside the package (imported first).
Prints one JSON line when ready (or `{"error": ...}`), then answers each `run` line on
stdin with `{"ms": latency}` and `stop` (or end of input) with `{"peak_rss_mb": ...}`.
"""

from __future__ import annotations

import importlib
import json
import sys
import time


def _reply(obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main(argv) -> int:
    from edgetrunc.errors import InputError
    from edgetrunc.runtime import formats
    from edgetrunc.runtime.bench import peak_rss_mb, random_batch
    from edgetrunc.runtime.feeds import NamedInputs

    artifact, threads, batch, seed, options = argv[0], int(argv[1]), int(argv[2]), int(argv[3]), argv[4]
    for module in json.loads(argv[5]) if len(argv) > 5 else ():
        importlib.import_module(module)
    try:
        fmt = formats.for_path(artifact, runnable=True)
        options = formats.RunnerOptions.from_dict(json.loads(options)).updated(
            threads=threads, **fmt.shared_cores)  # the artifacts take turns on the same cores
        runner = fmt.open(artifact, options)
        feed = random_batch(runner, batch, seed)
        meta = runner.metadata()
        outputs = {name: list(value.shape) for name, value in runner.infer(feed).items()}
    except InputError as exc:
        _reply({"error": str(exc)})
        return 2
    _reply({"format": meta.format, "precision": meta.precision,
            "delegate_partitions": meta.delegate_partitions,
            "inputs": {name: list(value.shape) for name, value in feed.arrays.items()}
            if isinstance(feed, NamedInputs) else {runner.input_names()[0]: list(feed.shape)},
            "outputs": outputs})
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
