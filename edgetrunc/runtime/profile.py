"""Per-op time of a `.tflite` / `.onnx` artifact, aggregated per Keras layer (no TensorFlow).

`profile_artifact(path)` returns one dict (the JSON of `edgetrunc bench --profile`): per op
its type, Keras layer, time, FLOPs and achieved GFLOP/s, the same per layer, and the total.
How each format is measured:

- ONNX Runtime: its own profiler (`SessionOptions.enable_profiling`). The JSON trace it
  writes into a temporary folder (deleted afterwards) gives each node's kernel time per
  run; a row's time is the mean over the timed runs, and the row "(outside ops)" is the
  rest of the session's `model_run` time (input / output copies, scheduling), so the rows
  sum to the mean run time.
- TFLite: ai-edge-litert's Python interpreter exposes no op profiler (XNNPACK runs the
  whole graph as one delegate node), so the model is timed cumulatively: for every op k a
  copy of the model truncated after op k (its outputs: every tensor still read later) runs
  with the same interpreter, threads and XNNPACK, one prefix at a time (its interpreter is
  dropped before the next is made, so memory does not grow with the number of ops); op k's
  time is the difference between the fastest run of prefix k and of prefix k-1 (a negative
  difference, noise, counts 0 and the running maximum carries on). The rows sum to the
  time of the whole model. Cutting the graph stops XNNPACK from fusing across the cut, so
  an op that XNNPACK fuses into its producer (an activation) shows the cost of running it
  unfused, and its producer the rest.

FLOPs come from the op shapes (2 per multiply-add, one per output element of elementwise
ops, one per window element of pooling; copies, reshapes and (de)quantization count 0),
i.e. what the op computes, zero taps of a packed convolution included; per layer they come
from `layer_flops` (`{Keras layer: FLOPs}`, e.g. from `edgetrunc.models.flops`) when given.
Op and tensor names keep the Keras layer names (`model/<layer>_1/op`), which is how ops map
to layers (`layer_names.layer_of`); an op whose name holds no layer (a renamed fused node) is
reported under None.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from edgetrunc.errors import InputError
from edgetrunc.runtime import formats
from edgetrunc.runtime.layer_names import layer_of

OUTSIDE_OPS = "(outside ops)"
_FREE_OPS = {"RESHAPE", "QUANTIZE", "DEQUANTIZE", "SQUEEZE", "Reshape", "Squeeze", "Flatten",
             "QuantizeLinear", "DequantizeLinear", "Transpose", "TRANSPOSE", "Identity", "Cast",
             "ReorderInput", "ReorderOutput"}  # ONNX Runtime's NCHWc layout changes
_POOLS = {"AVERAGE_POOL_2D", "MAX_POOL_2D", "AveragePool", "MaxPool"}


def profile_artifact(path, threads: int = 1, runs: int = 20, warmup: int = 3, batch: int = 1,
                     seed: int = 0, layer_flops: dict | None = None) -> dict:
    """Per-op and per-layer time of the artifact at `path` (see the module docstring).

    Returns `{"artifact", "format", "precision", "threads", "batch", "runs", "method",
    "total_ms", "total_flops", "ops": [...], "layers": [...]}`; each op row is
    `{"index", "name", "type", "layer", "ms", "share", "flops", "gflops"}`, each layer row
    `{"layer", "ops", "ms", "share", "flops", "gflops"}` (layers in execution order).
    """
    if runs < 1:
        raise InputError(f"runs: expected a positive integer; got {runs}", param="runs")
    if batch < 1:
        raise InputError(f"batch: expected a positive integer; got {batch}", param="batch")
    profile = formats.for_path(path, runnable=True).profile_function()
    if profile is None:
        raise InputError(f"{path}: no per-op profiler for this format")
    result = profile(path, threads, runs, warmup, batch, seed)
    known = list(layer_flops or {})
    for row in result["ops"]:
        row["layer"] = layer_of(row.pop("names"), known)
    result["layers"] = _per_layer(result["ops"], layer_flops)
    total = result["total_ms"]
    for row in result["ops"] + result["layers"]:
        row["share"] = round(row["ms"] / total, 4) if total > 0 else 0.0
        row["gflops"] = _rate(row["flops"], row["ms"])
    result["total_flops"] = int(sum(r["flops"] or 0 for r in result["ops"]))
    result["gflops"] = _rate(result["total_flops"], total)
    return result


def _rate(flops, ms):
    return round(flops / (ms * 1e6), 2) if flops and ms > 0 else None


def _per_layer(ops, layer_flops) -> list:
    layers = {}
    for row in ops:
        entry = layers.setdefault(row["layer"], {"layer": row["layer"], "ops": 0, "ms": 0.0,
                                                 "flops": 0})
        entry["ops"] += 1
        entry["ms"] = round(entry["ms"] + row["ms"], 4)
        entry["flops"] += row["flops"] or 0
    if layer_flops:
        for entry in layers.values():
            names = (entry["layer"] or "").split("+")
            if entry["layer"] and all(n in layer_flops for n in names):
                entry["flops"] = int(sum(layer_flops[n] for n in names))
    return list(layers.values())


# ONNX Runtime ----------------------------------------------------------------------------
def _profile_onnx(path, threads, runs, warmup, batch, seed) -> dict:
    from edgetrunc.runtime.bench import random_batch
    from edgetrunc.runtime.onnx_runner import ONNXRunner

    folder = tempfile.mkdtemp(prefix="edgetrunc-profile-")
    try:
        runner = ONNXRunner(path, threads=threads, spin=False,
                            profile_prefix=str(Path(folder) / "ort"))
        feed = random_batch(runner, batch, seed)
        for _ in range(warmup):
            runner.infer(feed)
        started = time.perf_counter()
        for _ in range(runs):
            runner.infer(feed)
        wall = (time.perf_counter() - started) * 1000.0 / runs
        events = json.loads(Path(runner.session.end_profiling()).read_text())
        meta = runner.metadata()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return _onnx_rows(events, runs, warmup, path, meta, threads, batch, wall)


def _onnx_rows(events, runs, warmup, path, meta, threads, batch, wall_ms) -> dict:
    run_events = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    timed = run_events[-runs:]
    start = timed[0]["ts"] if timed else 0
    nodes, order = {}, []
    for event in events:
        if event.get("cat") != "Node" or event.get("ts", 0) < start:
            continue
        if not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        name = event["name"][:-len("_kernel_time")]
        args = event.get("args", {})
        if name not in nodes:
            order.append(name)
            nodes[name] = {"type": args.get("op_name", "?"), "us": 0.0,
                           "flops": _onnx_flops(args)}
        nodes[name]["us"] += float(event.get("dur", 0))
    total_ms = sum(float(e["dur"]) for e in timed) / 1000.0 / max(len(timed), 1)
    rows = [{"index": i, "name": name, "names": [name], "type": nodes[name]["type"],
             "ms": round(nodes[name]["us"] / 1000.0 / runs, 4), "flops": nodes[name]["flops"]}
            for i, name in enumerate(order)]
    outside = total_ms - sum(r["ms"] for r in rows)
    rows.append({"index": len(rows), "name": OUTSIDE_OPS, "names": [], "type": OUTSIDE_OPS,
                 "ms": round(max(outside, 0.0), 4), "flops": 0})
    return {"artifact": str(path), "format": "onnx", "precision": meta.precision,
            "threads": threads, "batch": batch, "runs": runs,
            "method": "onnxruntime profiler (SessionOptions.enable_profiling), mean per run",
            "total_ms": round(sum(r["ms"] for r in rows), 4), "wall_ms": round(wall_ms, 4),
            "ops": rows}


def _shapes(entries):
    return [np.asarray(next(iter(e.values())), dtype=np.int64) for e in entries or []]


def _onnx_flops(args) -> int:
    op = args.get("op_name", "")
    ins, outs = _shapes(args.get("input_type_shape")), _shapes(args.get("output_type_shape"))
    out = int(np.prod(outs[0])) if outs else 0
    if op in _FREE_OPS:
        return 0
    if op in ("Conv", "QLinearConv", "ConvInteger") and len(ins) > 1:
        weight = ins[1] if op != "QLinearConv" else ins[3]
        return int(2 * out * np.prod(weight[1:]))
    if op in ("MatMul", "Gemm", "MatMulInteger") and len(ins) > 1:
        return int(2 * out * ins[0][-1])
    if op in _POOLS or op.startswith("Global") or op.startswith("Reduce"):
        return int(np.prod(ins[0])) if ins else out
    return out


# TFLite ----------------------------------------------------------------------------------
def _schema():
    from edgetrunc.runtime.metadata import tflite_flatbuffer_utils

    return tflite_flatbuffer_utils()


def _prefix_model(model_t, end: int, read_after) -> bytes:
    """The model truncated after op `end`: its outputs are the tensors written by ops
    0..end that a later op or the model's outputs read. `model_t` is cut in place and
    restored (no copy of its weights per prefix)."""
    fb = _schema()
    graph = model_t.subgraphs[0]
    saved = graph.outputs, graph.operators, model_t.signatureDefs
    written = {int(t) for op in graph.operators[:end + 1] for t in op.outputs}
    outputs = sorted(written & read_after[end]) or [int(t) for t in graph.operators[end].outputs]
    try:
        graph.outputs = np.array(outputs, np.int32)
        graph.operators = graph.operators[:end + 1]
        model_t.signatureDefs = []
        return bytes(fb.convert_object_to_bytearray(model_t))
    finally:
        graph.outputs, graph.operators, model_t.signatureDefs = saved


def _tflite_flops(model_t, op) -> int:
    graph = model_t.subgraphs[0]
    code = model_t.operatorCodes[op.opcodeIndex]
    name = _op_name(code)
    shape = [[int(d) for d in graph.tensors[int(t)].shape] if t >= 0 else [] for t in op.inputs]
    out = int(np.prod(graph.tensors[int(op.outputs[0])].shape)) if len(op.outputs) else 0
    if name in _FREE_OPS:
        return 0
    if name in ("CONV_2D", "TRANSPOSE_CONV") and len(shape) > 1:
        return int(2 * out * np.prod(shape[1][1:]))
    if name == "DEPTHWISE_CONV_2D" and len(shape) > 1:
        return int(2 * out * shape[1][1] * shape[1][2])
    if name == "FULLY_CONNECTED" and len(shape) > 1:
        return int(2 * out * shape[1][-1])
    if name in _POOLS:
        options = op.builtinOptions
        return int(out * options.filterHeight * options.filterWidth)
    if name in ("MEAN", "SUM"):
        return int(np.prod(shape[0]))
    return out


def _op_name(code) -> str:
    from edgetrunc.runtime.metadata import tflite_schema

    schema = tflite_schema()

    value = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    return names.get(value, str(value))


def _read_after(graph) -> list:
    """For each op k, the tensors read by ops after k or by the model outputs."""
    reads = {int(t) for t in graph.outputs}
    after = []
    for op in reversed(graph.operators):
        after.append(set(reads))
        reads |= {int(t) for t in op.inputs if t >= 0}
    return after[::-1]


def _interpreter(module, content: bytes, threads, feed):
    """An interpreter of `content` (XNNPACK, `threads`) with `feed` set as its input."""
    from edgetrunc import _log

    interpreter = module.Interpreter(model_content=content, num_threads=threads)
    detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail["index"], list(feed.shape), strict=False)
    with _log.native_banners_dropped():
        interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], feed.astype(detail["dtype"], copy=False))
    return interpreter


def _fastest(module, content: bytes, threads, feed, warmup: int, runs: int) -> float:
    """The fastest of `runs` timed runs (ms) of one prefix's interpreter, after `warmup`;
    the interpreter is dropped when this returns, so one prefix is in memory at a time."""
    invoke = _interpreter(module, content, threads, feed).invoke
    best = float("inf")
    for round_index in range(warmup + runs):
        started = time.perf_counter()
        invoke()
        if round_index >= warmup:
            best = min(best, (time.perf_counter() - started) * 1000.0)
    return best


def _profile_tflite(path, threads, runs, warmup, batch, seed) -> dict:
    from edgetrunc.runtime.bench import random_batch
    from edgetrunc.runtime.quantized_io import quantize_input
    from edgetrunc.runtime.tflite_runner import TFLiteRunner, load_interpreter_module

    full = TFLiteRunner(path, threads=threads)  # checks the model and reads its metadata
    meta = full.metadata()
    if len(meta.inputs) > 1:
        raise InputError(f"{path}: {len(meta.inputs)} inputs ({', '.join(full.input_names())}); "
                         "the per-op TFLite profile cuts a model with one input; bench it "
                         "without --profile, or profile its ONNX artifact")
    content = full._model_bytes()
    model_t = _schema().convert_bytearray_to_object(bytearray(content))
    graph = model_t.subgraphs[0]
    read_after = _read_after(graph)
    feed = random_batch(full, batch, seed)
    (inp,) = meta.inputs
    if np.dtype(inp.dtype).kind in "iu":  # a full-integer model: pixels quantized as `infer` does
        if inp.scale is None:
            raise InputError(f"{path}: integer input without quantization parameters")
        feed = quantize_input(feed, np.dtype(inp.dtype), inp.scale, inp.zero_point)
    module, _ = load_interpreter_module()
    count = len(graph.operators)
    best = [_fastest(module, _prefix_model(model_t, k, read_after) if k < count - 1 else content,
                     threads, feed, warmup, runs) for k in range(count)]
    rows, previous = [], 0.0
    for k, op in enumerate(graph.operators):
        cumulative = max(best[k], previous)
        names = [_tensor_name(graph, t) for t in op.outputs]
        rows.append({"index": k, "name": names[0] if names else "", "names": names,
                     "type": _op_name(model_t.operatorCodes[op.opcodeIndex]),
                     "ms": round(cumulative - previous, 4), "flops": _tflite_flops(model_t, op)})
        previous = cumulative
    return {"artifact": str(path), "format": "tflite", "precision": meta.precision,
            "threads": threads, "batch": batch, "runs": runs,
            "method": ("cumulative: the model truncated after each op, XNNPACK, fastest of the "
                       "interleaved runs; op time = difference to the previous prefix"),
            "total_ms": round(previous, 4), "wall_ms": round(best[-1], 4), "ops": rows}


def _tensor_name(graph, index) -> str:
    name = graph.tensors[int(index)].name
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
