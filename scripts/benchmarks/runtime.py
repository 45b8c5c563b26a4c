#!/usr/bin/env python
"""`make bench`: runtime, truncation-variant and FLOP benchmarks, written to BENCHMARKS.md.

Measured side by side in one run (every timing loop interleaves its candidates, so a busy
machine slows them alike), with the machine described:

- machine: CPU, cores, memory, library versions, load average at the start;
- truncation-variants: the seed block with `Truncation` vs the seed's first answer
  (`x + stop_gradient(clip(x) - x)` in a Lambda) vs its second (`K.switch` logic, ported to
  `tf.where`): TFLite / ONNX op counts, TFLite / ONNX Runtime latency, max |y| at x = +-3e7;
- runtime: `tlunet` at 1x256x256x1, Keras (`model.predict`, a compiled `tf.function` call)
  vs the shipped TFLite fp32 / fp16 / int8 and ONNX fp32 / int8 artifacts at 1 and 2
  threads, then `edgetrunc bench` (worker processes: percentiles, throughput, peak RSS);
- flops: FLOPs of `tlunet` counted from its layer shapes, achieved GFLOP/s of TFLite fp32,
  and the fraction of this CPU's peak, estimated with a measured numpy float32 GEMM;
- scaling: cost versus work, tlunet fp32 TFLite / ONNX latency at 256, 512 and 1024 pixels
  square and 1 and 2 threads (`_scaling.py`).

The sections are written by `_variants.py` and `_runtime.py`;
FLOPs are counted by `edgetrunc.models.flops.count_flops`.

Usage: `python -m scripts.benchmarks runtime [--runs N] [--quick] [--out FILE] [--models DIR]`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from scripts.benchmarks._markdown import (ROOT, log, machine_description,  # noqa: E402
                                          order_sections, output_path, toolchain_versions,
                                          update_section)
from scripts.benchmarks._runtime import (ARTIFACT_ORDER, bench_tlunet,  # noqa: E402
                                         flops_section, gemm_peak_gflops, load_tlunet,
                                         shipped_artifacts, tlunet_section)
from scripts.benchmarks._variants import bench_truncation_variants  # noqa: E402


def machine_section(started: str, load: str) -> str:
    return "\n".join([
        "## Machine",
        "",
        f"- {machine_description()}",
        f"- {toolchain_versions()}",
        f"- run at {started} UTC; load average at the start: {load} (other work was running: "
        "timings interleave their candidates so that it affects all alike)",
        "- reproduce: `make bench` (`python -m scripts.benchmarks`)",
    ])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=60, help="timed runs per candidate (default: 60)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed rounds first (default: 5)")
    parser.add_argument("--quick", action="store_true", help="few runs, for a smoke test")
    parser.add_argument("--out", type=Path, default=None,
                        help="BENCHMARKS.md path (default: the entry point's output)")
    parser.add_argument("--models", type=Path, default=ROOT / "models", help="shipped models folder")
    args = parser.parse_args(argv)
    args.out = args.out or output_path()
    runs, warmup = (3, 1) if args.quick else (args.runs, args.warmup)
    start = time.monotonic()
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    load = " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"

    update_section("machine", machine_section(started, load), path=args.out)
    peaks = {} if args.quick else {count: gemm_peak_gflops(count) for count in (1, 2)}

    variants = bench_truncation_variants(runs, warmup)
    update_section("truncation-variants", variants, path=args.out)
    if not args.quick:
        peaks = {count: max(peaks[count], gemm_peak_gflops(count)) for count in (1, 2)}

    model, source = load_tlunet(args.models)
    artifacts, note = shipped_artifacts(args.models)
    timings = bench_tlunet(model, artifacts, runs, warmup)
    bench_rows = []
    if artifacts:
        from edgetrunc.runtime.bench import bench_artifacts

        log("edgetrunc bench: worker processes")
        ordered = [artifacts[key] for key in ARTIFACT_ORDER if key in artifacts]
        bench_rows = bench_artifacts(ordered, threads=[1, 2], runs=runs, warmup=warmup)
    update_section("runtime", tlunet_section(source, timings, runs, note, bench_rows), path=args.out)

    if not args.quick:
        peaks = {count: max(peaks[count], gemm_peak_gflops(count)) for count in (1, 2)}
    update_section("flops", flops_section(model, source, timings, peaks), path=args.out)
    from scripts.benchmarks._profile import bench_profiles, profile_section

    from edgetrunc.models.flops import count_flops

    model_flops = sum(r["flops"] for r in count_flops(model))
    update_section("profile", profile_section(bench_profiles(artifacts, runs, warmup), runs,
                                              model_flops), path=args.out)
    from scripts.benchmarks._scaling import bench_scaling, scaling_section

    scaling = bench_scaling(model, max(runs // 3, 3), warmup)
    update_section("scaling", scaling_section(scaling, source, max(runs // 3, 3)), path=args.out)
    order_sections(args.out)
    log(f"wrote {args.out} in {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
