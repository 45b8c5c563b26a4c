"""Feeds of models with several inputs: `NamedInputs` and the one check of a feed (`check_feed`).

A model with one input takes a batch array, as always. A model with several inputs takes a
feed (learned from Polygraphy's data loader, which yields one `{input name: array}` per
iteration): a dict `{input name: array}`, a list of arrays in the model's input order, or
`NamedInputs`. `NamedInputs` keeps the arrays of every input in order and is sliced like one
array: `len(feed)` is the number of samples and `feed[a:b]` (or an index array) takes those
samples of every input, so batching code written for one array runs on it unchanged.
`check_feed` names the input that is missing, extra or of the wrong shape, in one line.
No TensorFlow.
"""

from __future__ import annotations

import numpy as np

from edgetrunc.errors import InputError


class NamedInputs:
    """Arrays `{input name: [N, ...]}` of one batch of samples, in the model's input order."""

    def __init__(self, arrays: dict):
        self.arrays = {str(name): np.asarray(value) for name, value in arrays.items()}
        counts = {len(value) if value.ndim else 0 for value in self.arrays.values()}
        if not self.arrays or len(counts) != 1:
            sizes = ", ".join(f"{name} {list(value.shape)}" for name, value in self.arrays.items())
            raise InputError(f"inputs: expected the same number of samples for every input; "
                             f"got {sizes or 'no input'}")

    @property
    def names(self) -> list:
        return list(self.arrays)

    def shapes(self) -> dict:
        """`{input name: [sample dimensions]}`."""
        return {name: list(value.shape[1:]) for name, value in self.arrays.items()}

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def __getitem__(self, key):
        if isinstance(key, str):
            return self.arrays[key]
        return NamedInputs({name: value[key] for name, value in self.arrays.items()})

    def astype(self, dtype, copy: bool = True) -> "NamedInputs":
        return NamedInputs({name: value.astype(dtype, copy=copy)
                            for name, value in self.arrays.items()})

    def __repr__(self) -> str:
        return f"NamedInputs({self.shapes()})"


def is_feed(batch) -> bool:
    """Whether `batch` is a feed of several named or ordered inputs rather than one array."""
    return isinstance(batch, (NamedInputs, dict, list, tuple))


def concatenate(parts: list):
    """One array (or `NamedInputs`) of the batches in `parts`."""
    if parts and isinstance(parts[0], NamedInputs):
        return NamedInputs({name: np.concatenate([p[name] for p in parts]) for name in parts[0].names})
    return np.concatenate(parts)


def sample_shapes(batch) -> dict | list:
    """The sample dimensions of a batch, for messages: a list, or `{input name: list}`."""
    return batch.shapes() if isinstance(batch, NamedInputs) else list(np.shape(batch)[1:])


def check_feed(where, batch, names: list, shapes: list) -> dict:
    """`{input name: float32 array}` in the order of `names`, from a dict, a list in that order
    or `NamedInputs`. A missing or extra name, a count that differs, or an array whose shape
    is not the input's (`shapes`: `[N, ...]` with None for free dimensions) is one InputError
    naming the input."""
    if isinstance(batch, NamedInputs):
        batch = batch.arrays
    if isinstance(batch, (list, tuple)):
        if len(batch) != len(names):
            raise InputError(f"{where}: expected {len(names)} inputs ({', '.join(names)}); "
                             f"got {len(batch)} arrays")
        batch = dict(zip(names, batch))
    if not isinstance(batch, dict):
        raise InputError(f"{where}: the model has {len(names)} inputs ({', '.join(names)}); "
                         "expected a dict {input name: array} or a list of arrays in that order")
    missing = [name for name in names if name not in batch]
    extra = [str(name) for name in batch if name not in names]
    if missing or extra:
        parts = ([f"missing input(s) {', '.join(missing)}"] if missing else []) + (
            [f"unknown input(s) {', '.join(extra)}"] if extra else [])
        raise InputError(f"{where}: {'; '.join(parts)}; the model's inputs are {', '.join(names)}")
    feed, count = {}, None
    for name, shape in zip(names, shapes):
        value = np.asarray(batch[name])
        if value.dtype.kind not in "biuf":
            raise InputError(f"{where}: input {name} holds {value.dtype}; expected numbers")
        if value.ndim != len(shape) or any(
                want is not None and want != got for want, got in zip(shape[1:], value.shape[1:])):
            shown = ", ".join(["N"] + ["?" if d is None else str(d) for d in shape[1:]])
            raise InputError(f"{where}: input {name} has shape {list(value.shape)}; expected "
                             f"[{shown}]")
        if count is not None and len(value) != count:
            raise InputError(f"{where}: input {name} has {len(value)} samples; the other inputs "
                             f"have {count}")
        count = len(value)
        feed[name] = value.astype(np.float32, copy=False)
    return feed
