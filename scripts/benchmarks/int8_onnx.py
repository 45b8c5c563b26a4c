"""Does int8 pay in ONNX Runtime? fp32 against truncation-aware QDQ int8, and where int8 time goes.

For each model (`tlunet`; `residual`, an SRNet-like net of 14 residual blocks; `yenet`, a
Ye-Net-size net whose front end is 30 high-pass filters, both from
`scripts/make_foreign_models.py` at their real sizes and migrated first): convert to ONNX fp32
and int8 (`edgetrunc.export.convert`, no held-out evaluation), time both interleaved in one
process (1 thread, `--runs` rounds, seeded random input), and aggregate the int8 model's time
per op type with onnxruntime's profiler (`edgetrunc.runtime.profile`): which ops run as int8
kernels (QLinear*), which stay float, and what the quantize / dequantize / reorder glue costs.

Writes the `int8-onnx` section of BENCHMARKS.md and prints the table.

    python -m scripts.benchmarks int8-onnx [--models tlunet,residual,yenet] [--runs 30] [--no-write]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from scripts.benchmarks import _markdown
from scripts.benchmarks.models import build_model

MODELS = ("tlunet", "residual", "yenet")


def bench_one(name: str, folder: Path, runs: int) -> list:
    from edgetrunc.export.conversion import convert
    from edgetrunc.runtime import open_runner
    from edgetrunc.runtime.bench import random_batch, time_interleaved
    from edgetrunc.runtime.profile import profile_artifact

    model = build_model(name, folder)
    out = folder / f"{name}_onnx"
    convert(model, out, tflite=(), onnx=("fp32", "int8"), evaluate=False, speed=False)
    paths = {p: out / f"{model.stem}_{p}.onnx" for p in ("fp32", "int8")}
    runners = {p: open_runner(path, threads=1, spin=False) for p, path in paths.items()}
    x = random_batch(runners["fp32"], 1)
    times = time_interleaved({p: (lambda r=r: r.infer(x)) for p, r in runners.items()},
                             runs=runs, warmup=3, desc=name)
    profile = profile_artifact(paths["int8"], threads=1, runs=min(runs, 10))
    by_type = {}
    for op in profile["ops"]:
        by_type[op["type"]] = by_type.get(op["type"], 0.0) + op["ms"]
    top = sorted(by_type.items(), key=lambda kv: -kv[1])[:5]
    fp32, int8 = (float(np.median(times[p])) for p in ("fp32", "int8"))
    return [name, f"{fp32:.2f}", f"{int8:.2f}", f"{fp32 / int8:.2f}x",
            ", ".join(f"{k} {v / profile['total_ms']:.0%}" for k, v in top)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            _markdown.log(f"{name} ...")
            rows.append(bench_one(name, Path(tmp), args.runs))
            _markdown.log(" | ".join(rows[-1]))
    table = _markdown.markdown_table(
        ["model", "fp32 p50 ms", "int8 p50 ms", "int8 speed vs fp32", "int8 time by op type"],
        rows)
    markdown = (f"## Does int8 pay in ONNX Runtime?\n\n`python -m scripts.benchmarks int8-onnx`: "
                "ONNX fp32 against truncation-aware QDQ int8, 1 thread, interleaved in one "
                "process; the int8 time per op type from onnxruntime's profiler (QLinear*: "
                "int8 kernels; Conv: a float kernel; (De)QuantizeLinear: the glue). `convert` "
                "makes the same comparison on every model (manifest `quantization.speed`, a "
                "warning when int8 is slower).\n\n"
                f"{table}\n\nMachine: {_markdown.machine_description()}.\n")
    return _markdown.publish("int8-onnx", markdown, not args.no_write)


if __name__ == "__main__":
    sys.exit(main())
