"""Cost per model size: convert, parity and per-layer parity of three detectors, as commands.

Models: `tlunet` (the shipped 256x256x1 detector), `yenet` (a Ye-Net-size net on 512x512x1
inputs) and `residual` (an SRNet-like net of 14 residual blocks on 256x256x1), the last two
from `scripts/make_foreign_models.py` at their real sizes and migrated first. Each step runs
as its own `edgetrunc` process (`os.wait4` gives its peak resident memory):

    convert    every precision (TFLite fp32, fp16, int8; ONNX fp32, int8); the converter
               column is the part spent in the artifact exports (converter calls and passes)
    parity     the default comparison (64 inputs, probes) of every artifact
    per-layer  `parity --per-layer --samples 8 --no-probes` (8 samples layer by layer)

Writes the `models` section of BENCHMARKS.md and prints the table.

    python -m scripts.benchmarks models [--models tlunet,yenet,residual] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scripts.benchmarks import _markdown

MODELS = ("tlunet", "yenet", "residual")
DESCRIPTIONS = {"tlunet": "tlunet, 256x256x1 (shipped)",
                "yenet": "Ye-Net size, 512x512x1",
                "residual": "14 residual blocks, 256x256x1"}
CONVERT = ("import json, sys, time; from edgetrunc.export.conversion import convert; t = {}; "
           "s = time.perf_counter(); convert(sys.argv[1], sys.argv[2], timings=t); "
           "print(json.dumps({'total': time.perf_counter() - s, 'exports': t}))")


def run_measured(argv: list, **popen) -> dict:
    """Run `argv` (`popen`: `env`, `cwd`); `{seconds, cpu_s, peak_mb, rc, stdout, stderr}` of it."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(argv, stdout=out, stderr=err, **popen)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        out.seek(0), err.seek(0)
        return {"seconds": seconds, "cpu_s": usage.ru_utime + usage.ru_stime,
                "peak_mb": usage.ru_maxrss / 1024, "rc": process.returncode,
                "stdout": out.read(), "stderr": err.read()}


def _cli(*args) -> list:
    return [sys.executable, "-m", "edgetrunc", "-q", *map(str, args)]


def _checked(result: dict, step: str) -> dict:
    if result["rc"] not in (0, 1):  # 1: a parity verdict, still measured
        tail = (result["stderr"].strip().splitlines() or ["(no message)"])[-1]
        raise SystemExit(f"{step}: exit {result['rc']}: {tail}")
    return result


def build_model(name: str, folder: Path) -> Path:
    """The `.keras` file of `name` in `folder` (foreign patterns migrated with the CLI)."""
    path = folder / f"{name}.keras"
    if name == "tlunet":
        from edgetrunc.models import create

        create("tlunet", seed=0).save(path)
        return path
    from scripts.make_foreign_models import MIGRATE_OPTIONS, build_keras3

    source = folder / f"{name}_source.keras"
    build_keras3(name).save(source)
    _checked(run_measured(_cli("migrate", source, "--out", path,
                               *MIGRATE_OPTIONS[("keras3", name)])), f"{name}: migrate")
    return path


def bench_model(name: str, folder: Path) -> dict:
    model = build_model(name, folder)
    out = folder / f"{name}_artifacts"
    convert = _checked(run_measured([sys.executable, "-c", CONVERT, str(model), str(out)]),
                       f"{name}: convert")
    timings = json.loads(convert["stdout"].strip().splitlines()[-1])
    artifacts = sorted(str(p) for p in out.iterdir() if p.suffix in (".tflite", ".onnx"))
    parity = _checked(run_measured(_cli("parity", model, *artifacts)), f"{name}: parity")
    per_layer = _checked(run_measured(_cli("parity", model, *artifacts, "--samples", "8",
                                           "--per-layer", "--no-probes")), f"{name}: per-layer")
    return {"model": DESCRIPTIONS[name], "convert_s": convert["seconds"],
            "converter_s": sum(timings["exports"].values()), "convert_peak_mb": convert["peak_mb"],
            "parity_s": parity["seconds"], "parity_peak_mb": parity["peak_mb"],
            "per_layer_s": per_layer["seconds"], "per_layer_peak_mb": per_layer["peak_mb"],
            "exports": timings["exports"]}


def render(rows: list) -> str:
    table = _markdown.markdown_table(
        ["model", "convert s", "converter s", "convert peak MB", "parity s", "parity peak MB",
         "per-layer s", "per-layer peak MB"],
        [[r["model"], f"{r['convert_s']:.1f}", f"{r['converter_s']:.1f}",
          f"{r['convert_peak_mb']:.0f}", f"{r['parity_s']:.1f}", f"{r['parity_peak_mb']:.0f}",
          f"{r['per_layer_s']:.1f}", f"{r['per_layer_peak_mb']:.0f}"] for r in rows])
    return (f"## Cost per model size\n\n`python -m scripts.benchmarks models`: each step an `edgetrunc` "
            "command in its own process, peak resident memory of that process. convert: every "
            "precision (TFLite fp32/fp16/int8, ONNX fp32/int8; converter s: the artifact exports "
            "alone, the rest is calibration data, the held-out int8 check and inspection); parity: "
            "64 inputs with probes; per-layer: `--per-layer --samples 8 --no-probes`.\n\n"
            f"{table}\n\nMachine: {_markdown.machine_description()}. "
            f"Toolchain: {_markdown.toolchain_versions()}.\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            print(f"{name} ...", file=sys.stderr, flush=True)
            rows.append(bench_model(name, Path(tmp)))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return _markdown.publish("models", render(rows), not args.no_write)


if __name__ == "__main__":
    sys.exit(main())
