"""The cost-versus-work section of `make bench`: latency of tlunet against input size and threads.

The shipped tlunet weights (or an untrained tlunet's) are loaded into tlunets built for
256x256, 512x512 and 1024x1024 inputs (the layers do not depend on the input size), each
exported with `edgetrunc.export` (default rewrites) to fp32 TFLite and ONNX, and timed with
`edgetrunc.runtime.bench.bench_artifacts` (worker processes, interleaved) at 1 and 2 threads.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from scripts.benchmarks._markdown import log, markdown_table

SIZES = (256, 512, 1024)


def _sized_models(model):
    from edgetrunc.models import create

    for size in SIZES:
        sized = create("tlunet", input_shape=(size, size, 1), seed=0)
        sized.set_weights(model.get_weights())
        yield size, sized


def bench_scaling(model, runs: int, warmup: int, threads=(1, 2)) -> list:
    """`[(size, format, threads, p50 ms, min ms)]` for every size, format and thread count."""
    from edgetrunc.export.onnx.exporter import export_onnx
    from edgetrunc.export.tflite.exporter import export_tflite
    from edgetrunc.runtime.bench import bench_artifacts

    with tempfile.TemporaryDirectory(prefix="edgetrunc-scaling-") as tmp:
        paths = []
        for size, sized in _sized_models(model):
            log(f"scaling: exporting tlunet at {size}x{size}")
            tflite = Path(tmp) / f"tlunet_{size}.tflite"
            tflite.write_bytes(export_tflite(sized, "fp32"))
            onnx = Path(tmp) / f"tlunet_{size}.onnx"
            onnx.write_bytes(export_onnx(sized, "fp32").SerializeToString())
            paths += [(size, "TFLite fp32", tflite), (size, "ONNX Runtime fp32", onnx)]
        results = bench_artifacts([p for _, _, p in paths], threads=list(threads), runs=runs,
                                  warmup=warmup)
    labels = {str(p): (size, label) for size, label, p in paths}
    return [(*labels[r["artifact"]], r["threads"], r["p50_ms"], r["min_ms"]) for r in results]


def scaling_section(rows, source: str, runs: int) -> str:
    base = {(label, count): p50 for size, label, count, p50, _ in rows if size == SIZES[0]}
    table = []
    for size, label, count, p50, low in sorted(rows, key=lambda r: (r[1], r[2], r[0])):
        pixels = (size / SIZES[0]) ** 2
        ratio = p50 / base[(label, count)]
        table.append([label, count, f"{size}x{size}", f"{pixels:.0f}x", f"{p50:.2f}", f"{low:.2f}",
                      f"{ratio:.2f}x", f"{ratio / pixels:.2f}"])
    return "\n".join([
        "## Cost versus work: latency against input size and threads",
        "",
        f"Weights: {source}, loaded into tlunets built for each input size (the layers do not "
        "depend on it), exported with `edgetrunc convert`'s default rewrites; `edgetrunc "
        f"bench` worker processes, {runs} interleaved runs, batch 1. \"time / pixels\" is the "
        "p50 growth over 256x256 divided by the growth in pixels: 1.00 means latency grows "
        "exactly with the pixels, below 1 means better than linear (fixed costs amortised).",
        "",
        markdown_table(["runtime", "threads", "input", "pixels vs 256", "p50 ms", "min ms",
                        "p50 vs 256", "time / pixels"], table),
    ])
