"""`assert_parity` of the shipped tlunet against its 5 artifacts, with the conversion cached.

What a user's test pays: the artifact set comes from the pytest plugin's cache
(`edgetrunc.testing.artifacts.ArtifactCache`: converted on the first call, read back after),
then `assert_parity(model, artifacts, samples=16)` (probes included). Prints the seconds of
the TensorFlow import, the first (converting) and the second (cached) lookup, and of
`assert_parity`, best of `--runs`; writes the "assert-parity" section of BENCHMARKS.md
(`--no-write` to only print).

    python -m scripts.benchmarks assert-parity [--samples 16] [--runs 3] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
from scripts.benchmarks._markdown import (ROOT, log, machine_description, markdown_table,  # noqa: E402
                                          publish, timed, toolchain_versions)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    load = os.getloadavg()
    _, import_s = timed(lambda: __import__("tensorflow"))
    from edgetrunc.testing import assert_parity
    from edgetrunc.testing.artifacts import ArtifactCache

    model = ROOT / "models" / "tlunet.keras"
    with tempfile.TemporaryDirectory() as folder:
        cache = ArtifactCache(folder)
        converted, first_s = timed(lambda: cache.convert(model))
        runs = []
        for _ in range(args.runs):
            artifacts, lookup_s = timed(lambda: ArtifactCache(folder).convert(model))
            report, parity_s = timed(lambda: assert_parity(model, artifacts.paths, samples=args.samples))
            runs.append((lookup_s, parity_s))
            log(f"cached lookup {lookup_s:.2f} s, assert_parity {parity_s:.2f} s "
                f"({len(report.artifacts)} artifacts)")
    lookup_s, parity_s = min(runs, key=lambda r: r[0] + r[1])
    rows = [["import tensorflow", f"{import_s:.2f}"],
            ["first lookup: convert the 5 artifacts into the cache", f"{first_s:.2f}"],
            ["cached lookup (hash the model, read the manifest)", f"{lookup_s:.3f}"],
            [f"assert_parity, {len(converted)} artifacts, {args.samples} samples, probes", f"{parity_s:.2f}"],
            ["**cached lookup + assert_parity**", f"**{lookup_s + parity_s:.2f}**"]]
    markdown = "\n".join([
        "## `assert_parity` in a test (`python -m scripts.benchmarks assert-parity`)", "",
        f"Machine: {machine_description()}; {toolchain_versions()}; load average at the start: "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}.",
        f"models/tlunet.keras against its {len(converted)} artifacts as a user's test gets them from "
        f"the plugin's cache; best of {args.runs} runs in one process (the Keras model is loaded "
        "anew by each call, as a test does).", "",
        markdown_table(["step", "seconds"], rows), "",
        f"Target: <= 20 s for the cached lookup and `assert_parity`: "
        f"{'met' if lookup_s + parity_s <= 20 else 'missed'}.", ""])
    return publish("assert-parity", markdown, not args.no_write)


if __name__ == "__main__":
    sys.exit(main())
