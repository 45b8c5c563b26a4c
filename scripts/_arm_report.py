"""The "arm" section of BENCHMARKS.md, from the summary `scripts/arm_parity.py --json` writes.

Two tables: Keras against every recording (x86-64 and each emulated aarch64 profile, side by
side per artifact), and x86-64 against each aarch64 profile (outputs, and the largest
per-layer difference with its layer). No timing of the emulated runs: emulated time is not a
device figure.
"""

from __future__ import annotations

from pathlib import Path

from _benchmd import machine_description, markdown_table, toolchain_versions, update_section


def _fmt(value, spec=".1e") -> str:
    return "-" if value is None else format(value, spec)


def _name(path: str) -> str:
    """`tlunet_int8.tflite` from a recording `tlunet_int8_tflite.aarch64-A76.npz`."""
    stem, _, suffix = Path(path).name.split(".")[0].rpartition("_")
    return f"{stem}.{suffix}" if stem else Path(path).name


def keras_rows(parity: dict) -> list:
    from edgetrunc.runtime.host import where_label

    rows = []
    for a in parity["artifacts"]:
        where = (a.get("runtime") or {}).get("where")
        rows.append([_name(a["path"]), a["precision"], where_label(where), _fmt(a["max_abs_error"]),
                     _fmt(a["probability_mae"]), _fmt(a["decision_agreement"], ".3f"),
                     "pass" if a["passed"] else "FAIL"])
    return rows


def recording_rows(comparisons: list) -> list:
    rows = []
    for c in comparisons:
        outputs = list(c["outputs"].values())
        steps = [o["steps"] for o in outputs if o["steps"] is not None]
        largest, most = c["largest_tensor"] or {}, c.get("most_steps") or {}
        rows.append([c["artifact"], c["precision"], c["other"].split(" (")[1].split(",")[0],
                     _fmt(max((o["max_abs"] for o in outputs), default=None)),
                     _fmt(max(steps), ".2f") if steps else "-",
                     f"`{largest.get('layer', '-')}`", _fmt(largest.get("max_abs")),
                     _fmt(largest.get("normalized")),
                     f"{most['steps']:.0f} (`{most['layer']}`)" if most else "-",
                     c["tensors_compared"], "pass" if c["passed"] else "FAIL"])
    return rows


KINDS = ("dot product (sdot/udot)", "widening int8 multiply (smull/smlal/sadalp)", "fp16 arithmetic")


def kernel_lines(rows: list) -> list:
    """The kernels each profile made the runtimes take (`arm_parity.py --kernels`)."""
    if not rows:
        return []
    table = markdown_table(["artifact", "profile", *KINDS],
                           [[name, profile, *[counts.get(kind, 0) for kind in KINDS]]
                            for name, profile, counts in rows])
    return ["Kernels taken (`--kernels`): distinct instructions of each kind that qemu translated "
            "while `edgetrunc run` ran one input (outputs path: XNNPACK / ONNX Runtime's default "
            "kernels), per profile. The A53 profile can take no dot-product or fp16 instruction "
            "(qemu's `-cpu cortex-a53` would stop on one), so these show the two profiles "
            "exercising different kernels (the 74-127 widening multiplies of the float artifacts come "
            "from code every run takes, numpy and the runtimes' start-up):", "", table, ""]


def section(summary: dict) -> str:
    parity = summary["keras_parity"]
    inputs = parity["inputs"]
    composition = ", ".join(f"{k} {v}" for k, v in inputs["composition"].items() if v)
    return "\n".join([
        "## Parity on emulated aarch64 (`make arm-parity`)",
        "",
        f"`python scripts/arm_parity.py --samples {inputs['samples']} --intermediates "
        f"{summary['intermediates']}{' --kernels' if summary.get('kernels') else ''}`: every "
        "shipped artifact recorded by `edgetrunc run` "
        "(TensorFlow-free) on x86-64 and under qemu-user for two CPU profiles, Cortex-A76 (NEON, "
        "fp16 arithmetic, int8 dot product; `-cpu cortex-a76`) and Cortex-A53 (plain NEON; `-cpu "
        f"cortex-a53`), on {inputs['samples']} inputs ({composition}); every tensor recorded on "
        f"the first {summary['intermediates']} (TFLite built-in kernels, ONNX Runtime). "
        "Emulated runs are not timed: emulated time is not a device figure. Every timing elsewhere "
        "in this file is x86-64.",
        "",
        "Keras against every recording (`edgetrunc parity MODEL RECORDINGS --inputs INPUTS.npz`):",
        "",
        markdown_table(["artifact", "precision", "ran on", "max abs error", "probability MAE",
                        "agreement", "verdict"], keras_rows(parity)),
        "",
        "x86-64 against each aarch64 profile (`edgetrunc.parity.recordings`): output difference "
        "(int8: in steps of the output's quantization scale, bound 1), and the largest per-layer "
        "difference with its layer (normalized: max|aarch64 - x86| / max|x86|), and the int8 "
        "tensor whose difference spans the most steps of its own scale:",
        "",
        markdown_table(["artifact", "precision", "aarch64 profile", "output max abs",
                        "output steps", "largest layer difference", "max abs", "normalized",
                        "most int8 steps (layer)", "tensors", "verdict"],
                       recording_rows(summary["x86_vs_aarch64"])),
        "",
        *kernel_lines(summary.get("kernels") or []),
        f"Host: {machine_description()}. Toolchain: {toolchain_versions()}; aarch64: Debian 12 "
        "Python 3.11, the same pins of numpy, ai-edge-litert and onnxruntime.",
    ])


def write(summary: dict) -> None:
    update_section("arm", section(summary))
