"""`manifest.json`: what `convert` wrote, and the whole set of outputs committed at once.

`plan` names the artifacts of a conversion; `artifact_entry` describes one (path, hash,
ops, truncation mapping, inputs, outputs, quantization, the passes that rewrote it);
`build_manifest` adds the source and
the toolchain versions; `export.commit.OutputSet` commits the set, the manifest last.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from edgetrunc._version import package_versions
from edgetrunc.export.formats import export_format

MANIFEST = "manifest.json"


def plan(stem, tflite, onnx) -> list:
    """`[(format, precision, file name)]` of every artifact, TFLite first."""
    return [(fmt, p, f"{stem}_{p}{export_format(fmt).suffix}")
            for fmt, precisions in (("tflite", tflite), ("onnx", onnx)) for p in precisions]


def artifact_entry(name, fmt, precision, content: bytes, report: dict, quantization,
                   passes=(), target=None) -> dict:
    """The manifest entry of one artifact; `report` is its inspector's. Lists of op types
    kept in float name only the types the artifact holds. `passes`: the rewrites that changed
    the artifact, in the order they ran; `target`: what the TFLite pass lists were chosen
    for, recorded where it is not the default "cpu"."""
    if quantization:
        for key in ("float_op_types", "float_inside_xnnpack"):
            if key in quantization:
                quantization = {**quantization,
                                key: [t for t in quantization[key] if t in report["ops"]]}
    entry = {
        "path": name, "format": fmt, "precision": precision,
        "sha256": hashlib.sha256(content).hexdigest(), "bytes": len(content),
        "ops": report["ops"], "truncations": report["truncations"],
        "inputs": report["inputs"], "outputs": report["outputs"],
        "quantization": quantization, "passes": list(passes),
    }
    if target not in (None, "cpu") or (precision == "int8-full" and fmt == "tflite"):
        entry["target"] = target
    if "integer" in report:
        entry["integer"] = report["integer"]
    return entry


def quantization_entry(fmt, precision, int8_io, int8_mode, calib, literal=False):
    """How an artifact is quantized (None for fp32)."""
    if precision == "fp32":
        return None
    if precision == "fp16":
        return {"weights": "float16", "activations": "float32"}
    if precision == "int8-full":
        return {**_full_integer_entry(calib), **export_format(fmt).export.int8_layout}
    hooks = export_format(fmt).export
    entry = {
        "weights": "int8 (per channel)",
        "activations": "int8",
        "mode": int8_mode,
        "float_before_first_truncation": int8_mode == "truncation-aware",
        "truncation": (hooks.int8_truncation if int8_mode == "truncation-aware"
                       else "calibrated ranges"),
        "io": "int8" if int8_io and hooks.int8_io else "float32",
        "calibration": {"samples": int(len(calib.x)), "split": calib.split,
                        "photos": list(calib.photos), "payload": calib.payload},
    }
    if int8_mode == "truncation-aware":
        entry.update(hooks.int8_aware_notes(literal))
    entry.update(hooks.int8_layout)
    return entry


def _full_integer_entry(calib) -> dict:
    return {
        "weights": "int8 (per channel); exactly representable filters stored exactly",
        "activations": "int8", "mode": "full-integer", "io": "int8",
        "input": "pixels 0..255 exactly (scale 1, zero point -128)",
        "truncation": "range of each truncation's producer set to [lower, upper]; int8 "
                      "saturation performs the clip",
        "calibration": {"samples": int(len(calib.x)), "split": calib.split,
                        "photos": list(calib.photos), "payload": calib.payload},
    }


def model_io(model) -> dict:
    """The Keras model's inputs and outputs in order (name, shape, dtype): an artifact's feed
    is keyed by these input names and its outputs compared with these outputs in this order."""
    from edgetrunc.keras.runner import output_names

    def spec(name, tensor):
        return {"name": name, "shape": [None if d is None else int(d) for d in tensor.shape],
                "dtype": str(getattr(tensor, "dtype", "float32"))}

    return {"inputs": [spec(t.name, t) for t in model.inputs],
            "outputs": [spec(n, t) for n, t in zip(output_names(model), model.outputs)]}


def build_manifest(source: Path, source_sha: str, out_dir: Path, artifacts: list,
                   io: dict | None = None) -> dict:
    return {
        "source": {"path": os.path.relpath(source.resolve(), out_dir.resolve()),
                   "sha256": source_sha, **(io or {})},
        "artifacts": artifacts,
        "versions": package_versions(),
    }
