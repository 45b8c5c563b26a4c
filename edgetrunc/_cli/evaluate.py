"""`edgetrunc evaluate`: accuracy, AUC, P_E, confusion matrix and per-photo table of a detector.

`.keras` models run in Keras (inference mode); `.tflite` and `.onnx` artifacts run on the
TensorFlow-free runtime. The table (or `--json`) goes to stdout, progress to stderr.
"""

from __future__ import annotations

import json
import math
import sys


def _json_ready(obj):
    if isinstance(obj, dict):
        return {k: _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def run(args) -> int:
    from edgetrunc.evaluate import evaluate, format_report

    report = evaluate(args.model, covers=args.covers, payload=args.payload, seed=args.seed,
                      split=args.split, stride=args.stride, max_pairs=args.max_pairs)
    if args.json:
        json.dump(_json_ready(report), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_report(report))
    return 0
