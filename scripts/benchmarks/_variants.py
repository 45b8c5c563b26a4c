"""The truncation-variants section of `make bench`: three ways to write the seed's truncation.

The seed block with `Truncation` vs the seed's first answer (`x + stop_gradient(clip(x) - x)`
in a Lambda) vs its second (`K.switch` logic, ported to `tf.where`), the same weights in
each: TFLite / ONNX op counts (minus those of the block without a truncation), TFLite /
ONNX Runtime latency (interleaved), and max |y| of the truncation alone at x = +-3e7.
"""

from __future__ import annotations

import numpy as np

from edgetrunc._log import native_banners_dropped
from edgetrunc.runtime.metadata import onnx_ops
from scripts.benchmarks._markdown import log, markdown_table, p50

THRESHOLD = 3.0
BIG_INPUT = 3e7


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

    with native_banners_dropped():
        return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def _to_onnx(model) -> bytes:
    import tensorflow as tf
    import tf2onnx

    shape = tuple(model.inputs[0].shape[1:])
    spec = (tf.TensorSpec((None, *shape), tf.float32, name="input"),)
    with native_banners_dropped():
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)
    return proto.SerializeToString()


def _fmt_ops(ops: dict) -> str:
    return ", ".join(f"{k} {v}" if v > 1 else k for k, v in sorted(ops.items()))


def _op_difference(ops: dict, baseline: dict) -> dict:
    return {k: v - baseline.get(k, 0) for k, v in ops.items() if v - baseline.get(k, 0) > 0}


def _convert_variants() -> dict:
    """`{label: {"tflite", "onnx", "model"[, "onnx_export"]}}` of each variant of the seed block."""
    from edgetrunc.models import create

    log("truncation variants: converting")
    reference = create("seed_block", threshold=THRESHOLD, seed=0)
    converted = {}
    for label, make in _variant_layers(THRESHOLD).items():
        model = _seed_block_with(make, reference, THRESHOLD)
        converted[label] = {"tflite": _to_tflite(model), "onnx": _to_onnx(model), "model": model}
    try:
        from edgetrunc.export import export_onnx

        with native_banners_dropped():
            proto = export_onnx(converted["Truncation"]["model"], precision="fp32")
        converted["Truncation"]["onnx_export"] = proto.SerializeToString()
    except Exception as exc:  # the exporter is optional for this table
        log(f"edgetrunc export_onnx unavailable for the Clip row: {exc}")
    return converted


def _time_variants(converted: dict, runs: int, warmup: int) -> dict:
    """Op inventories (into `converted`) and interleaved timings `{(label, backend): [ms]}`."""
    from edgetrunc.runtime import ONNXRunner, TFLiteRunner
    from edgetrunc.runtime.bench import time_interleaved

    x = np.random.default_rng(0).uniform(0, 255, (1, 256, 256, 1)).astype(np.float32)
    functions = {}
    for label, item in converted.items():
        tfl = TFLiteRunner(item["tflite"], threads=1)
        ort = ONNXRunner(item["onnx"], threads=1, spin=False)
        functions[(label, "tflite")] = (lambda r=tfl: r.infer(x))
        functions[(label, "onnx")] = (lambda r=ort: r.infer(x))
        item["tflite_ops"] = tfl.metadata().ops
        item["onnx_ops"] = onnx_ops(item["onnx"])
        if "onnx_export" in item:
            ort_export = ONNXRunner(item["onnx_export"], threads=1, spin=False)
            functions[(label, "onnx_export")] = (lambda r=ort_export: r.infer(x))
            item["onnx_export_ops"] = onnx_ops(item["onnx_export"])
    log("truncation variants: timing (interleaved)")
    return time_interleaved(functions, runs, warmup, desc="truncation variants")


def _variant_rows(converted: dict, baseline: dict, times: dict, big: dict) -> list:
    from edgetrunc.runtime import TFLiteRunner

    base_tflite = TFLiteRunner(baseline["tflite"]).metadata().ops
    base_onnx = onnx_ops(baseline["onnx"])
    rows = []
    for label, item in converted.items():
        onnx_rows = [("tf2onnx", "onnx", "onnx_ops")]
        if "onnx_export" in item:
            onnx_rows.append(("edgetrunc export", "onnx_export", "onnx_export_ops"))
        for onnx_label, key, ops_key in onnx_rows:
            rows.append([
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
    return rows


def bench_truncation_variants(runs: int, warmup: int) -> str:
    """The section's markdown: op counts, latency and large-input outputs of each variant."""
    converted = _convert_variants()
    baseline = converted.pop("none (identity, for the op difference)")
    times = _time_variants(converted, runs, warmup)
    rows = _variant_rows(converted, baseline, times, _big_input_outputs(converted))
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
        markdown_table(headers, rows),
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
