"""The runtime and flops sections of `make bench`: tlunet in Keras and on the shipped artifacts.

runtime: `tlunet` at 1x256x256x1, Keras (`model.predict`, a compiled `tf.function` call) vs
the shipped TFLite fp32 / fp16 / int8 and ONNX fp32 / int8 artifacts at 1 and 2 threads,
interleaved in one process, then `edgetrunc bench` rows (worker processes). flops: FLOPs of
`tlunet` (`edgetrunc.models.flops.count_flops`), achieved GFLOP/s of TFLite fp32 and the
fraction of this CPU's peak, estimated with a measured numpy float32 GEMM.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from scripts.benchmarks._markdown import ROOT, log, markdown_table, p50, relative

ARTIFACT_ORDER = [("tflite", "fp32"), ("tflite", "fp16"), ("tflite", "int8"),
                  ("onnx", "fp32"), ("onnx", "int8")]


def gemm_peak_gflops(threads: int, n: int = 1024, repeats: int = 60) -> float:
    """Best float32 GEMM rate of numpy (OpenBLAS) with `threads` BLAS threads, in GFLOP/s."""
    code = (
        "import numpy as np, time\n"
        f"n={n}\n"
        "a=np.random.default_rng(0).standard_normal((n,n)).astype(np.float32); b=a.T.copy()\n"
        "a@b\n"
        "best=1e9\n"
        f"for _ in range({repeats}):\n"
        "    t=time.perf_counter(); a@b; best=min(best,time.perf_counter()-t)\n"
        "print(2*n**3/best/1e9)\n")
    env = dict(os.environ)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True)
    return float(out.stdout.strip())


def shipped_artifacts(models_dir: Path) -> tuple:
    """`({(format, precision): path}, note)` from `models_dir/manifest.json` (or by name)."""
    found, note = {}, ""
    manifest = models_dir / "manifest.json"
    if manifest.exists():
        for entry in json.loads(manifest.read_text()).get("artifacts", []):
            path = manifest.parent / entry["path"]
            if path.is_file():
                found.setdefault((entry["format"], entry["precision"]), path)
    else:
        note = f"no {manifest.relative_to(ROOT) if manifest.is_relative_to(ROOT) else manifest}; "
        for fmt, precision in ARTIFACT_ORDER:
            path = models_dir / f"tlunet_{precision}.{fmt}"
            if path.is_file():
                found[(fmt, precision)] = path
    missing = [f"{fmt} {precision}" for fmt, precision in ARTIFACT_ORDER if (fmt, precision) not in found]
    if missing:
        note += f"not found, rows skipped: {', '.join(missing)}"
    return found, note


def load_tlunet(models_dir: Path):
    """`(model, description)`: the shipped `tlunet.keras`, else an untrained `tlunet`."""
    from edgetrunc.keras.load import load_keras_model
    from edgetrunc.models import create

    path = models_dir / "tlunet.keras"
    if path.exists():
        return load_keras_model(path), relative(path)
    return create("tlunet", seed=0), "untrained `tlunet` (models/tlunet.keras not found)"


def bench_tlunet(model, artifacts: dict, runs: int, warmup: int, threads=(1, 2)) -> dict:
    """`{(backend, threads): {"p50", "min"}}` in ms: Keras and each artifact, interleaved."""
    import tensorflow as tf

    from edgetrunc.keras.runner import compiled_inference
    from edgetrunc.runtime import RunnerOptions, formats, open_runner
    from edgetrunc.runtime.bench import time_interleaved

    x = np.random.default_rng(0).uniform(0, 255, (1, 256, 256, 1)).astype(np.float32)
    x_tensor = tf.constant(x)
    compiled = compiled_inference(model)
    functions = {("Keras model.predict", "TF default"): lambda: model.predict(x, verbose=0),
                 ("Keras compiled call (tf.function)", "TF default"): lambda: compiled(x_tensor).numpy()}
    for fmt, precision in ARTIFACT_ORDER:
        if (fmt, precision) not in artifacts:
            continue
        for count in threads:
            shared = formats.get(fmt).shared_cores  # the runtimes take turns on the cores
            runner = open_runner(artifacts[(fmt, precision)],
                                 options=RunnerOptions(count, **shared))
            label = f"{'TFLite' if fmt == 'tflite' else 'ONNX Runtime'} {precision}"
            functions[(label, count)] = (lambda r=runner: r.infer(x))
    log("tlunet: timing Keras and the runtimes (interleaved)")
    times = time_interleaved(functions, runs, warmup, desc="tlunet")
    return {key: {"p50": p50(value), "min": float(np.min(value))} for key, value in times.items()}


def tlunet_section(source: str, timings: dict, runs: int, note: str, bench_rows: list) -> str:
    keras = timings[("Keras compiled call (tf.function)", "TF default")]
    rows = []
    for (label, count), t in timings.items():
        rows.append([label, count, f"{t['p50']:.2f}", f"{keras['p50'] / t['p50']:.2f}x",
                     f"{t['min']:.2f}", f"{keras['min'] / t['min']:.2f}x"])
    lines = [
        "## tlunet: Keras vs TFLite vs ONNX Runtime (1x256x256x1)",
        "",
        f"Model: {source}. p50 and min of {runs} interleaved runs in one process; \"vs Keras\" "
        "is the Keras compiled call's time divided by the row's (above 1 = faster than Keras). "
        "Keras runs with TensorFlow's default thread pools and oneDNN kernels (TensorFlow's default on x86); TFLite uses XNNPACK; ONNX Runtime "
        "runs with thread spinning off (spinning idle threads would slow whatever runs next in "
        "an interleaved loop). On a machine shared with other work the min is the steadier figure.",
        "",
        markdown_table(["backend", "threads", "p50 ms", "p50 vs Keras compiled", "min ms",
                        "min vs Keras compiled"], rows),
    ]
    if note:
        lines += ["", f"Artifacts: {note}."]
    lines += ["", target_table(timings)]
    if bench_rows:
        lines += [
            "",
            "### `edgetrunc bench` (TensorFlow-free runtime, one worker process per row)",
            "",
            f"`edgetrunc bench ARTIFACT... --threads 1,2 --runs {bench_rows[0]['runs']}`: runs "
            "interleaved across artifacts; peak RSS is the worker's whole process (Python, numpy, "
            "interpreter, model); ONNX Runtime without thread spinning.",
            "",
            markdown_table(
                ["artifact", "precision", "threads", "batch", "min ms", "p50 ms", "p90 ms", "p99 ms",
                 "images/s", "peak RSS MB", "XNNPACK partitions"],
                [[relative(r["artifact"]), r["precision"], r["threads"], r["batch"], f"{r['min_ms']:.2f}",
                  f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}", f"{r['p99_ms']:.2f}",
                  f"{r['throughput_ips']:.1f}", r["peak_rss_mb"],
                  "-" if r["delegate_partitions"] is None else r["delegate_partitions"]]
                 for r in bench_rows]),
        ]
    return "\n".join(lines)


SPEED_TARGETS = [("TFLite fp32", 1.3), ("TFLite int8", 2.0), ("ONNX Runtime fp32", 1.5)]


def _verdict(p50_ratio: float, min_ratio: float, target: float) -> str:
    if p50_ratio >= target and min_ratio >= target:
        return "met"
    if max(p50_ratio, min_ratio) >= target:
        return "met by the " + ("p50" if p50_ratio >= target else "min") + " only"
    return "missed"


def target_table(timings: dict) -> str:
    """The speed targets at 1 thread against the Keras compiled call of the same run."""
    keras = timings[("Keras compiled call (tf.function)", "TF default")]
    rows = []
    for label, target in SPEED_TARGETS:
        t = timings.get((label, 1))
        if t is None:
            continue
        p50_ratio, min_ratio = keras["p50"] / t["p50"], keras["min"] / t["min"]
        rows.append([f"{label}, 1 thread", f">= {target:.1f}x", f"{p50_ratio:.2f}x",
                     f"{min_ratio:.2f}x", _verdict(p50_ratio, min_ratio, target)])
    return "\n".join(["Speed targets (1 thread against the Keras compiled call of the same run):", "",
                      markdown_table(["artifact", "target", "p50", "min", "verdict"], rows)])


def flops_section(model, source: str, timings: dict, peaks: dict) -> str:
    from edgetrunc.models.flops import count_flops

    rows = count_flops(model)
    macs = sum(r["macs"] for r in rows)
    total = sum(r["flops"] for r in rows)
    mac_flops = 2 * macs
    per_layer = [[r["layer"], r["kind"], f"{r['macs'] / 1e6:.2f}", f"{r['flops'] / 1e6:.2f}"]
                 for r in rows if r["flops"]]
    achieved = []
    for count in (1, 2):
        if ("TFLite fp32", count) not in timings:
            continue
        t = timings[("TFLite fp32", count)]
        rate = {k: mac_flops / (t[k] / 1000) / 1e9 for k in ("p50", "min")}
        peak = peaks.get(count)
        achieved.append([count, f"{t['p50']:.2f} / {t['min']:.2f}",
                         f"{rate['p50']:.2f} / {rate['min']:.2f}", f"{peak:.1f}" if peak else "?",
                         f"{100 * rate['p50'] / peak:.1f}% / {100 * rate['min'] / peak:.1f}%"
                         if peak else "?",
                         _verdict(rate["p50"] / peak, rate["min"] / peak, 0.25)
                         if peak and count == 1 else "-"])
    lines = [
        "## FLOPs of tlunet and achieved throughput",
        "",
        f"Model: {source}. Counted from the layer shapes for one 256x256x1 image: convolutions and "
        "dense layers 2 FLOPs per multiply-add; pooling one add per window element; batch "
        "normalization 2 per element; activations and the truncation 1 per element.",
        "",
        f"- multiply-adds: **{macs / 1e6:.2f} M** (conv + dense: {mac_flops / 1e9:.3f} GFLOP)",
        f"- all FLOPs including pooling, batch normalization and activations: {total / 1e9:.3f} GFLOP",
        "",
        markdown_table(["layer", "kind", "M multiply-adds", "MFLOP"], per_layer),
        "",
        "Achieved rate of TFLite fp32 (XNNPACK) = conv + dense FLOPs / p50 latency. The peak is "
        "estimated by measurement, not from a datasheet: the best of 3 x 60 numpy float32 "
        "1024x1024 GEMMs (OpenBLAS; at the start, in the middle and at the end of the run; "
        "on a shared machine one batch of them can run well below the others) with the same "
        "number of BLAS threads. On a machine shared with other work the 2-thread figures "
        "are lower bounds (the second core is rarely free).",
        "",
        markdown_table(["threads", "TFLite fp32 ms (p50 / min)", "achieved GFLOP/s (p50 / min)",
                        "numpy GEMM GFLOP/s", "fraction of peak (p50 / min)",
                        "target >= 25% at 1 thread"], achieved),
    ]
    return "\n".join(lines)
