"""`edgetrunc convert`: glue between the parsed arguments and `edgetrunc.export.convert`.

Progress goes to stderr; the closing table (artifact, size, ops, truncation mapping) to
stdout, or the manifest as JSON with `--json`.
"""

from __future__ import annotations

import sys

from edgetrunc.cli import _args

DESCRIPTION = ("Convert a Keras model (.keras, or a full-model .h5) to TFLite and ONNX; every "
               "artifact is read back and its truncation mapping checked.")


def _library():
    """The library's `convert`, whose signature gives every option its default."""
    from edgetrunc.export import convert

    return convert


def add_arguments(p) -> None:
    f = _library()
    p.add_argument("model", metavar="MODEL", help=".keras or full-model .h5 file")
    _args.add_parameter(p, f, "out_dir", "output folder (default: beside the model)", flag="--out")
    _args.add_parameter(p, f, "tflite", "TFLite precisions (int8-full: int8 input, output and "
                        "every op, for NPUs and microcontrollers)",
                        type=_args.choices_list("precision", ("fp32", "fp16", "int8", "int8-full")))
    _args.add_parameter(p, f, "onnx", "ONNX precisions (int8-full: QDQ with int8 input and output)",
                        type=_args.choices_list("precision", ("fp32", "int8", "int8-full")))
    _args.add_parameter(p, f, "opset", "ONNX opset, 13..21", type=int)
    _args.add_parameter(p, f, "nchw", "ONNX input as NCHW instead of NHWC", action="store_true")
    _args.add_parameter(p, f, "calibration", "int8 calibration images: 'embedded' or a folder")
    _args.add_parameter(p, f, "int8_io", "TFLite int8 with int8 input/output", action="store_true")
    _args.add_parameter(p, f, "int8_mode", "int8 quantization: truncation-aware (float before the "
                        "first truncation, clip by int8 saturation) or the converters' stock "
                        "full-integer path, for comparison", choices=("truncation-aware", "stock"))
    _args.add_parameter(p, f, "literal", "a one-to-one translation: skip the rewrites for speed "
                        "(packing one-channel convolutions over 2x2 blocks of pixels, VALID pools "
                        "and the batch normalization after them as convolutions), which are on "
                        "by default", action="store_true")
    p.add_argument("--pack-front-end", action="store_true",
                   help="accepted for old command lines and does nothing: packing the "
                   "one-channel front end is now the default (see --literal)")
    _args.add_custom_objects(p, f)
    _args.add_trust_lambda(p, f, "load Lambda layers that are not truncations and run them as "
                           "traced (this runs code stored in the file; edgetrunc migrate "
                           "replaces truncations and common elementwise Lambdas instead)")
    _args.add_parameter(p, f, "target", "where the TFLite artifacts run: the CPU-only rewrites "
                        "(space-to-depth packing) are left out for ethos-u and micro",
                        choices=("cpu", "ethos-u", "micro"))
    _args.add_parameter(p, f, "speed", "skip timing each int8 artifact against the fp32 one of "
                        "its format (a few runs, 1 thread; a warning when int8 is slower)",
                        flag="--no-speed", action="store_false")
    _args.add_json(p, "print the manifest as JSON on stdout")
    _args.add_force(p, f, "replace existing artifacts")


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

    convert = _library()
    manifest = convert(args.model, **_args.keywords(convert, args, exclude=("model_path",)))
    if args.json:
        sys.stdout.write(dumps_json(manifest))
    else:
        print(format_table(manifest))
    return 0
