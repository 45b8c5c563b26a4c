"""`edgetrunc bench`: latency and throughput of `.tflite` / `.onnx` artifacts, interleaved.

Runs on the TensorFlow-free runtime (`edgetrunc.runtime.bench`): a table on stdout, or
JSON `{"results": [...]}` with `--json`; progress on stderr.
"""

from __future__ import annotations

import sys

from edgetrunc.cli import _args
from edgetrunc.cli._args import positive_int

DESCRIPTION = "Benchmark artifacts interleaved; latency percentiles, throughput, peak memory."
MAX_RUNS = 1_000_000


def add_arguments(p) -> None:
    p.add_argument("artifacts", metavar="ARTIFACT", nargs="+")
    p.add_argument("--threads", type=_args.thread_list, default=[1],
                   help="thread counts, e.g. 1,2 (default: 1)")
    p.add_argument("--runs", type=_args.count(MAX_RUNS), default=50, help="timed runs (default: 50)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs first (default: 5)")
    p.add_argument("--batch", type=positive_int, default=1, help="batch size (default: 1)")
    p.add_argument("--no-xnnpack", action="store_true",
                   help="TFLite: built-in kernels instead of the XNNPACK delegate")
    _args.add_json(p)


def format_table(results) -> str:
    """One line per artifact and thread count: latency percentiles, throughput, peak memory."""
    from edgetrunc._text import table

    headers = ("artifact", "precision", "threads", "batch", "min ms", "p50 ms", "p90 ms", "p99 ms",
               "images/s", "peak RSS MB")
    rows = [(r["artifact"], r["precision"] or "?", r["threads"], r["batch"],
             f"{r['min_ms']:.2f}", f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}", f"{r['p99_ms']:.2f}",
             f"{r['throughput_ips']:.1f}", "?" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:.0f}")
            for r in results]
    return table(headers, rows, align="ll" + "r" * 8)


def run(args) -> int:
    from edgetrunc._text import dumps_json
    from edgetrunc.runtime.bench import bench_artifacts

    results = bench_artifacts(args.artifacts, threads=args.threads, runs=args.runs,
                              warmup=args.warmup, batch=args.batch,
                              options={"use_xnnpack": False} if args.no_xnnpack else None)
    if args.json:
        sys.stdout.write(dumps_json({"results": results}))
    else:
        print(format_table(results))
    return 0
