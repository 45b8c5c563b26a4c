"""`edgetrunc convert`: glue between the parsed arguments and `edgetrunc.export.convert`.

Progress goes to stderr; the closing table (artifact, size, ops, truncation mapping) to
stdout, or the manifest as JSON with `--json`.
"""

from __future__ import annotations

import json


def _ops_summary(ops: dict, limit: int = 6) -> str:
    items = sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{name} {count}" for name, count in items[:limit])
    return text + (f", +{len(items) - limit} more" if len(items) > limit else "")


def _mapping(truncations) -> str:
    return "; ".join(f"{t['layer']} [{t['lower']:g}, {t['upper']:g}] -> {t['mapped_to']}"
                     for t in truncations) or "(no Truncation layer)"


def _quality(entry) -> str:
    evaluation = (entry.get("quantization") or {}).get("evaluation")
    if not evaluation:
        return ""
    return (f"agreement {evaluation['decision_agreement']:.3f}, "
            f"accuracy {evaluation['accuracy_delta']:+.3f}")


def format_table(manifest: dict) -> str:
    rows = [("artifact", "size", "ops", "truncation mapping", "int8 vs Keras")]
    for a in manifest["artifacts"]:
        rows.append((a["path"], f"{a['bytes'] / 1024:.0f} KiB", _ops_summary(a["ops"]),
                     _mapping(a["truncations"]), _quality(a)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(args) -> int:
    from edgetrunc.export import convert

    manifest = convert(
        args.model, out_dir=args.out, tflite=args.tflite, onnx=args.onnx, opset=args.opset,
        nchw=args.nchw, calibration=args.calibration, int8_io=args.int8_io, force=args.force,
        int8_mode=getattr(args, "int8_mode", "truncation-aware"),
        pack_front_end=getattr(args, "pack_front_end", False))
    if getattr(args, "json", False):
        print(json.dumps(manifest, indent=2))
    else:
        print(format_table(manifest))
    return 0
