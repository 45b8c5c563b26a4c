#!/usr/bin/env python3
"""Full-integer benchmark: `python -m scripts.benchmarks integer [MODEL.keras ARTIFACT.tflite]...`.

For each pair of a Keras model and its full-integer TFLite artifact (default: the shipped
quantization-aware `models/integer/tlunet_qat.keras` and its artifact):

- speed, 1 thread: the artifact and the same model converted for `--target cpu` (its int8
  front end packed over 2x2 blocks; the one shipped in `cpu/` beside the artifact, else
  converted here into a temporary folder) against the
  float model's Keras compiled call (`tf.function`) and the shipped (float-front-end) int8
  TFLite, timed interleaved in one process (p50 and min of `--runs` rounds);
- quality on the held-out pairs `convert` uses: decision agreement with the Keras model it
  was converted from and with the float `models/tlunet.keras`, and each one's P_E;
- targets: Vela's NPU/CPU operator split, SRAM and estimated time for Ethos-U55-256 and
  U65-256, TFLite Micro's arena and its outputs against ai-edge-litert, in steps.

Prints Markdown tables (the BENCHMARKS.md section "Full-integer artifacts").
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from scripts.benchmarks._markdown import ROOT, log, markdown_table

DEFAULT_PAIRS = [("models/integer/tlunet_qat.keras", "models/integer/tlunet_qat_int8-full.tflite")]


def speed(model, artifacts: dict, runs: int) -> dict:
    """`{name: (p50 ms, min ms)}`: the float model's Keras compiled call ("keras") and each
    TFLite file of `artifacts` (`{name: path}`, missing ones skipped), 1 thread, interleaved."""
    import tensorflow as tf

    from edgetrunc.keras.runner import compiled_inference
    from edgetrunc.runtime.bench import time_interleaved
    from edgetrunc.runtime.tflite_runner import TFLiteRunner

    shape = (1, *(int(d) for d in model.inputs[0].shape[1:]))
    x = np.random.default_rng(0).integers(0, 256, shape).astype(np.float32)
    compiled, x_tensor = compiled_inference(model), tf.constant(x)
    functions = {"keras": lambda: compiled(x_tensor).numpy()}
    for name, path in artifacts.items():
        if path is not None and Path(path).exists():
            functions[name] = (lambda r: lambda: r.infer(x))(TFLiteRunner(str(path), threads=1))
    times = time_interleaved(functions, runs, max(5, runs // 10))
    return {name: (float(np.median(v)), float(np.min(v))) for name, v in times.items()}


def cpu_target_artifact(source: Path, out_dir: Path) -> Path | None:
    """The full-integer artifact of `source` converted for `--target cpu` (the int8 front end
    packed over 2x2 blocks) into `out_dir`; None when the conversion fails."""
    from edgetrunc.errors import InputError
    from edgetrunc.export import convert

    try:
        result = convert(source, out_dir, tflite=["int8-full"], onnx=[], target="cpu",
                         evaluate=False, speed=False)
    except InputError as exc:
        log(f"skipped the cpu target of {source.name}: {exc}")
        return None
    return out_dir / result["artifacts"][0]["path"]


def quality(models: dict, artifact: Path) -> dict:
    from edgetrunc.data.geometry import require_image_geometry
    from edgetrunc.export import calibration as calib_data
    from edgetrunc.export.evaluation import artifact_probability
    from edgetrunc.keras.runner import predict_probability
    from edgetrunc.metrics import detection_report

    first = next(iter(models.values()))
    held_out = calib_data.held_out_pairs("embedded", require_image_geometry(first, "model", "bench"), first)
    probability = {name: predict_probability(m, held_out.x, batch_size=16) for name, m in models.items()}
    probability["artifact"] = artifact_probability(Path(artifact).suffix.lstrip("."), artifact, held_out.x)
    p_e = {name: detection_report(held_out.y, p)["p_e"] for name, p in probability.items()}
    agree = {name: float(np.mean((p >= 0.5) == (probability["artifact"] >= 0.5)))
             for name, p in probability.items() if name != "artifact"}
    return {"samples": len(held_out.x), "p_e": p_e, "agreement": agree}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="*", help="MODEL.keras ARTIFACT.tflite, repeated")
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args(argv)
    pairs = list(zip(args.pairs[::2], args.pairs[1::2])) or DEFAULT_PAIRS
    from edgetrunc.cli.targets import targets_report
    from edgetrunc.keras.load import load_keras_model

    float_model = load_keras_model(ROOT / "models/tlunet.keras")
    speed_rows, quality_rows, vela_rows, micro_rows = [], [], [], []
    for source, artifact in pairs:
        source, artifact = ROOT / source, ROOT / artifact
        if not (source.exists() and artifact.exists()):
            log(f"skipped: {source} or {artifact} not found")
            continue
        model = load_keras_model(source)
        name = artifact.name
        with tempfile.TemporaryDirectory(prefix="edgetrunc-integer-") as tmp:
            cpu = artifact.parent / "cpu" / artifact.name  # shipped beside it (make convert)
            cpu = cpu if cpu.exists() else cpu_target_artifact(source, Path(tmp))
            t = speed(float_model, {"reference": ROOT / "models/tlunet_int8.tflite",
                                    "artifact": artifact, "cpu": cpu}, args.runs)
        nan = (float("nan"),) * 2
        for label, key in ((name, "artifact"), (f"{name}, --target cpu", "cpu")):
            p50, best = t.get(key, nan)
            speed_rows.append((label, f"{t['keras'][0]:.2f}", f"{t.get('reference', nan)[0]:.2f}",
                               f"{p50:.2f}", f"{t['keras'][0] / p50:.2f}x",
                               f"{t['keras'][1] / best:.2f}x"))
        q = quality({"source": model, "float": float_model}, artifact)
        quality_rows.append((name, source.name, q["samples"], f"{q['agreement']['source']:.3f}",
                             f"{q['agreement']['float']:.3f}", f"{q['p_e']['float']:.3f}",
                             f"{q['p_e']['source']:.3f}", f"{q['p_e']['artifact']:.3f}"))
        report = targets_report(artifact, ["ethos-u55-256", "ethos-u65-256"], 16)
        vela_rows += [(name, v["accelerator"], f"{v['npu_operators']} ({v['npu_percent']:g}%)",
                       v["cpu_operators"], f"{v['sram_kib']:.0f}", f"{v['inference_ms']:.2f}")
                      for v in report["vela"]]
        m = report["micro"]
        micro_rows.append((name, "yes" if m["runs"] else "no", m.get("arena_bytes", "-"),
                           m.get("samples", "-"), m.get("max_step_difference", "-")))
    tables = [
        ("Speed, 1 thread (ms):", ("artifact", "float Keras compiled p50", "tlunet_int8.tflite p50",
                                   "artifact p50", "p50 vs Keras", "min vs Keras"), speed_rows),
        ("Held-out quality:", ("artifact", "from", "tiles", "agreement with its Keras model",
                               "agreement with float tlunet", "P_E float", "P_E its Keras model",
                               "P_E artifact"), quality_rows),
        ("Vela:", ("artifact", "accelerator", "NPU operators", "CPU operators", "SRAM KiB",
                   "estimated ms"), vela_rows),
        ("TFLite Micro:", ("artifact", "runs", "arena bytes", "tiles",
                           "max step difference vs ai-edge-litert"), micro_rows)]
    print("\n\n".join(f"{title}\n\n{markdown_table(headers, rows)}" for title, headers, rows in tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
