"""`edgetrunc infer`: stego probability of images with a `.tflite` or `.onnx` model.

Runs on the TensorFlow-free runtime. Each image is tiled into 256x256 tiles (a border
narrower than a tile is dropped and reported on stderr); an image that cannot be read is
reported on stderr and the others still run; the exit code is 2 if any image failed.
"""

from __future__ import annotations

import json
import sys

from edgetrunc import _log
from edgetrunc.runtime import open_runner, score_images


def _table(scores) -> str:
    rows = [("image", "tiles", "stego probability", "decision")]
    rows += [(s.image, str(len(s.tiles)), f"{s.stego_probability:.4f}", s.decision) for s in scores]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) if i in (0, 3) else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(args) -> int:
    runner = open_runner(args.artifact, threads=args.threads)
    meta = runner.metadata()
    _log.info(f"{runner.name}: {meta.format} {meta.precision}, input "
              f"{list(meta.inputs[0].shape)} {meta.layout}")
    failed = []

    def report(path, exc):
        failed.append(str(path))
        print(f"edgetrunc infer: error: {exc}", file=sys.stderr, flush=True)

    scores = score_images(runner, args.images, on_error=report)
    for score in scores:
        right, bottom = score.dropped_border
        if right or bottom:
            count = len(score.tiles)
            _log.info(f"{score.image}: {score.width}x{score.height}, {count} tile{'s' * (count != 1)} "
                      f"of 256x256; dropped a border of {right} px (right) and {bottom} px (bottom)")
    if args.json:
        json.dump({"results": [s.to_dict() for s in scores]}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif scores:
        print(_table(scores))
    if failed:
        _log.info(f"{len(failed)} of {len(args.images)} images could not be scored")
        return 2
    return 0
