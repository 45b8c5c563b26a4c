"""`edgetrunc bench`: latency and throughput of `.tflite` / `.onnx` artifacts, interleaved.

Runs on the TensorFlow-free runtime (`edgetrunc.runtime.bench`): a table on stdout, or
JSON `{"results": [...]}` with `--json`; progress on stderr.
"""

from __future__ import annotations

import json
import sys

from edgetrunc.runtime.bench import bench_artifacts


def _table(results) -> str:
    headers = ("artifact", "precision", "threads", "batch", "min ms", "p50 ms", "p90 ms", "p99 ms",
               "images/s", "peak RSS MB")
    rows = [headers] + [(r["artifact"], r["precision"] or "?", str(r["threads"]), str(r["batch"]),
                         f"{r['min_ms']:.2f}", f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}",
                         f"{r['p99_ms']:.2f}", f"{r['throughput_ips']:.1f}",
                         "?" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:.0f}")
                        for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in
                       enumerate(zip(row, widths))).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(args) -> int:
    results = bench_artifacts(args.artifacts, threads=args.threads, runs=args.runs,
                              warmup=args.warmup, batch=args.batch,
                              options={"use_xnnpack": False} if getattr(args, "no_xnnpack", False) else None)
    if args.json:
        json.dump({"results": results}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(_table(results))
    return 0
