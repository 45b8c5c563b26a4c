"""`assert_parity` of the shipped tlunet against its 5 artifacts, with the conversion cached.

What a user's test pays: the artifact set comes from the pytest plugin's cache
(`edgetrunc.testing.artifacts.ArtifactCache`: converted on the first call, read back after),
then `assert_parity(model, artifacts, samples=16)` (probes included). Prints the seconds of
the TensorFlow import, the first (converting) and the second (cached) lookup, and of
`assert_parity`, best of `--runs`; writes the "assert-parity" section of BENCHMARKS.md
(`--no-write` to only print).

    python scripts/bench_assert_parity.py [--samples 16] [--runs 3] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _benchmd import ROOT, machine_description, markdown_table, toolchain_versions, update_section  # noqa: E402


def _timed(call):
    started = time.perf_counter()
    value = call()
    return value, time.perf_counter() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    load = os.getloadavg()
    _, import_s = _timed(lambda: __import__("tensorflow"))
    from edgetrunc.testing import assert_parity
    from edgetrunc.testing.artifacts import ArtifactCache

    model = ROOT / "models" / "tlunet.keras"
    with tempfile.TemporaryDirectory() as folder:
        cache = ArtifactCache(folder)
        converted, first_s = _timed(lambda: cache.convert(model))
        runs = []
        for _ in range(args.runs):
            artifacts, lookup_s = _timed(lambda: ArtifactCache(folder).convert(model))
            report, parity_s = _timed(lambda: assert_parity(model, artifacts.paths, samples=args.samples))
            runs.append((lookup_s, parity_s))
            print(f"cached lookup {lookup_s:.2f} s, assert_parity {parity_s:.2f} s "
                  f"({len(report.artifacts)} artifacts)", file=sys.stderr)
    lookup_s, parity_s = min(runs, key=lambda r: r[0] + r[1])
    rows = [["import tensorflow", f"{import_s:.2f}"],
            ["first lookup: convert the 5 artifacts into the cache", f"{first_s:.2f}"],
            ["cached lookup (hash the model, read the manifest)", f"{lookup_s:.3f}"],
            [f"assert_parity, {len(converted)} artifacts, {args.samples} samples, probes", f"{parity_s:.2f}"],
            ["**cached lookup + assert_parity**", f"**{lookup_s + parity_s:.2f}**"]]
    markdown = "\n".join([
        "## `assert_parity` in a test (`scripts/bench_assert_parity.py`)", "",
        f"Machine: {machine_description()}; {toolchain_versions()}; load average at the start: "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}.",
        f"models/tlunet.keras against its {len(converted)} artifacts as a user's test gets them from "
        f"the plugin's cache; best of {args.runs} runs in one process (the Keras model is loaded "
        "anew by each call, as a test does).", "",
        markdown_table(["step", "seconds"], rows), "",
        f"Target: <= 20 s for the cached lookup and `assert_parity`: "
        f"{'met' if lookup_s + parity_s <= 20 else 'missed'}.", ""])
    print(markdown)
    if not args.no_write:
        update_section("assert-parity", markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
