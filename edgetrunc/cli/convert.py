"""`edgetrunc convert`: glue between the parsed arguments and `edgetrunc.export.convert`.

Progress goes to stderr; the closing table (artifact, size, ops, truncation mapping) to
stdout, or the manifest as JSON with `--json`.
"""

from __future__ import annotations

import sys

from edgetrunc.cli import _args

DESCRIPTION = ("Convert a Keras model (.keras, or a full-model .h5) to TFLite and ONNX; every "
               "artifact is read back and its truncation mapping checked.")


def add_arguments(p) -> None:
    p.add_argument("model", metavar="MODEL", help=".keras or full-model .h5 file")
    _args.add_out(p, "output folder (default: beside the model)", default=None, dest="out_dir")
    p.add_argument("--tflite", type=_args.choices_list("precision", ("fp32", "fp16", "int8", "int8-full")),
                   default=["fp32", "fp16", "int8"],
                   help="TFLite precisions (default: fp32,fp16,int8; int8-full: int8 input, "
                   "output and every op, for NPUs and microcontrollers)")
    p.add_argument("--onnx", type=_args.choices_list("precision", ("fp32", "int8")),
                   default=["fp32", "int8"], help="ONNX precisions (default: fp32,int8)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, 13..21 (default: 17)")
    p.add_argument("--nchw", action="store_true", help="ONNX input as NCHW instead of NHWC")
    p.add_argument("--calibration", default="embedded",
                   help="int8 calibration images: 'embedded' or a folder (default: embedded)")
    p.add_argument("--int8-io", action="store_true", help="TFLite int8 with int8 input/output")
    p.add_argument("--int8-mode", choices=("truncation-aware", "stock"), default="truncation-aware",
                   help="int8 quantization: truncation-aware (float before the first truncation, "
                   "clip by int8 saturation) or the converters' stock full-integer path, for "
                   "comparison (default: truncation-aware)")
    p.add_argument("--literal", action="store_true",
                   help="a one-to-one translation: skip the rewrites for speed (packing "
                   "one-channel convolutions over 2x2 blocks of pixels, VALID pools and the "
                   "batch normalization after them as convolutions), which are on by default")
    p.add_argument("--pack-front-end", action="store_true",
                   help="accepted for old command lines and does nothing: packing the "
                   "one-channel front end is now the default (see --literal)")
    _args.add_custom_objects(p)
    _args.add_trust_lambda(p, "load Lambda layers that are not truncations and run them as "
                           "traced (this runs code stored in the file; edgetrunc migrate "
                           "replaces truncations and common elementwise Lambdas instead)")
    p.add_argument("--target", choices=("cpu", "ethos-u", "micro"), default="cpu",
                   help="where the TFLite artifacts run: the CPU-only rewrites (space-to-depth "
                   "packing) are left out for ethos-u and micro (default: cpu)")
    p.add_argument("--no-speed", dest="speed", action="store_false",
                   help="skip timing each int8 artifact against the fp32 one of its format "
                   "(a few runs, 1 thread; a warning when int8 is slower)")
    _args.add_json(p, "print the manifest as JSON on stdout")
    _args.add_force(p, "replace existing artifacts")


def _ops_summary(ops: dict, limit: int = 6) -> str:
    items = sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{name} {count}" for name, count in items[:limit])
    return text + (f", +{len(items) - limit} more" if len(items) > limit else "")


def _mapping(truncations) -> str:
    return "; ".join(f"{t['layer']} [{t['lower']:g}, {t['upper']:g}] -> {t['mapped_to']}"
                     for t in truncations) or "(no Truncation layer)"


def _quality(entry) -> str:
    quantization = entry.get("quantization") or {}
    evaluation, speed = quantization.get("evaluation"), quantization.get("speed")
    parts = []
    if evaluation:
        parts.append(f"agreement {evaluation['decision_agreement']:.3f}, "
                     f"accuracy {evaluation['accuracy_delta']:+.3f}")
    if speed:
        parts.append(f"{speed['int8_speedup']:.2f}x fp32 speed"
                     + ("" if speed["pays"] else " (slower)"))
    return ", ".join(parts)


def format_table(manifest: dict) -> str:
    """The manifest's artifacts: path, size, op counts, truncation mapping, int8 quality."""
    from edgetrunc._text import table

    rows = [(a["path"], f"{a['bytes'] / 1024:.0f} KiB", _ops_summary(a["ops"]),
             _mapping(a["truncations"]), _quality(a)) for a in manifest["artifacts"]]
    return table(("artifact", "size", "ops", "truncation mapping", "int8 vs Keras, vs fp32"), rows)


def run(args) -> int:
    from edgetrunc._text import dumps_json
    from edgetrunc.export import convert

    manifest = convert(args.model, **_args.keywords(convert, args, exclude=("model_path",)))
    if args.json:
        sys.stdout.write(dumps_json(manifest))
    else:
        print(format_table(manifest))
    return 0
