"""The image geometry a model takes: its square tile size and channel count, read from its input.

`image_geometry(model_or_runner)` is the one place every command learns how to cut images
for a model: a Keras model (its `inputs`) or any runner (its metadata's inputs and layout)
with exactly one input `[N, S, S, C]` (NHWC; NCHW where the runner says so) and C 1 or 3
gives `ImageGeometry(tile=S, channels=C)`. A free height and width mean `DEFAULT_TILE`
(256); one free side takes the other's size; a free channel count means 1 (grayscale).
Anything else (several inputs, another rank, a non-square input, another channel count) is
not an image model: `None`. `require_image_geometry` is the one-line refusal of the commands
that need images; parity still runs such a model on random inputs or saved `.npz` inputs.
No TensorFlow: a Keras model is read through its `inputs` attribute only.
"""

from __future__ import annotations

from typing import NamedTuple

from edgetrunc.errors import InputError

DEFAULT_TILE = 256
CHANNELS = (1, 3)  # grayscale (luma) or RGB


class ImageGeometry(NamedTuple):
    """How images are cut for a model: `tile` x `tile` pixels, `channels` 1 (luma) or 3 (RGB)."""

    tile: int
    channels: int

    @property
    def shape(self) -> tuple:
        """`(H, W, C)` of one model input."""
        return (self.tile, self.tile, self.channels)

    def describe(self) -> str:
        return f"{self.tile}x{self.tile} {'RGB' if self.channels == 3 else 'grayscale'}"


def _dim(value):
    """A fixed dimension as int, a free one (None, -1, 0, a name) as None."""
    try:
        value = int(value)
    except (TypeError, ValueError):
        return None
    return value if value > 0 else None


def input_shapes(model_or_runner) -> tuple[list, str]:
    """`(shape of every input, "NHWC" or "NCHW")` of a Keras model or a runner."""
    metadata = getattr(model_or_runner, "metadata", None)
    meta = metadata() if callable(metadata) else None
    if meta is not None and hasattr(meta, "inputs"):
        return [tuple(info.shape) for info in meta.inputs], getattr(meta, "layout", "NHWC") or "NHWC"
    inputs = getattr(model_or_runner, "inputs", None)
    if inputs is None and callable(getattr(model_or_runner, "input_size", None)):
        size = model_or_runner.input_size()  # a minimal runner: one gray input of this size
        return [(None, *(size or (None, None)), 1)], "NHWC"
    return [tuple(getattr(t, "shape", ())) for t in inputs or []], "NHWC"


def geometry_of_shape(shape, layout: str = "NHWC"):
    """`ImageGeometry` of one input shape `[N, ...]`, or None when it is not an image."""
    shape = tuple(shape)
    if len(shape) != 4:
        return None
    height, width, channels = (shape[1], shape[2], shape[3]) if layout == "NHWC" else (
        shape[2], shape[3], shape[1])
    height, width, channels = _dim(height), _dim(width), _dim(channels)
    channels = channels or 1
    if channels not in CHANNELS:
        return None
    if height is not None and width is not None and height != width:
        return None
    return ImageGeometry(int(height or width or DEFAULT_TILE), int(channels))


def image_geometry(model_or_runner):
    """`ImageGeometry(tile, channels)` of a model or runner with one image input, else None."""
    shapes, layout = input_shapes(model_or_runner)
    if len(shapes) != 1:
        return None
    return geometry_of_shape(shapes[0], layout)


def why_not_image(model_or_runner) -> str:
    """What makes the model's input not an image (for the refusal line)."""
    shapes, layout = input_shapes(model_or_runner)
    if len(shapes) != 1:
        return f"{len(shapes)} inputs"
    shown = [d if _dim(d) else None for d in shapes[0]]
    if len(shapes[0]) != 4:
        return f"input {shown} is not an image batch"
    channels = _dim(shapes[0][3] if layout == "NHWC" else shapes[0][1])
    if channels not in (None, *CHANNELS):
        return f"input {shown} ({layout}) has {channels} channels, not 1 or 3"
    return f"input {shown} ({layout}) is not square"


def require_image_geometry(model_or_runner, name, command: str) -> ImageGeometry:
    """The model's `ImageGeometry`, or the one-line `InputError` of a command that needs images."""
    geometry = image_geometry(model_or_runner)
    if geometry is None:
        raise InputError(f"{name}: {why_not_image(model_or_runner)}; expected one square image "
                         f"input [N, S, S, 1 or 3] for {command} (edgetrunc parity compares "
                         "other models on --inputs random or an .npz of inputs)")
    return geometry
