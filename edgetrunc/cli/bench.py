"""`edgetrunc bench`: latency and throughput of `.tflite` / `.onnx` artifacts, interleaved.

Runs on the TensorFlow-free runtime (`edgetrunc.runtime.bench`): a table on stdout, or
JSON `{"results": [...]}` with `--json`; progress on stderr. `--profile` adds per-op and
per-layer time of each artifact at each thread count (`edgetrunc.runtime.profile`): tables
after the latency table, or `"profiles": [...]` in the JSON.
"""

from __future__ import annotations

import sys

from edgetrunc.cli import _args
from edgetrunc.cli._args import positive_int

DESCRIPTION = "Benchmark artifacts interleaved; latency percentiles, throughput, peak memory."
MAX_RUNS = 1_000_000


def add_arguments(p) -> None:
    from edgetrunc.runtime import RunnerOptions
    from edgetrunc.runtime.bench import bench_artifacts as f

    p.add_argument("artifacts", metavar="ARTIFACT", nargs="+")
    _args.add_parameter(p, f, "threads", "thread counts, e.g. 1,2", type=_args.thread_list)
    _args.add_parameter(p, f, "runs", "timed runs", type=_args.count(MAX_RUNS))
    _args.add_parameter(p, f, "warmup", "untimed runs first", type=int)
    _args.add_parameter(p, f, "batch", "batch size", type=positive_int)
    _args.add_parameter(p, RunnerOptions, "xnnpack", "TFLite: built-in kernels instead of the "
                        "XNNPACK delegate", flag="--no-xnnpack", action="store_false")
    p.add_argument("--profile", action="store_true",
                   help="also time each op (ONNX Runtime's profiler; TFLite: the model cut "
                   "after each op, timed cumulatively) and sum it per Keras layer")
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


def io_lines(results) -> list:
    """What each artifact with several inputs or outputs was fed and returned, once per artifact."""
    def shapes(named):
        return ", ".join(f"{name} {shape}" for name, shape in (named or {}).items())

    lines = {}
    for r in results:
        if len(r.get("inputs") or {}) > 1 or len(r.get("outputs") or {}) > 1:
            lines[r["artifact"]] = (f"{r['artifact']}: inputs {shapes(r['inputs'])}; "
                                    f"outputs {shapes(r['outputs'])}")
    return list(lines.values())


def format_profile(profile, limit: int = 40) -> str:
    """One artifact's per-layer and per-op time, FLOPs and achieved GFLOP/s."""
    from edgetrunc._text import table

    def rows(items, first):
        return [(first(r), f"{r['ms']:.3f}", f"{100 * r['share']:.1f}%",
                 f"{r['flops'] / 1e6:.2f}" if r["flops"] else "-",
                 "-" if r["gflops"] is None else f"{r['gflops']:.1f}") for r in items]

    head = (f"{profile['artifact']} ({profile['precision']}, {profile['threads']} thread"
            f"{'s' if profile['threads'] > 1 else ''}): {profile['total_ms']:.3f} ms, "
            f"{profile['method']}")
    layers = table(("layer", "ms", "share", "MFLOP", "GFLOP/s"),
                   rows(profile["layers"], lambda r: r["layer"] or "(no layer)"), align="lrrrr")
    ops = sorted(profile["ops"], key=lambda r: -r["ms"])[:limit]
    ops = table(("op", "ms", "share", "MFLOP", "GFLOP/s"),
                rows(ops, lambda r: f"{r['index']} {r['type']} {r['layer'] or ''}".strip()),
                align="lrrrr")
    return f"{head}\n{layers}\n{ops}"


def run(args) -> int:
    from edgetrunc._text import dumps_json
    from edgetrunc.runtime import RunnerOptions
    from edgetrunc.runtime.bench import bench_artifacts

    results = bench_artifacts(**_args.keywords(bench_artifacts, args),
                              options=RunnerOptions(xnnpack=args.xnnpack))
    profiles = []
    if args.profile:
        from edgetrunc.runtime.profile import profile_artifact

        profiles = [profile_artifact(path, threads=count, runs=args.runs,
                                     warmup=args.warmup, batch=args.batch)
                    for path in args.artifacts for count in args.threads]
    if args.json:
        sys.stdout.write(dumps_json({"results": results, **({"profiles": profiles}
                                                              if args.profile else {})}))
    else:
        print(format_table(results))
        for line in io_lines(results):
            print(line)
        for profile in profiles:
            print()
            print(format_profile(profile))
    return 0
