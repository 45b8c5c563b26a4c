#!/usr/bin/env python3
"""Export benchmark: int8 vs fp32 TFLite speed, int8 agreement, conversion wall time.

Converts MODEL (default models/tlunet.keras) with `edgetrunc.export.convert`, once with the
truncation-aware int8 and once with the converters' stock int8, then
- times every TFLite artifact at 1 and 2 threads, interleaved in worker processes
  (`edgetrunc.runtime.bench`), with the XNNPACK partition count of each;
- reports decision agreement / accuracy delta with Keras on held-out pairs (from the
  manifests) for both int8 variants, TFLite and ONNX;
- compares the conversion wall time of each artifact (export + metadata + read-back
  inspection + int8 evaluation) with the bare converter call that produces it.
Prints the tables and writes the "export" section of BENCHMARKS.md (unless --no-write).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from scripts.benchmarks._markdown import (ROOT, machine_description, markdown_table,  # noqa: E402
                                          publish)


def _bare_conversions(model, calibration, tmp, warm_up=True):
    """Wall time of the plain converter calls (no checks, no metadata, no evaluation), after a
    warm-up conversion unless `warm_up` is false."""
    import onnx
    import tensorflow as tf
    import tf2onnx
    from onnxruntime.quantization import QuantFormat, quantize_static

    from edgetrunc._log import quiet_converter

    def representative():
        for i in range(len(calibration)):
            yield [calibration[i:i + 1]]

    class Reader:
        def __init__(self):
            self.items = iter([{"input": calibration[i:i + 1]} for i in range(len(calibration))])

        def get_next(self):
            return next(self.items, None)

    def fp32():
        return tf.lite.TFLiteConverter.from_keras_model(model).convert()

    def fp16():
        c = tf.lite.TFLiteConverter.from_keras_model(model)
        c.optimizations = [tf.lite.Optimize.DEFAULT]
        c.target_spec.supported_types = [tf.float16]
        return c.convert()

    def int8():
        c = tf.lite.TFLiteConverter.from_keras_model(model)
        c.optimizations = [tf.lite.Optimize.DEFAULT]
        c.representative_dataset = representative
        c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        return c.convert()

    spec = [tf.TensorSpec((None, *model.inputs[0].shape[1:]), tf.float32, name="input")]
    protos = []

    def onnx_fp32():
        protos.append(tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)[0])
        return protos[-1]

    def onnx_int8():
        proto = protos[-1] if protos else onnx_fp32()
        quantize_static(onnx.ModelProto.FromString(proto.SerializeToString()),
                        Path(tmp) / "bare_int8.onnx", Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True)

    calls = {"fp32.tflite": fp32, "fp16.tflite": fp16, "int8.tflite": int8,
             "fp32.onnx": onnx_fp32, "int8.onnx": onnx_int8}
    timings = {}
    with quiet_converter():
        if warm_up:
            fp32()  # warm-up: graph tracing happens once per process
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            timings[name] = time.perf_counter() - started
    return timings


def _label(path: Path) -> str:
    """The model as the table names it: repository-relative path (or file name) and hash."""
    import hashlib

    try:
        shown = path.resolve().relative_to(ROOT)
    except ValueError:
        shown = path.name
    return f"{shown}, sha256 {hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "models" / "tlunet.keras"))
    parser.add_argument("--runs", type=int, default=200, help="timed runs per artifact")
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args(argv)

    from edgetrunc import _log
    from edgetrunc.export import convert
    from edgetrunc.data.geometry import image_geometry
    from edgetrunc.export.calibration import calibration_pairs
    from edgetrunc.keras.load import load_keras_model
    from edgetrunc.runtime.bench import bench_artifacts

    source = Path(args.model)
    note = ""
    load = " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    tmp = tempfile.mkdtemp(prefix="edgetrunc-bench-export-")
    if not source.exists():
        from edgetrunc.models import create

        note = (f"{source} is missing: timings use an untrained `tlunet` (seed 0); its "
                "agreement figures mean little (near-constant outputs).")
        _log.warn(note)
        source = Path(tmp) / "tlunet.keras"
        create("tlunet", seed=0).save(source)

    aware_dir, stock_dir = Path(tmp) / "aware", Path(tmp) / "stock"
    ours = {}
    aware = convert(source, aware_dir, timings=ours)
    stock = convert(source, stock_dir, tflite=("int8",), onnx=("int8",), int8_mode="stock")
    model = load_keras_model(source)
    calibration = calibration_pairs("embedded", image_geometry(model)).x
    bare = _bare_conversions(model, calibration, tmp)

    from edgetrunc.export import export_tflite

    stem = source.stem
    literal_fp32 = Path(tmp) / f"{stem}_fp32_literal.tflite"
    literal_fp32.write_bytes(export_tflite(model, "fp32", literal=True))
    tflite = {
        "fp32": aware_dir / f"{stem}_fp32.tflite",
        "fp32, literal (--literal, not shipped)": literal_fp32,
        "fp16": aware_dir / f"{stem}_fp16.tflite",
        "int8 truncation-aware": aware_dir / f"{stem}_int8.tflite",
        "int8 stock": stock_dir / f"{stem}_int8.tflite",
    }
    results = bench_artifacts([str(p) for p in tflite.values()], threads=(1, 2), runs=args.runs,
                              warmup=10)
    by_key = {(r["artifact"], r["threads"]): r for r in results}
    speed_rows = []
    for label, path in tflite.items():
        row = [label]
        for threads in (1, 2):
            r = by_key[(str(path), threads)]
            fp32 = by_key[(str(tflite["fp32"]), threads)]
            row += [f"{r['min_ms']:.2f} / {r['p50_ms']:.2f}",
                    f"{fp32['min_ms'] / r['min_ms']:.2f}x / {fp32['p50_ms'] / r['p50_ms']:.2f}x"]
        row.append(str(by_key[(str(path), 1)]["delegate_partitions"]))
        speed_rows.append(row)
    speed = markdown_table(["TFLite artifact", "1 thread min / p50 ms", "vs fp32 (min / p50)",
                            "2 threads min / p50 ms", "vs fp32 (min / p50)", "XNNPACK partitions"],
                           speed_rows)

    quality_rows = []
    for label, manifest in (("truncation-aware", aware), ("stock", stock)):
        for a in manifest["artifacts"]:
            if a["precision"] != "int8":
                continue
            e = a["quantization"]["evaluation"]
            mapping = "; ".join(t["mapped_to"] for t in a["truncations"])
            quality_rows.append([f"{a['format']} int8 {label}", f"{e['decision_agreement']:.3f}",
                                 f"{e['accuracy_delta']:+.3f}", f"{e['probability_mae']:.4f}",
                                 str(e["samples"]), mapping])
    quality = markdown_table(["artifact", "decision agreement", "accuracy delta",
                              "probability MAE", "held-out samples", "truncation mapped to"],
                             quality_rows)

    time_rows = []
    for a in aware["artifacts"]:
        key = f"{a['precision']}.{a['format']}"
        time_rows.append([a["path"], f"{ours[a['path']]:.1f}", f"{bare[key]:.1f}"])
    timing = markdown_table(["artifact", "edgetrunc convert s", "bare converter call s"], time_rows)

    text = "\n\n".join(filter(None, [
        "## Export (`python -m scripts.benchmarks export`)",
        f"Machine: {machine_description()}. Model: `{_label(source)}`"
        f"{' (' + note + ')' if note else ''}. Latency: one 256x256 image, "
        f"{args.runs} interleaved runs per artifact in separate worker processes "
        "(`edgetrunc.runtime.bench`), ai-edge-litert with XNNPACK; minimum and median. The "
        f"machine is shared (2 cores, other jobs running; load average at the start: {load}), "
        "so the median moves between runs; "
        "the minimum is the steadier figure for the ratios.",
        "### int8 vs fp32 TFLite speed", speed,
        "Truncation-aware int8 keeps everything before the first truncation in float: the "
        "fixed KV filter and the seed-block convolution, about 20% of the multiply-adds but, "
        "with one input channel each, about 60% of the plain fp32 time on this CPU (XNNPACK "
        "wastes its vector lanes on one channel). Every artifact therefore runs that chain of "
        "one-channel float convolutions over 2x2 blocks of pixels packed into channels "
        "(SPACE_TO_DEPTH -> CONV_2D 3x3 -> CONV_2D 3x3 -> DEPTH_TO_SPACE, the same products "
        "plus exact zeros), with the truncation and the activation moved before the "
        "unpacking, by default; the seed block's VALID pooling and batch normalization "
        "then read the packed values as convolutions (int8: one int8 convolution with the "
        "same int32 sums; float: window sums by a depthwise convolution, then a 1x1 one). "
        "The row 'fp32, literal' is "
        "the one-to-one translation (`convert --literal`): the packing is most of the gain "
        "over it; int8's convolutions after the truncation add the rest. Stock int8 splits the graph into "
        "several XNNPACK partitions (MINIMUM/MAXIMUM and int8 AVERAGE_POOL_2D run outside "
        "XNNPACK).",
        "### int8 decision agreement with Keras (held-out pairs)", quality,
        "### Conversion wall time per artifact",
        "`edgetrunc convert` includes the metadata, the read-back inspection and, for int8, "
        "the truncation-aware rewrite and the evaluation on held-out pairs (Keras reference "
        "computed once, in the first int8 artifact's time); the bare calls are "
        "`TFLiteConverter.convert()` (fp32, fp16, stock int8), `tf2onnx.convert.from_keras` "
        "and `quantize_static` (stock settings), each after a warm-up conversion.",
        timing,
    ]))
    return publish("export", text, not args.no_write)


if __name__ == "__main__":
    sys.exit(main())
