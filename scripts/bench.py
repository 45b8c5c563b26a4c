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
  and the fraction of this CPU's peak, estimated with a measured numpy float32 GEMM.

Usage: `python scripts/bench.py [--runs N] [--quick] [--out BENCHMARKS.md] [--models DIR]`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from scripts._benchmd import machine_description, markdown_table, update_section  # noqa: E402

THRESHOLD = 3.0
BIG_INPUT = 3e7
ARTIFACT_ORDER = [("tflite", "fp32"), ("tflite", "fp16"), ("tflite", "int8"),
                  ("onnx", "fp32"), ("onnx", "int8")]


# FLOPs -----------------------------------------------------------------------

def count_flops(model) -> list:
    """Per layer `{"layer", "kind", "macs", "flops"}` for one image, from the layer shapes.

    Convolutions and dense layers: 2 FLOPs per multiply-add. Pooling: one add per window
    element; batch normalization (inference): 2 per element; activations, truncation,
    softmax: 1 per element (a tanh counts as one). Input layers count nothing.
    """
    import keras

    rows = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        out_shape = tuple(layer.output.shape[1:])
        in_shape = tuple(layer.input.shape[1:])
        out_elems = int(np.prod(out_shape))
        macs, flops, kind = 0, 0, type(layer).__name__
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kh, kw = layer.kernel_size
            macs = out_elems * kh * kw
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw = layer.kernel_size
            macs = out_elems * kh * kw * in_shape[-1] // layer.groups
            flops = out_elems if layer.use_bias else 0
        elif isinstance(layer, keras.layers.Dense):
            macs = int(np.prod(in_shape)) * layer.units
            flops = out_elems if layer.use_bias else 0
            if getattr(layer.activation, "__name__", "linear") != "linear":
                flops += 3 * out_elems
        elif isinstance(layer, (keras.layers.AveragePooling2D, keras.layers.MaxPooling2D)):
            ph, pw = layer.pool_size
            flops = out_elems * ph * pw
        elif isinstance(layer, (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D)):
            flops = int(np.prod(in_shape))
        elif isinstance(layer, keras.layers.BatchNormalization):
            flops = 2 * out_elems
        else:
            flops = out_elems
        rows.append({"layer": layer.name, "kind": kind, "macs": int(macs),
                     "flops": int(2 * macs + flops)})
    return rows


def gemm_peak_gflops(threads: int, n: int = 1024, repeats: int = 20) -> float:
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


# helpers ---------------------------------------------------------------------

def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def p50(times) -> float:
    return float(np.percentile(times, 50))


def versions() -> str:
    import importlib.metadata as md

    found = []
    for name in ("tensorflow", "tensorflow-cpu", "keras", "ai-edge-litert", "onnxruntime",
                 "tf2onnx", "onnx", "numpy"):
        try:
            found.append(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            continue
    return ", ".join(found)


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


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


# truncation variants ----------------------------------------------------------

def _variant_layers(threshold):
    import keras
    import tensorflow as tf

    from edgetrunc.layers import Truncation

    T = float(threshold)

    def seed_answer_switch(x):
        ones = tf.ones_like(x)
        return tf.where(x > T, T * ones, tf.where(x < -T, -T * ones, x))

    return {
        "Truncation": lambda: Truncation(T, name="truncation"),
        "seed answer 1: x + stop_gradient(clip(x) - x)": lambda: keras.layers.Lambda(
            lambda x: x + keras.ops.stop_gradient(keras.ops.clip(x, -T, T) - x), name="truncation"),
        "seed answer 2: K.switch as tf.where": lambda: keras.layers.Lambda(
            seed_answer_switch, output_shape=lambda shape: shape, name="truncation"),
        "none (identity, for the op difference)": None,
    }


def _seed_block_with(make_truncation, reference, threshold):
    import keras

    from edgetrunc.models.seed_block import seed_layers

    inputs = keras.Input((256, 256, 1), name="input")
    x = inputs
    for layer in seed_layers(threshold):
        if layer.name == "truncation":
            if make_truncation is None:
                continue
            layer = make_truncation()
        x = layer(x)
        if reference is not None and layer.weights:
            layer.set_weights(reference.get_layer(layer.name).get_weights())
    return keras.Model(inputs, x, name="seed_block_variant")


def _to_tflite(model) -> bytes:
    import tensorflow as tf

    with _quiet():
        return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def _to_onnx(model) -> bytes:
    import tensorflow as tf
    import tf2onnx

    shape = tuple(model.inputs[0].shape[1:])
    spec = (tf.TensorSpec((None, *shape), tf.float32, name="input"),)
    with _quiet():
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)
    return proto.SerializeToString()


