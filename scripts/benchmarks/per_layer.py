"""Per-layer parity, this tree against an earlier revision, side by side in one run.

Runs `edgetrunc parity MODEL ARTIFACT... --per-layer --samples N` in a fresh process per run,
alternating between the code of `--baseline` (a git revision, exported to a temporary folder)
and this tree, and measures each process's wall time and peak RSS (`os.wait4`). Writes the
"per-layer" section of BENCHMARKS.md (`--no-write` to only print). Without MODEL, the model is
`--model-name` (default: the 14-block residual net of scripts/make_foreign_models.py),
migrated and converted to TFLite and ONNX fp32 in a temporary folder, as by hand:

    python scripts/make_foreign_models.py --out DIR residual
    edgetrunc migrate DIR/residual.keras --out DIR/res.keras --trust-lambda
    edgetrunc convert DIR/res.keras --out DIR/art --tflite fp32 --onnx fp32
    python -m scripts.benchmarks per-layer DIR/res.keras DIR/art/res_fp32.tflite \
        DIR/art/res_fp32.onnx [--baseline REV] [--samples 8] [--runs 1]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from scripts.benchmarks._markdown import (ROOT, log, machine_description, markdown_table, publish,
                                          toolchain_versions)
from scripts.benchmarks.models import _checked, _cli, build_model, run_measured

BASELINE = "ca53ff3"  # the revision whose parity recomputed the Keras layer outputs per pass


def _export(revision: str, folder: Path) -> Path:
    folder.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "edgetrunc"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def _run(tree: Path, args: list) -> tuple:
    """`(seconds, CPU seconds, peak RSS MiB, exit code)` of one parity process on the code of `tree`."""
    env = dict(os.environ, PYTHONPATH=str(tree), TF_CPP_MIN_LOG_LEVEL="3")
    result = run_measured(_cli("parity", *args), env=env, cwd=tree)
    return result["seconds"], result["cpu_s"], result["peak_mb"], result["rc"]


def _default_model(name: str, folder: Path) -> list:
    """`[MODEL, TFLITE, ONNX]`: `name` built (migrated) and converted to fp32 in `folder`."""
    model = build_model(name, folder)
    _checked(run_measured(_cli("convert", model, "--out", folder / "art", "--tflite", "fp32",
                               "--onnx", "fp32")), f"{name}: convert")
    return [model, *(folder / "art" / f"{model.stem}_fp32.{ext}" for ext in ("tflite", "onnx"))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", metavar="MODEL ARTIFACT", help="the model, then its artifacts "
                        "(default: --model-name built and converted)")
    parser.add_argument("--model-name", default="residual", help="tlunet, residual or yenet")
    parser.add_argument("--baseline", default=BASELINE, help="git revision of the code to compare with")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--tree", type=Path, default=ROOT, help="the tree to measure (default: this one)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        files = args.files or _default_model(args.model_name, Path(folder))
        if len(files) < 2:
            parser.error("expected a MODEL and at least one ARTIFACT")
        args.model, args.artifacts = files[0], files[1:]
        parity_args = [*(str(Path(f).resolve()) for f in files), "--per-layer", "--samples",
                       str(args.samples)]
        figures, rows = _measure(args, parity_args, Path(folder))
    best = {name: (min(f[0] for f in v), min(f[1] for f in v), max(f[2] for f in v))
            for name, v in figures.items()}
    speedup, cpu_speedup = (best["baseline"][i] / best["this tree"][i] for i in (0, 1))
    markdown = "\n".join([
        "## Per-layer parity in one pass (`python -m scripts.benchmarks per-layer`)", "",
        f"Machine: {machine_description()}; {toolchain_versions()}; load average at the start: "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (runs alternate, so other work affects both alike).",
        f"`edgetrunc parity {Path(args.model).name} {' '.join(Path(a).name for a in args.artifacts)} "
        f"--per-layer --samples {args.samples}` (probes included): the code of `{args.baseline}` "
        "(every pass recomputed the Keras layer outputs, per artifact) against this tree (one pass: "
        "Keras layer outputs once per chunk for every artifact; statistics without masks).", "",
        markdown_table(["run", "code", "seconds", "CPU seconds", "peak RSS MiB", "exit"], rows), "",
        f"Fastest run: {best['baseline'][0]:.1f} s before, {best['this tree'][0]:.1f} s now "
        f"(**{speedup:.2f}x**); CPU time {best['baseline'][1]:.1f} s before, {best['this tree'][1]:.1f} s "
        f"now ({cpu_speedup:.2f}x); peak RSS {best['baseline'][2]:.0f} MiB before, "
        f"{best['this tree'][2]:.0f} MiB now.", ""])
    return publish("per-layer", markdown, not args.no_write)


def _measure(args, parity_args: list, folder: Path) -> tuple:
    """`({code: [(seconds, CPU seconds, peak RSS)]}, table rows)`: the runs, alternating."""
    rows, figures = [], {"baseline": [], "this tree": []}
    trees = {"baseline": _export(args.baseline, folder / "baseline"), "this tree": args.tree}
    for run in range(args.runs):
        for name, tree in trees.items():
            seconds, cpu, rss, code = _run(tree, parity_args)
            figures[name].append((seconds, cpu, rss))
            rows.append([run + 1, name, f"{seconds:.1f}", f"{cpu:.1f}", f"{rss:.0f}", code])
            log(f"run {run + 1} {name}: {seconds:.1f} s, CPU {cpu:.1f} s, peak RSS {rss:.0f} MiB, "
                f"exit {code}")
    return figures, rows


if __name__ == "__main__":
    sys.exit(main())
