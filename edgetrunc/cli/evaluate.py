"""`edgetrunc evaluate`: accuracy, AUC, P_E, confusion matrix and per-photo table of a detector.

`.keras` models run in Keras (inference mode); `.tflite` and `.onnx` artifacts run on the
TensorFlow-free runtime. The table (or `--json`, NaN as null) goes to stdout, progress to
stderr.
"""

from __future__ import annotations

import sys

from edgetrunc.cli import _args
from edgetrunc.cli._args import positive_int

DESCRIPTION = "Evaluate a detector on the held-out test split (or a folder)."


def add_arguments(p) -> None:
    from edgetrunc.evaluate import evaluate as f

    p.add_argument("model", metavar="MODEL", help=".keras, .tflite or .onnx file")
    _args.add_covers(p, f, "'embedded' (held-out test photos) or a folder of cover images")
    _args.add_payload(p, f, "payload in bpp")
    _args.add_stego(p)
    _args.add_seed(p, f, "seed of the split and embedding")
    _args.add_parameter(p, f, "split", "which photos to score (default: test for embedded, all "
                        "for a folder)", choices=("train", "val", "test", "all"))
    _args.add_parameter(p, f, "stride", "tile stride in pixels, as in the training record",
                        type=positive_int)
    _args.add_parameter(p, f, "max_pairs", "score at most this many pairs", type=positive_int)
    _args.add_custom_objects(p, f)
    _args.add_json(p)


def run(args) -> int:
    from edgetrunc._text import dumps_json
    from edgetrunc.evaluate import evaluate, format_report

    report = evaluate(args.model, **_args.keywords(evaluate, args))
    if args.json:
        sys.stdout.write(dumps_json(report, nan="null"))
    else:
        print(format_report(report))
    return 0
