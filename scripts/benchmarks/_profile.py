"""The "profile" section of BENCHMARKS.md: where the time of each shipped artifact goes.

`edgetrunc bench --profile` per shipped artifact (fp32 and int8 TFLite, fp32 ONNX; 1 thread):
the ops that take most of the time, their share and their achieved GFLOP/s. It is the table
the rewrites of `export/tflite/packing.py`, `export/tflite/pooling.py` and
`export/onnx/packing.py` were chosen from.
"""

from __future__ import annotations

from scripts.benchmarks._markdown import log, markdown_table, relative

PROFILED = [("tflite", "fp32"), ("tflite", "int8"), ("onnx", "fp32")]
TOP = 8  # ops listed per artifact; the rest are summed in one row


def bench_profiles(artifacts: dict, runs: int, warmup: int) -> list:
    """`[(label, profile)]` of the shipped artifacts in `PROFILED`, 1 thread."""
    from edgetrunc.runtime.profile import profile_artifact

    profiles = []
    for key in PROFILED:
        if key in artifacts:
            log(f"profile: {relative(artifacts[key])}")
            profiles.append((f"{key[0]} {key[1]}", profile_artifact(
                artifacts[key], threads=1, runs=runs, warmup=warmup)))
    return profiles


def _rows(profile: dict) -> list:
    ops = sorted(profile["ops"], key=lambda r: -r["ms"])
    rows = [[r["type"], r["layer"] or "-", f"{r['ms']:.3f}", f"{100 * r['share']:.1f}%",
             f"{(r['flops'] or 0) / 1e6:.2f}", f"{r['gflops']:.1f}" if r["gflops"] else "-"]
            for r in ops[:TOP]]
    rest = ops[TOP:]
    if rest:
        rows.append([f"{len(rest)} other ops", "", f"{sum(r['ms'] for r in rest):.3f}",
                     f"{100 * sum(r['share'] for r in rest):.1f}%", "", ""])
    return rows


def profile_section(profiles: list, runs: int, model_flops: int) -> str:
    parts = [
        "## Where the time goes: per-op profile of the shipped artifacts",
        "",
        f"`edgetrunc bench --profile ARTIFACT --threads 1 --runs {runs}` (JSON with `--json`; "
        "the schema is in the README): the ops that take most of the time, with the Keras "
        "layers their tensor names hold ('+' when one op computes several) and the FLOPs "
        "the op computes (from its shapes, the exact zeros of a packed kernel included). "
        "TFLite is timed cumulatively (the model cut after each op, the fastest run of each "
        "prefix), ONNX Runtime by its own profiler, whose fused nodes take the name of one of "
        "their layers. On a shared machine the small rows are noisy; the large ones rank the "
        f"work. The model asks for {model_flops / 1e6:.0f} MFLOP per 256x256 image.",
    ]
    for label, profile in profiles:
        parts += ["", f"**{label}**: {profile['total_ms']:.2f} ms in all, "
                      f"{model_flops / (profile['total_ms'] * 1e6):.1f} GFLOP/s of the model's "
                      "FLOPs", "",
                  markdown_table(["op", "layer", "ms", "share", "MFLOP", "GFLOP/s"],
                                 _rows(profile))]
    return "\n".join(parts)