class _quiet:
    """Silence converter prints on stdout (fd 1, e.g. 'Saved artifact at') during a block."""

    def __enter__(self):
        sys.stdout.flush()
        self._saved = os.dup(1)
        self._null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(self._null, 1)

    def __exit__(self, *exc):
        sys.stdout.flush()
        os.dup2(self._saved, 1)
        os.close(self._saved)
        os.close(self._null)


def _onnx_op_count(content: bytes) -> dict:
    import collections

    import onnx

    return dict(collections.Counter(n.op_type for n in onnx.load_from_string(content).graph.node))


def _fmt_ops(ops: dict) -> str:
    return ", ".join(f"{k} {v}" if v > 1 else k for k, v in sorted(ops.items()))


def _op_difference(ops: dict, baseline: dict) -> dict:
    return {k: v - baseline.get(k, 0) for k, v in ops.items() if v - baseline.get(k, 0) > 0}


def bench_truncation_variants(runs: int, warmup: int) -> str:
    from edgetrunc.models import create
    from edgetrunc.runtime import ONNXRunner, TFLiteRunner
    from edgetrunc.runtime.bench import time_interleaved

    log("truncation variants: converting")
    reference = create("seed_block", threshold=THRESHOLD, seed=0)
    variants = _variant_layers(THRESHOLD)
    converted = {}
    for label, make in variants.items():
        model = _seed_block_with(make, reference, THRESHOLD)
        converted[label] = {"tflite": _to_tflite(model), "onnx": _to_onnx(model), "model": model}
    try:
        from edgetrunc.export import export_onnx

        with _quiet():
            proto = export_onnx(converted["Truncation"]["model"], precision="fp32")
        converted["Truncation"]["onnx_export"] = proto.SerializeToString()
    except Exception as exc:  # the exporter is optional for this table
        log(f"edgetrunc export_onnx unavailable for the Clip row: {exc}")

    baseline = converted.pop("none (identity, for the op difference)")
    base_tflite = TFLiteRunner(baseline["tflite"]).metadata().extra["ops"]
    base_onnx = _onnx_op_count(baseline["onnx"])
    x = np.random.default_rng(0).uniform(0, 255, (1, 256, 256, 1)).astype(np.float32)
    functions = {}
    for label, item in converted.items():
        tfl = TFLiteRunner(item["tflite"], threads=1)
        ort = ONNXRunner(item["onnx"], threads=1, spin=False)
        functions[(label, "tflite")] = (lambda r=tfl: r.infer(x))
        functions[(label, "onnx")] = (lambda r=ort: r.infer(x))
        item["tflite_ops"] = tfl.metadata().extra["ops"]
        item["onnx_ops"] = _onnx_op_count(item["onnx"])
        if "onnx_export" in item:
            ort_export = ONNXRunner(item["onnx_export"], threads=1, spin=False)
            functions[(label, "onnx_export")] = (lambda r=ort_export: r.infer(x))
            item["onnx_export_ops"] = _onnx_op_count(item["onnx_export"])
    log("truncation variants: timing (interleaved)")
    times = time_interleaved(functions, runs, warmup, desc="truncation variants")

    big = _big_input_outputs(converted)
    table = []
    for label, item in converted.items():
        onnx_rows = [("tf2onnx", "onnx", "onnx_ops")]
        if "onnx_export" in item:
            onnx_rows.append(("edgetrunc export", "onnx_export", "onnx_export_ops"))
        for onnx_label, key, ops_key in onnx_rows:
            table.append([
                label if onnx_label == "tf2onnx" else f"{label} (ONNX via edgetrunc export)",
                sum(item["tflite_ops"].values()),
                _fmt_ops(_op_difference(item["tflite_ops"], base_tflite)) or "-",
                sum(item[ops_key].values()),
                _fmt_ops(_op_difference(item[ops_key], base_onnx)) or "-",
                f"{p50(times[(label, 'tflite')]):.2f}",
                f"{p50(times[(label, key)]):.2f}",
                f"{p50(times[(label, 'tflite')]) / p50(times[('Truncation', 'tflite')]):.2f}x / "
                f"{p50(times[(label, key)]) / p50(times[('Truncation', 'onnx')]):.2f}x",
                " / ".join(f"{big[label][b]:.6g}" for b in ("keras", "tflite", "onnx")),
            ])
    headers = ["variant", "TFLite ops", "TFLite ops from the truncation", "ONNX ops",
               "ONNX ops from the truncation", "TFLite p50 ms", "ORT p50 ms",
               "time vs Truncation (TFLite / ORT)", "max abs y at x=+-3e7 (Keras / TFLite / ORT)"]
    return "\n".join([
        "## Truncation variants in the seed block",
        "",
        f"Seed block `Conv2D(8, 5x5) -> truncation(T={THRESHOLD:g}) -> tanh -> AvgPool(5, 2) -> BN` "
        "on one 256x256x1 input, the same weights in every variant, converted with the plain "
        "`tf.lite.TFLiteConverter.from_keras_model` and `tf2onnx.convert.from_keras` (opset 17). "
        "\"ops from the truncation\" is the op inventory minus that of the same block without a "
        "truncation. Latency: p50 of "
        f"{runs} interleaved runs, 1 thread (TFLite with XNNPACK, ONNX Runtime CPU). The last column "
        "runs the truncation alone on x = [3e7, -3e7] (T = 3, so the answer must be 3). ONNX Runtime "
        "runs with thread spinning off.",
        "",
        markdown_table(headers, table),
    ])


