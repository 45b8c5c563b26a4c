"""`edgetrunc infer`: stego probability of images with a `.tflite` or `.onnx` model.

Runs on the TensorFlow-free runtime. Each image is tiled at the model's square input size
(256x256 for a free size; grayscale or RGB as the model takes; a border narrower than a tile
is dropped and reported on stderr). An IMAGE may be a folder: its
images are scored in name order with the shared folder policy (hidden files ignored,
unusable files skipped with one warning line). An image named on the command line that
cannot be read gets one error line on stderr and the others still run; the exit code is 2
if any named image (or a folder with no usable image) failed.
"""

from __future__ import annotations

import sys
from pathlib import Path

from edgetrunc.cli import _args

DESCRIPTION = "Score images (tiled at the model's input size) with a converted model."


def add_arguments(p) -> None:
    from edgetrunc.runtime import open_runner

    p.add_argument("artifact", metavar="ARTIFACT")
    p.add_argument("images", metavar="IMAGE", nargs="+")
    _args.add_threads(p, open_runner)
    _args.add_json(p)


def format_table(scores) -> str:
    """One line per image: tiles, stego probability, decision."""
    from edgetrunc._text import table

    rows = [(s.image, len(s.tiles), f"{s.stego_probability:.4f}", s.decision) for s in scores]
    return table(("image", "tiles", "stego probability", "decision"), rows, align="lrrl")


def _check_image_input(runner):
    """The runner's `ImageGeometry`, or a one-line `InputError` saying why it takes no images."""
    from edgetrunc.data.geometry import CHANNELS, image_geometry
    from edgetrunc.errors import InputError

    geometry = image_geometry(runner)
    if geometry is not None:
        return geometry
    meta = runner.metadata()
    if len(meta.inputs) > 1:
        raise InputError(f"{runner.path}: the model has {len(meta.inputs)} inputs "
                         f"({', '.join(runner.input_names())}); infer scores one image per "
                         "single-input model: use `edgetrunc run ARTIFACT INPUTS.npz` (one array "
                         "per input name) or `edgetrunc parity`")
    shape = meta.inputs[0].shape if len(meta.inputs) == 1 else ()
    if len(shape) != 4:
        got = f"{len(meta.inputs)} inputs" if len(meta.inputs) != 1 else f"model input {list(shape)}"
        raise InputError(f"{runner.path}: {got}; expected an image batch [N, H, W, 1 or 3]")
    channels = shape[3] if meta.layout == "NHWC" else shape[1]
    if channels not in (None, *CHANNELS):
        raise InputError(f"{runner.path}: model input {list(shape)} ({meta.layout}) has {channels} "
                         "channels; expected 1 (grayscale) or 3 (RGB)")
    size = runner.input_size() or ("?", "?")
    raise InputError(f"{runner.path}: model input {list(shape)} is {size[0]}x{size[1]}; "
                     "expected square tiles (images are tiled at the model's input size)")


def _expand(items):
    """`(paths, {path: folder}, {folder: skipped})`: named images as given, folders replaced
    by their images."""
    from edgetrunc.data.images import image_files

    paths, folder_of, folders = [], {}, {}
    for item in items:
        path = Path(item)
        if path.is_dir():
            files, skipped = image_files(path, "folder of images")
            folders[str(path)] = skipped
            for file in files:
                folder_of[str(file)] = str(path)
            paths += files
        else:
            paths.append(item)
    return paths, folder_of, folders


def _error(message) -> None:
    from edgetrunc._text import printable

    print(f"edgetrunc infer: error: {printable(message)}", file=sys.stderr, flush=True)


def _score(runner, items) -> tuple:
    """`(scores, failed)`: every image scored, and the named inputs that could not be."""
    from edgetrunc._text import printable
    from edgetrunc.data.images import no_usable_image, report_skipped
    from edgetrunc.runtime import score_images

    paths, folder_of, folders = _expand(items)
    failed = []

    def report(path, exc):
        folder = folder_of.get(str(path))
        if folder is not None:  # a file found in a folder: skipped with the folder's warning
            reason = str(exc)
            reason = reason[len(f"{path}: "):] if reason.startswith(f"{path}: ") else reason
            folders[folder].append(printable(f"{Path(path).name} ({reason.split('; expected')[0]})"))
            return
        failed.append(str(path))
        _error(exc)

    scores = score_images(runner, paths, on_error=report)
    scored = {s.image for s in scores}
    for folder, skipped in folders.items():
        if any(folder_of.get(image) == folder for image in scored):
            report_skipped(folder, skipped)
        else:
            failed.append(folder)
            _error(no_usable_image(folder, skipped))
    return scores, failed


def run(args) -> int:
    from edgetrunc import _log
    from edgetrunc._text import dumps_json
    from edgetrunc.runtime import open_runner

    runner = open_runner(args.artifact, **_args.keywords(open_runner, args))
    geometry = _check_image_input(runner)
    meta = runner.metadata()
    _log.info(f"{runner.name}: {meta.format} {meta.precision}, input "
              f"{list(meta.inputs[0].shape)} {meta.layout}, {geometry.describe()} tiles")
    scores, failed = _score(runner, args.images)
    for score in scores:
        right, bottom = score.dropped_border
        if right or bottom:
            count = len(score.tiles)
            _log.info(f"{score.image}: {score.width}x{score.height}, {count} tile{'s' * (count != 1)} "
                      f"of {score.tile}x{score.tile}; dropped a border of {right} px (right) and {bottom} px (bottom)")
    if args.json:
        sys.stdout.write(dumps_json({"results": [s.to_dict() for s in scores]}))
    elif scores:
        print(format_table(scores))
    if failed:
        _log.info(f"{len(failed)} of {len(args.images)} inputs could not be scored")
        return 2
    return 0
