"""Convert against the bare converter calls, before and after, by stage; per-layer memory.

For each model (`tlunet`: models/tlunet.keras, else an untrained one; `se_residual`: the
14-block residual squeeze-excitation net of scripts/make_foreign_models.py, 256x256x1), in
fresh processes, alternating so that other work on the machine affects all alike:

- `edgetrunc.export.convert` of the five default artifacts (TFLite fp32, fp16, int8; ONNX
  fp32, int8) with the code of `--baseline` (a git revision) and of this tree, each second
  counted in the stage that spent it (`_convert_child.py`);
- the bare calls that make the same artifacts: `TFLiteConverter` per precision,
  `tf2onnx.convert.from_keras`, onnxruntime's `quantize_static` (with the model load and the
  same calibration images);
- then `edgetrunc parity MODEL ARTIFACTS... --per-layer --samples 8` of this tree's
  artifacts of the deep net.

Peak memory is each process's own VmHWM (wait4's ru_maxrss for the parity command). Writes
the "convert" section of BENCHMARKS.md (`--no-write` to only print).

    python -m scripts.benchmarks convert [--models tlunet,se_residual] [--runs 1]
        [--baseline REV] [--no-per-layer] [--small]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from scripts.benchmarks._markdown import (ROOT, log, machine_description, markdown_table, publish,
                                          toolchain_versions)
from scripts.benchmarks.models import _checked, _cli, run_measured
from scripts.benchmarks.per_layer import _export

BASELINE = "c8f6d60"  # convert loaded, walked and parsed again for every artifact
# the baseline stops with a traceback where XNNPACK refuses an int8 graph (se_residual's)
OVERLAY = "edgetrunc/runtime/tflite_runner.py"
CHILD = Path(__file__).with_name("_convert_child.py")
STAGE_ORDER = ("load", "float32 copy", "truncation walk", "calibration data", "held-out data",
               "Keras on held-out", "TFLite converter", "tf2onnx",
               "ONNX quantizer", "ONNX checker", "passes", "flatbuffer read/write",
               "inspection", "int8 evaluation", "speed measurement", "manifest", "other")


def _build(name: str, folder: Path, small: bool) -> Path:
    path = folder / f"{name}.keras"
    if name == "tlunet" and (ROOT / "models" / "tlunet.keras").exists() and not small:
        return ROOT / "models" / "tlunet.keras"
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    build = ("from edgetrunc.models import create; create('tlunet', seed=0"
             f"{', input_shape=(32, 32, 1)' if small else ''}).save({str(path)!r})"
             if name == "tlunet" else
             "from scripts.make_foreign_models import build_se_residual; "
             f"build_se_residual({small}).save({str(path)!r})")
    _checked(run_measured([sys.executable, "-c", build], env=env, cwd=ROOT), f"{name}: build")
    return path


def _child(tree: Path, *args) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), TF_CPP_MIN_LOG_LEVEL="3")
    result = _checked(run_measured([sys.executable, str(CHILD), *map(str, args)], env=env,
                                   cwd=tree), f"{args[0]} {Path(args[1]).name}")
    return {**json.loads(result["stdout"].strip().splitlines()[-1]), "wall_s": result["seconds"]}


def _baseline(args, folder: Path) -> Path:
    """The code of `--baseline` with this tree's `--overlay` files (fixes it needs to finish)."""
    tree = _export(args.baseline, folder / "baseline")
    for name in filter(None, args.overlay.split(",")):
        (tree / name).write_bytes((ROOT / name).read_bytes())
    return tree


def _measure(args, folder: Path) -> dict:
    trees = {"before": _baseline(args, folder), "after": ROOT}
    results = {}
    for name in args.models.split(","):
        model = _build(name, folder, args.small)
        rows = results[name] = {"before": [], "after": [], "bare": []}
        for run in range(args.runs):
            for code, tree in trees.items():
                rows[code].append(_child(tree, "convert", model, folder / f"{name}_{code}"))
                log(f"{name} {code} run {run + 1}: {rows[code][-1]['total_s']:.1f} s, "
                    f"{rows[code][-1]['peak_mib']:.0f} MiB")
            rows["bare"].append(_child(ROOT, "bare", model))
            log(f"{name} bare run {run + 1}: {rows['bare'][-1]['total_s']:.1f} s")
        if name != "tlunet" and args.per_layer:
            out = folder / f"{name}_after"
            artifacts = sorted(p for p in out.iterdir() if p.suffix in (".tflite", ".onnx"))
            env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
            parity = _checked(run_measured(_cli("parity", model, *artifacts, "--per-layer",
                                                "--samples", "8"), env=env, cwd=ROOT),
                              f"{name}: per-layer parity")
            results[name]["per_layer"] = {"seconds": parity["seconds"], "cpu_s": parity["cpu_s"],
                                          "peak_mib": parity["peak_mb"], "rc": parity["rc"],
                                          "artifacts": [p.name for p in artifacts]}
            log(f"{name} per-layer: {parity['seconds']:.1f} s, {parity['peak_mb']:.0f} MiB")
    return results


