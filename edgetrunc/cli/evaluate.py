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
    p.add_argument("model", metavar="MODEL", help=".keras, .tflite or .onnx file")
    _args.add_covers(p, "'embedded' (held-out test photos) or a folder of cover images")
    _args.add_payload(p, "payload in bpp (default: 0.4)")
    _args.add_stego(p)
    _args.add_seed(p, "seed of the split and embedding (default: 0)")
    p.add_argument("--split", choices=("train", "val", "test", "all"), default=None,
                   help="which photos to score (default: test for embedded, all for a folder)")
    p.add_argument("--stride", type=positive_int, default=128,
                   help="tile stride in pixels (default: 128, as in the training record)")
    p.add_argument("--max-pairs", type=positive_int, default=None, help="score at most this many pairs")
    _args.add_custom_objects(p)
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