def _big_input_outputs(converted) -> dict:
    """max |y| of each truncation variant alone for x = [+3e7, -3e7] in Keras, TFLite, ORT."""
    import keras

    from edgetrunc.runtime import ONNXRunner, TFLiteRunner

    x = np.array([BIG_INPUT, -BIG_INPUT, BIG_INPUT, -BIG_INPUT], np.float32).reshape(1, 1, 1, 4)
    results = {}
    for label, make in _variant_layers(THRESHOLD).items():
        if make is None or label not in converted:
            continue
        inputs = keras.Input((1, 1, 4), name="input")
        model = keras.Model(inputs, make()(inputs))
        outputs = {"keras": np.asarray(model(x)),
                   "tflite": next(iter(TFLiteRunner(_to_tflite(model)).infer(x).values())),
                   "onnx": next(iter(ONNXRunner(_to_onnx(model)).infer(x).values()))}
        results[label] = {k: float(np.abs(v).max()) for k, v in outputs.items()}
    return results


# tlunet: Keras vs runtimes ------------------------------------------------------

def load_tlunet(models_dir: Path):
    import keras

    import edgetrunc.layers  # noqa: F401  (registers Truncation for loading)
    from edgetrunc.models import create

    path = models_dir / "tlunet.keras"
    if path.exists():
        return keras.saving.load_model(path, compile=False), _rel(path)
    return create("tlunet", seed=0), "untrained `tlunet` (models/tlunet.keras not found)"