def _best(runs: list, key: str) -> float:
    return min(r[key] for r in runs)


def render(results: dict, args, load) -> str:
    rows, stage_rows = [], []
    for name, r in results.items():
        bare = _best(r["bare"], "total_s")
        for code in ("before", "after"):
            total = _best(r[code], "total_s")
            rows.append([name, code, f"{total:.1f}", f"{bare:.1f}", f"**{total / bare:.2f}x**",
                         f"{max(x['peak_mib'] for x in r[code]):.0f}",
                         f"{max(x['peak_mib'] for x in r['bare']):.0f}"])
    columns = [(name, code) for name in results for code in ("before", "after")]
    for stage in STAGE_ORDER:
        cells = [min(x["stages"].get(stage, 0.0) for x in results[n][c]) for n, c in columns]
        stage_rows.append([stage, *(f"{cell:.2f}" for cell in cells)])
    bare_rows = [[name, *(f"{_best(r['bare'], k):.1f}" for k in ("load_s", "calibration_s")),
                  *(f"{min(x['calls'][c] for x in r['bare']):.1f}" for c in
                    ("fp32.tflite", "fp16.tflite", "int8.tflite", "fp32.onnx", "int8.onnx"))]
                 for name, r in results.items()]
    per_layer = [[name, " ".join(r["per_layer"]["artifacts"]), f"{r['per_layer']['seconds']:.1f}",
                  f"{r['per_layer']['cpu_s']:.1f}", f"{r['per_layer']['peak_mib']:.0f}",
                  r["per_layer"]["rc"]] for name, r in results.items() if "per_layer" in r]
    lines = [
        "## Convert against the bare converter calls (`python -m scripts.benchmarks convert`)", "",
        f"Machine: {machine_description()}; {toolchain_versions()}. The machine is shared (2 cores, "
        f"other jobs running; load average at the start: {' '.join(f'{v:.2f}' for v in load)}), so "
        "single timings are noisy: every figure is from fresh processes run side by side, "
        f"alternating ({args.runs} run(s) each; the fastest is shown), and the ratios compare "
        "runs made minutes apart. Models: `tlunet` (models/tlunet.keras) and `se_residual` "
        "(scripts/make_foreign_models.py: Bayar-constrained 5x5 front end, TLU, 14 residual "
        "squeeze-excitation blocks, 256x256x1, two-way softmax, 5.1 M parameters).", "",
        "convert: `edgetrunc.export.convert(MODEL, OUT)` with its defaults (TFLite fp32, fp16, "
        "int8; ONNX fp32, int8; held-out int8 evaluation, int8 speed check), from the model file "
        "to the manifest, TensorFlow already imported. bare: the model loaded, the same "
        "calibration images, then `TFLiteConverter.convert()` for fp32, fp16 and (stock) int8, "
        "`tf2onnx.convert.from_keras` and `quantize_static` on its graph. before: the code of "
        f"`{args.baseline}` (with this tree's {args.overlay or 'nothing'}: without its fallback "
        "to the built-in kernels where XNNPACK cannot prepare an int8 graph, the baseline stops "
        "with a traceback on se_residual); after: this tree. Peak: the process's own VmHWM.", "",
        markdown_table(["model", "code", "convert s", "bare s", "convert / bare",
                        "convert peak MiB", "bare peak MiB"], rows), "",
        "### Where the time went (seconds, each counted once, in the innermost stage)", "",
        markdown_table(["stage", *(f"{n} {c}" for n, c in columns)], stage_rows), "",
        "The bare calls, seconds:", "",
        markdown_table(["model", "load", "calibration images", "fp32.tflite", "fp16.tflite",
                        "int8.tflite", "fp32.onnx", "int8.onnx"], bare_rows), ""]
    if per_layer:
        lines += ["### Per-layer parity of the deep net", "",
                  "`edgetrunc parity MODEL ARTIFACTS... --per-layer --samples 8` (probes "
                  "included), this tree, peak resident memory of the process (wait4).", "",
                  markdown_table(["model", "artifacts", "seconds", "CPU seconds", "peak MiB",
                                  "exit"], per_layer), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tlunet,se_residual")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--baseline", default=BASELINE, help="git revision of the code before")
    parser.add_argument("--overlay", default=OVERLAY, help="files of this tree copied over the "
                        "baseline's (comma-separated)")
    parser.add_argument("--no-per-layer", dest="per_layer", action="store_false")
    parser.add_argument("--small", action="store_true", help="tiny models: a smoke test")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        results = _measure(args, Path(folder))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return publish("convert", render(results, args, load), not args.no_write)


if __name__ == "__main__":
    sys.exit(main())
