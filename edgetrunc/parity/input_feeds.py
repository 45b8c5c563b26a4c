"""Parity inputs of a model with several inputs: the shape of each, random feeds, `.npz` feeds.

A model with several inputs is compared on feeds `{input name: array}` (`NamedInputs`, sliced
like one array), keyed by the Keras input names: each input gets its own seeded uniform
0..255 values at its own shape (`random`, and the default `mix`, which needs photos for one
image input only), or the arrays of an `.npz` keyed by input name (`--inputs FILE.npz`, as
`--save-inputs` writes them). Each artifact must take the same input names and shapes
(`check_artifact_inputs`). Photos (covers, stego, a folder) are for one image input and are
refused here in one line. No TensorFlow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetrunc.errors import InputError

PHOTO_KINDS = ("covers", "stego")
IMAGE_DEFAULT = (256, 256, 1)  # the free sides of an image input, as for one input


def reference_shapes(keras_runner) -> dict:
    """`{input name: sample shape}` of the Keras model: an image input's free height and width
    are 256 like a single input's; any other free dimension is refused naming the input."""
    shapes = {}
    for info in keras_runner.metadata().inputs:
        shape = tuple(info.shape[1:])
        if len(shape) == 3:
            shape = tuple(d if d is not None else default for d, default in zip(shape, IMAGE_DEFAULT))
        if any(d is None for d in shape):
            raise InputError(f"{keras_runner.path}: input {info.name} {[None, *shape]} has free "
                             "dimensions and is not an image; parity needs fixed input dimensions")
        shapes[info.name] = tuple(int(d) for d in shape)
    return shapes


def sample_dims(shape) -> tuple:
    """Every sample dimension of one shape, or of every input of `{name: shape}` (for sizes)."""
    if isinstance(shape, dict):
        return tuple(d for dims in shape.values() for d in dims)
    return tuple(shape)


def check_artifact_input(runner, expected) -> None:
    """One InputError unless `runner` takes inputs of the reference's `expected` sample shape
    (an image's in its layout), or for several inputs `{name: shape}` (`check_artifact_inputs`)."""
    if isinstance(expected, dict):  # several inputs, by name
        return check_artifact_inputs(runner, expected)
    meta = runner.metadata()
    if len(meta.inputs) != 1:
        raise InputError(f"{runner.path}: artifact has {len(meta.inputs)} inputs "
                         f"({', '.join(runner.input_names())}); the Keras model takes one")
    shape = meta.inputs[0].shape
    if len(expected) != 3 and len(shape) == len(expected) + 1:  # not an image: as it is
        if any(a is not None and a != b for a, b in zip(shape[1:], expected)):
            raise InputError(f"{runner.path}: artifact input is {list(shape)}; the Keras model "
                             f"takes [N, {', '.join(map(str, expected))}]")
        return
    if len(shape) != 4:
        raise InputError(f"{runner.path}: artifact input has shape {list(shape)}; expected "
                         f"[N, {', '.join(map(str, expected))}] like the Keras model")
    hwc = tuple(shape[1:]) if meta.layout == "NHWC" else (shape[2], shape[3], shape[1])
    if any(a is not None and b is not None and a != b for a, b in zip(hwc, expected)):
        shown = ", ".join("?" if d is None else str(d) for d in hwc)
        raise InputError(f"{runner.path}: artifact input is [N, {shown}] ({meta.layout}); the Keras "
                         f"model takes [N, {', '.join(map(str, expected))}]")


def check_artifact_inputs(runner, shapes: dict) -> None:
    """One InputError naming the input unless `runner` takes the inputs of `shapes` by name,
    each of the same sample shape (free dimensions accepted)."""
    names = runner.input_names()
    missing = [name for name in shapes if name not in names]
    extra = [name for name in names if name not in shapes]
    if missing or extra:
        raise InputError(f"{runner.path}: artifact inputs {', '.join(names)}; the Keras model's "
                         f"inputs are {', '.join(shapes)} (missing: {', '.join(missing) or '-'}, "
                         f"unknown: {', '.join(extra) or '-'})")
    for name, info in zip(names, runner.metadata().inputs):
        got, want = tuple(info.shape[1:]), shapes[name]
        if len(got) != len(want) or any(a is not None and a != b for a, b in zip(got, want)):
            raise InputError(f"{runner.path}: artifact input {name} is {[None, *got]}; the Keras "
                             f"model takes [N, {', '.join(map(str, want))}]")


def feed_inputs(kind, samples: int, seed: int, shapes: dict) -> tuple:
    """`(NamedInputs, labels, names, kind, composition)` of a model with several inputs (see
    the module docstring), what `parity.inputs.InputSet` holds."""
    from edgetrunc.runtime.feeds import NamedInputs

    kind = str(kind)
    if kind.lower().endswith(".npz") and Path(kind).is_file():
        from edgetrunc.runtime.recorded import load_named_inputs

        x, labels, names = load_named_inputs(kind, list(shapes),
                                             [(None, *shape) for shape in shapes.values()])
        return x, labels, names, kind, {"other": len(x)}
    if kind not in ("random", "mix"):
        what = "photos" if kind in PHOTO_KINDS else "a folder of images"
        raise InputError(f"inputs {kind}: the model has {len(shapes)} inputs "
                         f"({', '.join(shapes)}); {what} feed one image input; use --inputs "
                         "random or an .npz with one array per input name", param="inputs")
    arrays = {}
    for index, (name, shape) in enumerate(shapes.items()):
        rng = np.random.default_rng([seed, 0x9A41, index])
        arrays[name] = rng.integers(0, 256, size=(samples, *shape)).astype(np.float32)
    return (NamedInputs(arrays), np.full(samples, -1, np.int64),
            [f"random#{i}" for i in range(samples)], "random", {"random": samples})
