"""The sample inputs of a parity run: held-out covers, their stego versions, random images, a folder.

`parity_inputs(kind, samples, seed, shape)` returns an `InputSet`: float32 NHWC pixel values
0..255, labels (0 cover, 1 stego, -1 unknown) and a name per sample. `mix` (the default) is a
third held-out covers, a third their stego versions (LSB matching, or the `stego` embedding) and a third uniform random
images; `covers` / `stego` are the held-out test split of the embedded photos; `random` is
uniform 0..255, seeded (held-out tiles are non-overlapping unless the test photos hold
too few, then taken at a stride of a quarter tile); a folder gives the first tile of each
image, or every tile when there are fewer images than samples; an `.npz` file gives the
inputs saved by an earlier run (`--save-inputs`), all of them. Photos are cut at the model's
geometry (`shape` (S, S, C): S-pixel tiles, luma for C = 1, RGB for C = 3); a model whose
input is not such an image takes only `random` and `.npz` inputs. No TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgetrunc.errors import InputError
from edgetrunc.runtime.feeds import sample_shapes

KINDS = ("mix", "random", "covers", "stego")


def protected_inputs(model, artifacts, inputs=None) -> list:
    """Every input of a parity run that an output must never replace: the Keras model (when a
    path), every artifact and the `--inputs` file or folder (the built-in kinds are none)."""
    paths = [model] if isinstance(model, (str, Path)) else []
    paths += [str(a) for a in artifacts]
    if inputs is not None and str(inputs) not in KINDS and str(inputs).strip():
        paths.append(str(inputs))
    return paths


PARITY_PAYLOAD = 0.4
HELD_OUT_STRIDE_DIVISORS = (1, 4)  # stride tile / d: whole tiles, then quarter tiles if too few


@dataclass
class InputSet:
    x: np.ndarray
    labels: np.ndarray
    names: list
    kind: str
    seed: int
    composition: dict = field(default_factory=dict)
    embedding: str | None = None  # how the stego samples were made (None: no stego sample)

    @property
    def labelled(self) -> int:
        return int((self.labels >= 0).sum())

    def describe(self) -> dict:
        return {"kind": self.kind, "seed": self.seed, "samples": int(len(self.x)),
                "labelled": self.labelled, "composition": dict(self.composition),
                "shape": sample_shapes(self.x),
                **({"embedding": self.embedding} if self.embedding else {})}


def _random_images(count: int, seed: int, shape) -> np.ndarray:
    rng = np.random.default_rng([seed, 0x9A41])
    return rng.integers(0, 256, size=(count, *shape)).astype(np.float32)


def _held_out_pairs(pairs: int, seed: int, shape, stego=None):
    from edgetrunc.data import load_pairs

    tile, channels = shape[0], shape[2]
    pair_set = None
    for divisor in HELD_OUT_STRIDE_DIVISORS:
        try:
            pair_set = load_pairs(covers="embedded", split="test", payload=PARITY_PAYLOAD,
                                  seed=seed, max_pairs=max(1, pairs), stride=max(1, tile // divisor),
                                  tile=tile, channels=channels, stego=stego)
        except InputError as exc:
            raise InputError(f"inputs: {exc}; use inputs=random, a folder of images of at "
                             f"least {tile}x{tile} or an .npz of inputs", param="inputs") from None
        if pair_set.n_pairs >= pairs:
            break
    x = pair_set.x
    names = [f"{src}@{pos[0]},{pos[1]}:{'stego' if label else 'cover'}"
             for src, pos, label in zip(pair_set.sources, pair_set.positions, pair_set.y)]
    return x, pair_set.y.astype(np.int64), names


def _folder_inputs(folder: Path, samples: int, shape):
    from edgetrunc.data import tile_image, to_model_input
    from edgetrunc.data.images import image_files, iter_folder_images, no_usable_image, report_skipped

    files, skipped = image_files(folder, "folder of images")  # unusable files: skipped, warned
    tiles_per_file = 1 if len(files) >= samples else None
    batches, names = [], []
    for path, pixels in iter_folder_images(files, skipped, min_size=shape[0], channels=shape[2]):
        tiles, positions = tile_image(pixels, size=shape[0])
        if tiles_per_file:
            tiles, positions = tiles[:1], positions[:1]
        batches.append(to_model_input(tiles))
        names += [f"{path.name}@{y},{x}" for y, x in positions]
        if len(names) >= samples:
            break
    report_skipped(folder, skipped)
    if not batches:
        raise no_usable_image(folder, skipped)
    x = np.concatenate(batches)[:samples]
    return x, np.full(len(x), -1, np.int64), names[:samples]


def _require_image_shape(kind, shape) -> None:
    """Photos (held-out or a folder) need a model input that is an image."""
    from edgetrunc.data.geometry import geometry_of_shape

    if kind != "random" and geometry_of_shape((None, *shape)) is None:
        raise InputError(f"inputs {kind}: the model input {[None, *shape]} is not an image "
                         "[N, S, S, 1 or 3]; use inputs=random or an .npz of inputs", param="inputs")


def parity_inputs(kind: str = "mix", samples: int = 64, seed: int = 0,
                  shape=(256, 256, 1), stego=None) -> InputSet:
    """Build `samples` inputs of `shape` (H, W, C) for a parity run; see the module docstring.
    A model with several inputs gives `{input name: shape}` (`parity.input_feeds`).
    `stego` makes the stego samples: None (LSB matching), an embedding name or
    `edgetrunc.data.stego_cache.StegoSettings`."""
    samples = int(samples)
    if samples < 1:
        raise InputError(f"samples: expected a positive integer; got {samples}", param="samples")
    if isinstance(shape, dict):  # several inputs: `{input name: shape}`
        from edgetrunc.parity.input_feeds import feed_inputs

        x, labels, names, kind, composition = feed_inputs(kind, samples, seed, shape)
        return InputSet(x, labels, names, kind, seed, composition)
    shape = tuple(int(d) for d in shape)
    if not str(kind).strip():
        raise InputError(f"inputs {kind!r}: empty; expected one of {', '.join(KINDS)}, a folder "
                         "of images or an inputs .npz", param="inputs")
    if kind not in KINDS and str(kind).lower().endswith(".npz") and Path(kind).is_file():
        from edgetrunc.runtime.recorded import load_inputs

        x, labels, names = load_inputs(kind)
        if tuple(x.shape[1:]) != shape:
            raise InputError(f"inputs {kind}: inputs are {list(x.shape[1:])}; the model expects "
                             f"{list(shape)}", param="inputs")
        composition = {"covers": int((labels == 0).sum()), "stego": int((labels == 1).sum()),
                       "other": int((labels < 0).sum())}
        return InputSet(x, labels, names, str(kind), seed, composition)
    _require_image_shape(kind, shape)
    if kind not in KINDS:
        folder = Path(kind)
        if not folder.exists():
            raise InputError(f"inputs {kind}: expected one of {', '.join(KINDS)} or a folder of images", param="inputs")
        if not folder.is_dir():
            raise InputError(f"inputs {kind}: not a folder; expected one of {', '.join(KINDS)} "
                             "or a folder of images", param="inputs")
        x, labels, names = _folder_inputs(folder, samples, shape)
        return InputSet(x, labels, names, str(folder), seed, {"folder": len(x)})
    if kind == "random":
        x = _random_images(samples, seed, shape)
        return InputSet(x, np.full(samples, -1, np.int64), [f"random#{i}" for i in range(samples)],
                        kind, seed, {"random": samples})
    if kind in ("covers", "stego"):
        x, y, names = _held_out_pairs(samples, seed, shape, stego)
        keep = np.flatnonzero(y == (0 if kind == "covers" else 1))[:samples]
        return InputSet(x[keep], y[keep], [names[i] for i in keep], kind, seed, {kind: len(keep)},
                        _embedding_name(stego) if kind == "stego" else None)
    n_random = samples // 3
    n_pairs = (samples - n_random) // 2
    n_random = samples - 2 * n_pairs
    parts_x, parts_y, parts_names = [], [], []
    composition = {"covers": 0, "stego": 0, "random": 0}
    if n_pairs:
        x, y, names = _held_out_pairs(n_pairs, seed, shape, stego)
        parts_x.append(x)
        parts_y.append(y)
        parts_names += names
        composition["covers"] = int((y == 0).sum())
        composition["stego"] = int((y == 1).sum())
    n_random = samples - sum(len(p) for p in parts_x)
    if n_random:
        parts_x.append(_random_images(n_random, seed, shape))
        parts_y.append(np.full(n_random, -1, np.int64))
        parts_names += [f"random#{i}" for i in range(n_random)]
        composition["random"] = n_random
    return InputSet(np.concatenate(parts_x), np.concatenate(parts_y), parts_names, kind, seed,
                    composition, _embedding_name(stego) if composition["stego"] else None)


def _embedding_name(stego) -> str:
    from edgetrunc.data.stego_cache import as_settings

    return as_settings(stego).embedding
