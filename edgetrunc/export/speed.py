"""Does int8 pay on the model at hand? `int8_speed` times each int8 artifact against the fp32
artifact of the same format, in this process, interleaved (`runtime.bench.time_interleaved`),
one thread, a few runs on one input, and says so in the int8 manifest entry (`"speed"`).

A figure of the machine that converted, not of the target device: an int8 graph that is
slower here (ops without an int8 kernel, quantize / dequantize pairs between float islands)
is usually slower there too, so convert warns. Timings change from run to run; the verdict
(`"pays"`) is what a user acts on.
"""

from __future__ import annotations

import numpy as np

from edgetrunc import _log

SPEED_RUNS = 7
SPEED_WARMUP = 2


def int8_speed(entries: list, staged: dict, feed: np.ndarray | None, runs: int = SPEED_RUNS,
               warmup: int = SPEED_WARMUP) -> None:
    """Add `"speed"` to the quantization of every int8 entry whose format also has an fp32
    artifact (`staged`: `{artifact name: path}`), and warn when int8 is the slower one.
    `feed`: one model input (a calibration tile); None: seeded random pixels."""
    from edgetrunc.runtime import open_runner
    from edgetrunc.runtime.bench import random_batch, time_interleaved

    by_key = {(e["format"], e["precision"]): e for e in entries}
    for fmt in ("tflite", "onnx"):
        fp32, int8 = by_key.get((fmt, "fp32")), by_key.get((fmt, "int8"))
        if fp32 is None or int8 is None or not int8.get("quantization"):
            continue
        options = {"spin": False} if fmt == "onnx" else {}
        quiet = _log.is_quiet()
        _log.set_quiet(True)  # no progress bar for a few runs
        try:
            with _log.native_banners_dropped():
                runners = {e["path"]: open_runner(staged[e["path"]], threads=1, **options)
                           for e in (fp32, int8)}
                x = feed[:1] if feed is not None else random_batch(runners[fp32["path"]], 1)
                times = time_interleaved({name: (lambda r=r: r.infer(x)) for name, r in
                                          runners.items()}, runs=runs, warmup=warmup)
        finally:
            _log.set_quiet(quiet)
        fp32_ms, int8_ms = (float(np.median(times[e["path"]])) for e in (fp32, int8))
        speedup = fp32_ms / int8_ms if int8_ms > 0 else float("inf")
        speed = int8["quantization"]["speed"] = {
            "fp32_p50_ms": round(fp32_ms, 3), "int8_p50_ms": round(int8_ms, 3),
            "int8_speedup": round(speedup, 2), "pays": bool(speedup >= 1.0), "runs": runs,
            "threads": 1, "measured": "at convert time on the converting machine"}
        why = ""
        if fmt == "onnx":
            speed["kernels"] = onnx_kernels(staged[int8["path"]])
            floats = speed["kernels"]["float_between_qdq"]
            if floats:
                why = (f"; {sum(floats.values())} node(s) run as float kernels between "
                       f"Dequantize/Quantize ({', '.join(f'{k} {v}' for k, v in floats.items())})")
        if speedup < 1.0:
            _log.warn(f"convert: {int8['path']} is slower than {fp32['path']} here "
                      f"({int8_ms:.2f} vs {fp32_ms:.2f} ms p50, 1 thread, {runs} runs{why}): "
                      "int8 does not pay on this model; ship the fp32 artifact or check it on "
                      "the target device")


def onnx_kernels(path) -> dict:
    """What onnxruntime's CPU provider (on this machine) makes of a QDQ model after its graph fusions:
    `{"int8": {op: count}, "float_between_qdq": {op: count}}`, the int8 kernels it fused
    (QLinear*, ...) and the compute nodes left float with a DequantizeLinear input (no
    int8 kernel was fused for them: the quantize / dequantize pairs around them are pure
    cost; e.g. signed int8 activations in a Conv on an x86 CPU without VNNI)."""
    import collections
    import tempfile
    from pathlib import Path

    import onnx
    import onnxruntime as ort

    model = path.SerializeToString() if isinstance(path, onnx.ModelProto) else str(path)
    with tempfile.TemporaryDirectory(prefix="edgetrunc-ort-") as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    int8, floats = collections.Counter(), collections.Counter()
    for node in graph.node:
        if node.op_type.startswith("QLinear") or node.op_type.endswith("Integer"):
            int8[node.op_type] += 1
        elif node.op_type not in ("QuantizeLinear", "DequantizeLinear") and any(
                producer.get(i) == "DequantizeLinear" for i in node.input):
            floats[node.op_type] += 1
    return {"int8": dict(sorted(int8.items())), "float_between_qdq": dict(sorted(floats.items()))}
