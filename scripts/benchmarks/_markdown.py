"""Shared by the benchmark sections: BENCHMARKS.md sections, the machine, tables, small helpers.

Each benchmark module owns a section of BENCHMARKS.md delimited by `<!-- BEGIN name -->` /
`<!-- END name -->`; `update_section` replaces one (sections are kept in the order they
were first written; the file is replaced atomically) in `output_path()` (`set_output`: the
entry point's `--out`); `order_sections` puts them in the order of `SECTION_ORDER`.
`machine_description` and `toolchain_versions` describe where a benchmark ran;
`markdown_table` lays out its rows.
"""

from __future__ import annotations

import os
import platform
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "BENCHMARKS.md"
HEADER = "# Benchmarks\n\nMeasured with `make bench` (and the sections named in each one).\n"
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


SECTION_ORDER = ("machine", "runtime", "truncation-variants", "flops", "profile", "export", "parity",
                 "training")
_OUTPUT = [BENCHMARKS]


def set_output(path) -> None:
    """Write the sections into `path` from now on (default: the repository's BENCHMARKS.md)."""
    _OUTPUT[0] = Path(path)


def output_path() -> Path:
    return _OUTPUT[0]


def update_section(name: str, markdown: str, path: Path | None = None) -> None:
    """Replace (or append) the section `name` of `path` (default: `output_path()`)."""
    path = Path(path or _OUTPUT[0])
    text = path.read_text() if path.exists() else HEADER
    block = f"<!-- BEGIN {name} -->\n{markdown.rstrip()}\n<!-- END {name} -->\n"
    pattern = re.compile(rf"<!-- BEGIN {re.escape(name)} -->.*?<!-- END {re.escape(name)} -->\n?",
                         re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".BENCHMARKS.", suffix=".md")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def order_sections(path: Path, order=SECTION_ORDER) -> None:
    """Put the named sections of BENCHMARKS.md in `order` (others after them, as they were).
    Text outside the markers moves with the section before it: nothing is dropped."""
    text = path.read_text()
    pattern = re.compile(r"<!-- BEGIN (?P<name>[\w.-]+) -->\n.*?<!-- END (?P=name) -->\n?", re.S)
    matches = list(pattern.finditer(text))
    if not matches:
        return
    ends = [m.start() for m in matches[1:]] + [len(text)]
    blocks = [(m.group("name"), text[m.start():end].strip("\n") + "\n")
              for m, end in zip(matches, ends)]
    head = text[:matches[0].start()].rstrip("\n") + "\n"
    rank = {name: i for i, name in enumerate(order)}
    blocks.sort(key=lambda b: rank.get(b[0], len(order)))
    from edgetrunc._io import write_text_atomic

    write_text_atomic(path, head + "".join("\n" + block for _, block in blocks))


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


def publish(name: str, markdown: str, write: bool = True) -> int:
    """Print a section's Markdown and (unless `write` is false: `--no-write`) update it; exit 0."""
    print(markdown)
    if write:
        update_section(name, markdown)
    return 0


def timed(call):
    """`(call(), seconds it took)`."""
    import time

    started = time.perf_counter()
    value = call()
    return value, time.perf_counter() - started