def bench_tlunet(model, artifacts: dict, runs: int, warmup: int, threads=(1, 2)) -> tuple:
    import tensorflow as tf

    from edgetrunc.runtime import open_runner
    from edgetrunc.runtime.bench import time_interleaved

    x = np.random.default_rng(0).uniform(0, 255, (1, 256, 256, 1)).astype(np.float32)
    x_tensor = tf.constant(x)
    compiled = tf.function(lambda t: model(t, training=False))
    functions = {("Keras model.predict", "TF default"): lambda: model.predict(x, verbose=0),
                 ("Keras compiled call (tf.function)", "TF default"): lambda: compiled(x_tensor).numpy()}
    for fmt, precision in ARTIFACT_ORDER:
        if (fmt, precision) not in artifacts:
            continue
        for count in threads:
            options = {"spin": False} if fmt == "onnx" else {}
            runner = open_runner(artifacts[(fmt, precision)], threads=count, **options)
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
                [[_rel(r["artifact"]), r["precision"], r["threads"], r["batch"], f"{r['min_ms']:.2f}",
                  f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}", f"{r['p99_ms']:.2f}",
                  f"{r['throughput_ips']:.1f}", r["peak_rss_mb"],
                  "-" if r["delegate_partitions"] is None else r["delegate_partitions"]]
                 for r in bench_rows]),
        ]
    return "\n".join(lines)


def flops_section(model, source: str, timings: dict, peaks: dict) -> str:
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
                         if peak else "?"])
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
        "estimated by measurement, not from a datasheet: the best of 2 x 20 numpy float32 "
        "1024x1024 GEMMs (OpenBLAS; at the start and at the end of the run) with the same "
        "number of BLAS threads. On a machine shared with other work the 2-thread figures "
        "are lower bounds (the second core is rarely free).",
        "",
        markdown_table(["threads", "TFLite fp32 ms (p50 / min)", "achieved GFLOP/s (p50 / min)",
                        "numpy GEMM GFLOP/s", "fraction of peak (p50 / min)"], achieved),
    ]
    return "\n".join(lines)


SECTION_ORDER = ("machine", "runtime", "truncation-variants", "flops", "export", "parity", "training")


def order_sections(path: Path, order=SECTION_ORDER) -> None:
    """Put the named sections of BENCHMARKS.md in `order` (others after them, as they were)."""
    import re

    text = path.read_text()
    pattern = re.compile(r"<!-- BEGIN (?P<name>[\w.-]+) -->\n.*?<!-- END (?P=name) -->\n?", re.S)
    blocks = [(m.group("name"), m.group(0).rstrip("\n") + "\n") for m in pattern.finditer(text)]
    if not blocks:
        return
    head = text[:pattern.search(text).start()].rstrip("\n") + "\n"
    rank = {name: i for i, name in enumerate(order)}
    blocks.sort(key=lambda b: rank.get(b[0], len(order)))
    from edgetrunc._io import write_text_atomic

    write_text_atomic(path, head + "".join("\n" + block for _, block in blocks))


def machine_section(started: str, load: str) -> str:
    return "\n".join([
        "## Machine",
        "",
        f"- {machine_description()}",
        f"- {versions()}",
        f"- run at {started} UTC; load average at the start: {load} (other work was running: "
        "timings interleave their candidates so that it affects all alike)",
        "- reproduce: `make bench` (`python scripts/bench.py`)",
    ])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=60, help="timed runs per candidate (default: 60)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed rounds first (default: 5)")
    parser.add_argument("--quick", action="store_true", help="few runs, for a smoke test")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md", help="BENCHMARKS.md path")
    parser.add_argument("--models", type=Path, default=ROOT / "models", help="shipped models folder")
    args = parser.parse_args(argv)
    runs, warmup = (3, 1) if args.quick else (args.runs, args.warmup)
    start = time.monotonic()
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    load = " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"

    update_section("machine", machine_section(started, load), path=args.out)
    peaks = {} if args.quick else {count: gemm_peak_gflops(count) for count in (1, 2)}

    variants = bench_truncation_variants(runs, warmup)
    update_section("truncation-variants", variants, path=args.out)

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
    order_sections(args.out)
    log(f"wrote {args.out} in {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
