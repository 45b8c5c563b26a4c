"""Parity throughput: batched inference (what `edgetrunc parity` does) vs a per-sample loop.

For the Keras reference and every artifact, runs the same 256x256 inputs once in batches of
16 (the TFLite input resized to the batch) and once one sample at a time, and prints
samples/second of each and the ratio; also the whole parity comparison (all backends) both
ways, and the naive Keras loop (`model.predict` per sample). Uses models/tlunet.keras and its
shipped artifacts when they exist, else a seeded `tlunet` exported to a temporary folder.
Writes the "parity" section of BENCHMARKS.md (`--no-write` to only print).

    python scripts/bench_parity.py [--samples 64] [--batch 16] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
SHIPPED = ["tlunet_fp32.tflite", "tlunet_fp16.tflite", "tlunet_int8.tflite", "tlunet_fp32.onnx",
           "tlunet_int8.onnx"]


def _artifacts(folder: Path):
    """(model path, [artifact paths], where they came from)."""
    model = ROOT / "models" / "tlunet.keras"
    shipped = [ROOT / "models" / name for name in SHIPPED]
    if model.exists() and all(p.exists() for p in shipped):
        return model, shipped, "models/ (shipped)"
    from edgetrunc.data import load_pairs
    from edgetrunc.export import export_onnx, export_tflite
    from edgetrunc.models import create

    keras_model = create("tlunet", seed=0)
    model = folder / "tlunet.keras"
    keras_model.save(model)
    calibration = load_pairs(split="train", max_pairs=16, seed=0).x
    paths = []
    for name in SHIPPED:
        precision, fmt = name.split("_")[1].split(".")
        path = folder / name
        if fmt == "tflite":
            path.write_bytes(export_tflite(keras_model, precision,
                                           calibration=calibration if precision == "int8" else None))
        else:
            path.write_bytes(export_onnx(keras_model, precision, calibration=calibration
                                         if precision == "int8" else None).SerializeToString())
        paths.append(path)
    return model, paths, "seeded tlunet (untrained), exported to a temporary folder"


def _time(fn, repeats=2):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)

    from _benchmd import machine_description, markdown_table, update_section

    from edgetrunc.parity.comparator import Comparator
    from edgetrunc.parity.inputs import parity_inputs
    from edgetrunc.parity.keras_runner import KerasRunner
    from edgetrunc.runtime import open_runner
    from edgetrunc import _log

    _log.set_quiet(True)
    with tempfile.TemporaryDirectory() as tmp:
        model, artifacts, origin = _artifacts(Path(tmp))
        keras_runner = KerasRunner(model, batch_size=args.batch)
        runners = [keras_runner] + [open_runner(p) for p in artifacts]
        names = ["keras (compiled tf.function)"] + [p.name for p in artifacts]
        x = parity_inputs("mix", args.samples, 0).x
        for runner in runners:  # warm up both batch sizes (graph tracing, interpreter resize)
            runner.infer(x[:args.batch])
            runner.infer(x[:1])

        rows, total_batched, total_loop = [], 0.0, 0.0
        for name, runner in zip(names, runners):
            batched = _time(lambda: [runner.infer(x[i:i + args.batch]) for i in range(0, len(x), args.batch)])
            loop = _time(lambda: [runner.infer(x[i:i + 1]) for i in range(len(x))])
            total_batched += batched
            total_loop += loop
            rows.append([name, f"{len(x) / batched:.1f}", f"{len(x) / loop:.1f}", f"{loop / batched:.2f}x"])

        keras_model = keras_runner.model
        keras_model.predict(x[:1], verbose=0)
        naive = _time(lambda: [keras_model.predict(x[i:i + 1], verbose=0) for i in range(len(x))], repeats=1)
        rows.append(["keras `model.predict` per sample (naive)", "-", f"{len(x) / naive:.1f}", "-"])
        naive_total = total_loop - (len(x) / float(rows[0][2])) + naive

        start = time.perf_counter()
        Comparator.run(runners, x, batch_size=args.batch, names=names)
        comparator_seconds = time.perf_counter() - start

    summary = [
        ["all backends, batched (Comparator.run, batch "
         f"{args.batch})", f"{len(x) * len(runners) / comparator_seconds:.1f}", f"{comparator_seconds:.2f}"],
        ["all backends, per-sample loop", f"{len(x) * len(runners) / total_loop:.1f}", f"{total_loop:.2f}"],
        ["all backends, per-sample loop with `model.predict`",
         f"{len(x) * len(runners) / naive_total:.1f}", f"{naive_total:.2f}"],
    ]
    markdown = "\n".join([
        "## Parity throughput (`scripts/bench_parity.py`)",
        "",
        f"Machine: {machine_description()}.",
        f"Models: {origin}; {len(x)} inputs of 256x256 (`--inputs mix`), best of 2 runs; default "
        "threads; TFLite with XNNPACK.",
        "",
        markdown_table(["backend", "batched samples/s", "per-sample samples/s", "speedup"], rows),
        "",
        markdown_table(["whole comparison", "inferences/s", "seconds"], summary),
        "",
        f"Batched vs the per-sample loop over all backends: **{total_loop / comparator_seconds:.1f}x**; "
        f"vs the naive loop with `model.predict`: **{naive_total / comparator_seconds:.1f}x**.",
    ])
    print(markdown)
    if not args.no_write:
        update_section("parity", markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
