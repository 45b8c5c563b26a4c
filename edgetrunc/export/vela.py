"""Arm's Ethos-U compiler (Vela) on a `.tflite`: which operators run on the NPU, SRAM, time.

`vela_report` runs Vela itself (package `ethos-u-vela`, the `.[npu]` extra) in a child
process for one accelerator configuration and reads back what Vela says: the NPU / CPU
operator split from its summary lines, and SRAM used, off-chip flash used, the estimated
inference time and multiply-accumulates from the summary CSV it writes. Nothing is
estimated here: every figure is Vela's. `ACCELERATORS` are the configurations reported by
default (Ethos-U55 and U65 with 256 MACs per cycle).
"""

from __future__ import annotations

import csv
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from edgetrunc.errors import InputError

ACCELERATORS = ("ethos-u55-256", "ethos-u65-256")
VELA_TIMEOUT_S = 600
_RUN_VELA = "import sys; from ethosu.vela.vela import main; sys.exit(main())"


def _split(text: str, kind: str):
    found = re.search(rf"^{kind} operators = (\d+) \(([\d.]+)%\)", text, re.M)
    return (int(found.group(1)), float(found.group(2))) if found else (None, None)


def vela_report(path, accelerator: str = "ethos-u55-256") -> dict:
    """Vela's verdict on `path` for `accelerator`: `{"accelerator", "npu_operators",
    "cpu_operators", "npu_percent", "sram_kib", "off_chip_flash_kib", "inference_ms",
    "macs", "vela"}`."""
    try:
        import ethosu.vela  # noqa: F401
        from importlib.metadata import version
    except ImportError:
        raise InputError("ethos-u-vela is not installed; expected pip install 'edgetrunc[npu]'") from None
    with tempfile.TemporaryDirectory() as out:
        done = subprocess.run(
            [sys.executable, "-c", _RUN_VELA, str(path), "--accelerator-config", accelerator,
             "--output-dir", out], capture_output=True, text=True, timeout=VELA_TIMEOUT_S)
        summaries = sorted(Path(out).glob("*_summary_*.csv"))
        if done.returncode != 0 or not summaries:
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no summary"]
            raise InputError(f"{path}: Vela could not compile it for {accelerator} ({last[0][:200]})")
        with open(summaries[0], newline="") as fh:
            row = next(csv.DictReader(fh))
    npu, percent = _split(done.stdout, "NPU")
    cpu, _ = _split(done.stdout, "CPU")
    return {
        "accelerator": accelerator, "npu_operators": npu, "cpu_operators": cpu,
        "npu_percent": percent,
        "sram_kib": round(float(row["sram_memory_used"]), 1),
        "off_chip_flash_kib": round(float(row["off_chip_flash_memory_used"]), 1),
        "inference_ms": round(float(row["inference_time"]) * 1000, 3),
        "macs": int(float(row["nn_macs"])),
        "vela": version("ethos-u-vela"),
    }
