"""Shared by the benchmark scripts: BENCHMARKS.md sections, the machine, tables, small helpers.

Each benchmark script owns a section of BENCHMARKS.md delimited by `<!-- BEGIN name -->` /
`<!-- END name -->`; `update_section` replaces one (sections are kept in the order they
were first written; the file is replaced atomically). `machine_description` and
`toolchain_versions` describe where a benchmark ran; `markdown_table` lays out its rows.
"""

from __future__ import annotations

import os
import platform
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "BENCHMARKS.md"
HEADER = "# Benchmarks\n\nMeasured with `make bench` (and the scripts named in each section).\n"
TOOLCHAIN = ("tensorflow", "tensorflow-cpu", "keras", "ai-edge-litert", "onnxruntime",
             "tf2onnx", "onnx", "numpy")


def machine_description() -> str:
    """One line describing this machine: CPU model, cores, memory, OS, Python."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return (f"{cpu}, {os.cpu_count()} cores{mem}, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def toolchain_versions() -> str:
    """`"tensorflow-cpu 2.x, keras 3.x, ..."`: the installed libraries a benchmark ran with."""
    from edgetrunc._version import package_versions

    found = package_versions(TOOLCHAIN)
    return ", ".join(f"{name} {found[name]}" for name in TOOLCHAIN if name in found)


def update_section(name: str, markdown: str, path: Path = BENCHMARKS) -> None:
    text = path.read_text() if path.exists() else HEADER
    block = f"<!-- BEGIN {name} -->\n{markdown.rstrip()}\n<!-- END {name} -->\n"
    pattern = re.compile(rf"<!-- BEGIN {re.escape(name)} -->.*?<!-- END {re.escape(name)} -->\n?",
                         re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".BENCHMARKS.", suffix=".md")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def markdown_table(headers, rows) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def p50(times) -> float:
    return float(np.percentile(times, 50))


def relative(path) -> str:
    """`path` relative to the repository when it lies inside it."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)
