"""`python -m scripts.benchmarks`: run the benchmark sections (see the package docstring)."""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

from scripts.benchmarks import SECTIONS
from scripts.benchmarks._markdown import BENCHMARKS, log, order_sections, set_output


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.benchmarks",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("sections", nargs="*", metavar="SECTION",
                        help=f"sections to run (default: all): {', '.join(SECTIONS)}")
    parser.add_argument("--quick", action="store_true", help="few runs, tiny sizes: a smoke test")
    parser.add_argument("--out", type=Path, help="BENCHMARKS.md to write (default: the "
                        "repository's; with --quick a temporary copy)")
    parser.add_argument("--list", action="store_true", help="list the sections and exit")
    args, extra = parser.parse_known_args(argv)
    unknown = [name for name in args.sections if name not in SECTIONS]
    if unknown:
        parser.error(f"unknown section {', '.join(unknown)}; expected any of {', '.join(SECTIONS)}")
    if extra and len(args.sections) != 1:
        parser.error(f"{' '.join(extra)}: a section's own options need exactly one SECTION")
    if args.list:
        for name, section in SECTIONS.items():
            print(f"{name:14s} {section.writes}")
        return 0
    out = args.out
    if out is None and args.quick:
        out = Path(tempfile.mkdtemp(prefix="benchmarks-")) / "BENCHMARKS.md"
        shutil.copy(BENCHMARKS, out)
    out = out or BENCHMARKS
    set_output(out)
    start = time.monotonic()
    for name in args.sections or SECTIONS:
        log(f"benchmarks: {name}")
        module = importlib.import_module(SECTIONS[name].module)
        code = module.main([*(SECTIONS[name].quick if args.quick else ()), *extra])
        if code:
            return code
    order_sections(out)
    log(f"benchmarks: wrote {out} in {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
