"""The benchmarks of BENCHMARKS.md: one package, one entry point (`make bench`).

    python -m scripts.benchmarks [SECTION ...] [--quick] [--out FILE] [--list]
    python -m scripts.benchmarks SECTION [its own options, e.g. --runs 50]

runs every section module of `SECTIONS` (or the ones named), in this order, each writing its
sections of BENCHMARKS.md (`_markdown.update_section`), then puts the sections in their
order. `--quick` runs each with few runs and tiny sizes, into a copy of BENCHMARKS.md unless
`--out` is given: a smoke test, not a measurement. A section module has `main(argv) -> int`
and takes its own options when it is the one section named.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Section:
    module: str
    writes: str  # the BENCHMARKS.md sections it writes
    quick: tuple  # its arguments under --quick


SECTIONS = {
    "runtime": Section("scripts.benchmarks.runtime",
                       "machine, truncation-variants, runtime, flops, profile, scaling",
                       ("--quick",)),
    "export": Section("scripts.benchmarks.export", "export (int8 vs fp32, conversion time)",
                      ("--runs", "3")),
    "parity": Section("scripts.benchmarks.parity", "parity throughput",
                      ("--samples", "4", "--batch", "4")),
    "training": Section("scripts.benchmarks.training", "training overhead",
                        ("--rounds", "1", "--steps", "1", "--batch-pairs", "2")),
    "streaming": Section("scripts.benchmarks.streaming", "streaming cover folders",
                         ("--sizes", "4", "--max-tiles", "4")),
    "models": Section("scripts.benchmarks.models", "cost per model size",
                      ("--models", "tlunet")),
    "integer": Section("scripts.benchmarks.integer", "full-integer artifacts (printed only)",
                       ("--runs", "3")),
    "per-layer": Section("scripts.benchmarks.per_layer", "per-layer parity against a revision",
                         ("--model-name", "tlunet", "--samples", "2")),
    "assert-parity": Section("scripts.benchmarks.assert_parity", "assert_parity in a test",
                             ("--samples", "4", "--runs", "1")),
    "int8-onnx": Section("scripts.benchmarks.int8_onnx", "int8 against fp32 in ONNX Runtime",
                         ("--models", "tlunet", "--runs", "3")),
    "convert": Section("scripts.benchmarks.convert",
                       "convert against the bare converter calls, by stage; per-layer memory",
                       ("--small", "--no-per-layer")),
}
