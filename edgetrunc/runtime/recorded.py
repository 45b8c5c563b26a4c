"""Parity on the device: inputs and outputs carried as `.npz` files (no TensorFlow).

The parity checker runs every artifact on the machine that has Keras; the device that will
ship the model may have other kernels (ARM instead of x86 XNNPACK paths, another ONNX
Runtime build). So the check can be split, as Polygraphy's `--save-inputs` /
`--load-outputs` split it:

1. `edgetrunc parity MODEL.keras ARTIFACT --save-inputs inputs.npz` writes the exact inputs
   (`x` float32 NHWC pixels, `labels`, `names`);
2. on the device, `edgetrunc run ARTIFACT inputs.npz --out outputs.npz` (`record_outputs`)
   runs the artifact with this TensorFlow-free runtime and records every output, with the
   artifact's hash, precision and the device's platform;
3. back on the workstation, `edgetrunc parity MODEL.keras outputs.npz --inputs inputs.npz`
   compares Keras with the recorded outputs (`RecordedRunner`), matching them to the inputs
   row by row through a hash of each input.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
import zipfile
from pathlib import Path

import numpy as np

from edgetrunc._io import atomic_path, check_run_paths, open_regular, require_file, sha256_file
from edgetrunc._text import printable
from edgetrunc.errors import InputError
from edgetrunc.runtime._base import BaseRunner, RunnerMetadata, TensorInfo
from edgetrunc.runtime.feeds import NamedInputs, check_feed

_OUTPUT_PREFIX = "output:"
_TENSOR_PREFIX = "tensor:"
MAX_ELEMENTS = 2**31  # per array of an .npz, checked from its header before reading
MAX_NPZ_BYTES = 512 * 2**20  # all arrays of an .npz together, uncompressed, checked likewise


def _row_hashes(x) -> np.ndarray:
    """One hash per input; for several inputs (`NamedInputs`), of every input's row in order."""
    arrays = list(x.arrays.values()) if isinstance(x, NamedInputs) else [x]
    arrays = [np.ascontiguousarray(a, dtype=np.float32) for a in arrays]
    return np.array([hashlib.sha1(b"".join(a[i].tobytes() for a in arrays)).hexdigest()
                     for i in range(len(arrays[0]))])


def _check_member(path, archive, info) -> None:
    """Refuse an `.npz` member before numpy allocates it: not an array, an array of Python
    objects or text of unbounded size, or a declared shape larger than the member's data."""
    name = printable(info.filename)
    if not info.filename.endswith(".npy"):
        raise InputError(f"{path}: member {name!r} is not a numpy array; expected a .npz "
                         "written by edgetrunc")
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    with archive.open(info) as stream:
        version = np.lib.format.read_magic(stream)
        if version not in readers:
            raise InputError(f"{path}: member {name!r} has .npy format {version}; expected 1.0 or 2.0")
        shape, _, dtype = readers[version](stream)
        header = stream.tell()
    if dtype.hasobject or dtype.kind not in "biufUS":
        raise InputError(f"{path}: member {name!r} holds {dtype}; expected numbers or text")
    count = 1
    for dim in shape:
        count *= int(dim)
    if count > MAX_ELEMENTS or count * dtype.itemsize > max(0, info.file_size - header):
        raise InputError(f"{path}: member {name!r} declares shape {list(shape)} ({dtype}), more "
                         "than the file holds or the limit of "
                         f"{MAX_ELEMENTS} elements per array")
    return count * dtype.itemsize


def _read_npz(path, what: str) -> dict:
    path = require_file(path, f"{what} (.npz)")
    try:
        with open_regular(path, f"{what} (.npz)") as handle:
            if not zipfile.is_zipfile(handle):
                raise InputError(f"{path}: not an .npz file; expected {what} written by edgetrunc")
            with zipfile.ZipFile(handle) as archive:
                total = sum(_check_member(path, archive, info) for info in archive.infolist())
            if total > MAX_NPZ_BYTES:
                raise InputError(f"{path}: its arrays hold {total} bytes uncompressed, over the "
                                 f"{MAX_NPZ_BYTES} bytes (512 MiB) an .npz of {what} can have")
            handle.seek(0)
            with np.load(handle, allow_pickle=False) as data:
                return {key: data[key] for key in data.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError, NotImplementedError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{path}: unreadable .npz ({printable(str(exc).strip())[:160] or type(exc).__name__})") from None


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def save_inputs(path, x, labels=None, names=None, protect=()) -> None:
    """Write parity inputs (`x` `[N, H, W, C]` float32, labels, names) as `.npz`, atomically;
    the inputs of a model with several inputs (`NamedInputs`) one array per input name."""
    arrays = ({key: np.ascontiguousarray(value, dtype=np.float32) for key, value in x.arrays.items()}
              if isinstance(x, NamedInputs) else {"x": np.ascontiguousarray(x, dtype=np.float32)})
    labels = np.full(len(x), -1, np.int64) if labels is None else np.asarray(labels, np.int64)
    names = [f"input#{i}" for i in range(len(x))] if names is None else [str(n) for n in names]
    with atomic_path(path, protect) as tmp:
        with open(tmp, "wb") as stream:
            np.savez_compressed(stream, labels=labels, names=np.array(names), **arrays)


_NOT_INPUTS = ("labels", "names")


def load_named_inputs(path, inputs: list, shapes: list) -> tuple:
    """`(NamedInputs, labels, names)` from an inputs `.npz` keyed by input name (as `save_inputs`
    writes them for a model with several inputs): every name of `inputs` present, no other
    array beside `labels` and `names`, each of its input's shape (`shapes`, `[N, ...]`, None
    for a free dimension); one InputError naming the input otherwise."""
    data = _read_npz(path, "inputs")
    arrays = {key: value for key, value in data.items() if key not in _NOT_INPUTS}
    feed = check_feed(path, arrays, list(inputs), list(shapes))
    for name, value in feed.items():
        if not len(value) or not np.isfinite(value).all():
            raise InputError(f"{path}: input {name} is empty or holds NaN or infinite values; "
                             "expected finite numbers")
    x = NamedInputs(feed)
    labels, names = _labels_and_names(path, data, len(x))
    return x, labels, names


def load_inputs(path) -> tuple:
    """`(x float32 [N, H, W, C], labels, names)` from an inputs `.npz` (`[N, ...]` for a model
    whose input is not an image); InputError if unusable."""
    data = _read_npz(path, "inputs")
    if "x" not in data:
        raise InputError(f"{path}: no array 'x' in the file; expected inputs written by "
                         "edgetrunc parity --save-inputs")
    x = data["x"]
    if x.ndim < 2 or x.dtype.kind not in "fiu" or not len(x):
        raise InputError(f"{path}: 'x' is {x.dtype} {list(x.shape)}; expected a float array "
                         "[N, H, W, C] of pixel values (or [N, ...] of the model's input)")
    x = x.astype(np.float32, copy=False)
    bad = int(np.size(x) - np.isfinite(x).sum())
    if bad:
        raise InputError(f"{path}: 'x' holds {bad} NaN or infinite value(s); expected pixel values")
    labels, names = _labels_and_names(path, data, len(x))
    return x, labels, names


def _labels_and_names(path, data: dict, count: int) -> tuple:
    """The `labels` (0 cover, 1 stego, -1 unknown) and `names` of `count` saved inputs."""
    labels = data.get("labels", np.full(count, -1, np.int64)).reshape(-1)
    if labels.dtype.kind not in "biuf" or not np.isfinite(labels.astype(np.float64)).all():
        raise InputError(f"{path}: 'labels' is {labels.dtype}; expected integer labels "
                         "(0 cover, 1 stego, -1 unknown)")
    values = labels.astype(np.float64)
    if len(labels) and (np.isin(values, (-1, 0, 1), invert=True).any()):
        odd = values[np.isin(values, (-1, 0, 1), invert=True)][0]
        raise InputError(f"{path}: 'labels' holds {odd:g}; expected 0 (cover), 1 (stego) or "
                         "-1 (unknown) for each input")
    labels = labels.astype(np.int64)
    names = [_text(n) for n in data.get("names", np.array([f"input#{i}" for i in range(count)])).reshape(-1)]
    if len(labels) != count or len(names) != count:
        raise InputError(f"{path}: {count} inputs but {len(labels)} labels and {len(names)} names")
    return labels, names


def _check_rank(inputs_path, x, meta) -> None:
    """Inputs whose rank is not the artifact's input rank name the inputs file."""
    if meta.inputs and len(meta.inputs[0].shape) != x.ndim:
        shown = [d if d else None for d in meta.inputs[0].shape]
        raise InputError(f"{inputs_path}: 'x' is {list(x.shape)}; the artifact's input is "
                         f"{shown} (rank {len(shown)})")


def _record_tensors(artifact, x: np.ndarray, count: int, threads) -> tuple:
    """`(arrays, tensors)`: every intermediate tensor of the artifact on the first `count`
    inputs (`tensor:I` arrays, float32, int8 values dequantized) and their descriptions
    (`name`, `order`, `scale`, `output_index`). The runner keeps every tensor (TFLite built-in
    kernels, ONNX Runtime on a copy exposing every node output: needs the onnx package)."""
    from edgetrunc.runtime._open import open_runner
    from edgetrunc.runtime.intermediates import intermediate_threads

    runner = open_runner(artifact, threads=intermediate_threads(threads), preserve_all_tensors=True)
    values, tensors = {}, {}
    for start in range(0, min(count, len(x))):
        runner.infer(x[start:start + 1])
        for tensor in runner.intermediate_tensors():
            value = tensor.read()
            if value is None or value.dtype.kind not in "fiu":
                continue
            values.setdefault(tensor.name, []).append(np.asarray(value, np.float32))
            tensors.setdefault(tensor.name, {"name": tensor.name, "order": int(tensor.order),
                                             "scale": tensor.scale,
                                             "output_index": tensor.output_index})
    arrays, described = {}, []
    for i, (name, parts) in enumerate(values.items()):
        if len({p.shape for p in parts}) == 1:
            arrays[f"{_TENSOR_PREFIX}{i}"] = np.concatenate(parts) if parts[0].ndim else np.stack(parts)
            described.append({**tensors[name], "key": f"{_TENSOR_PREFIX}{i}"})
    return arrays, described


def record_outputs(artifact, inputs_path, out_path, threads: int | None = None,
                   batch_size: int = 16, intermediates: int = 0) -> dict:
    """Run `artifact` on the inputs of `inputs_path` and write its outputs to `out_path` (`.npz`).

    `intermediates` > 0 also records every intermediate tensor of the first that many inputs
    (`tensors` in the metadata), for a layer-by-layer comparison of two recordings.
    Returns the recording's metadata (also stored in the file under `meta`), with `where`:
    the architecture, CPU, runtime versions and emulator (`runtime.host.where_it_ran`).
    """
    from edgetrunc._version import __version__
    from edgetrunc.runtime._open import open_runner
    from edgetrunc.runtime.host import where_it_ran
    from edgetrunc.runtime.scoring import run_batched

    protect = (artifact, inputs_path)
    check_run_paths({"out": out_path}, {"artifact": artifact, "inputs": inputs_path})  # before the run
    runner = open_runner(artifact, threads=threads)
    meta = runner.metadata()
    if len(meta.inputs) > 1:
        x, _, _ = load_named_inputs(inputs_path, runner.input_names(),
                                    [info.shape for info in meta.inputs])
    else:
        x, _, _ = load_inputs(inputs_path)
        _check_rank(inputs_path, x, meta)
    where = where_it_ran()
    started = time.perf_counter()
    outputs = run_batched(runner, x, batch_size)
    seconds = time.perf_counter() - started
    record = {
        "artifact": Path(artifact).name, "artifact_sha256": sha256_file(artifact),
        "format": meta.format, "precision": meta.artifact_precision,
        "backend": meta.backend, "threads": runner.threads, "samples": int(len(x)),
        "output_activation": meta.output_activation,
        # an emulated run's speed says nothing about a device: not recorded
        "samples_per_second": (round(len(x) / seconds, 2) if seconds > 0 and not where["emulator"]
                               else None),
        "inputs": Path(inputs_path).name, "inputs_sha256": sha256_file(inputs_path),
        "platform": platform.platform(), "machine": platform.machine(),
        "python": platform.python_version(), "edgetrunc": __version__, "where": where,
        "input_names": runner.input_names(),
        "outputs": {name: list(value.shape) for name, value in outputs.items()},
    }
    arrays = {f"{_OUTPUT_PREFIX}{name}": value.astype(np.float32) for name, value in outputs.items()}
    if intermediates > 0:
        tensor_arrays, record["tensors"] = _record_tensors(artifact, x, intermediates, threads)
        record["tensor_samples"] = int(min(intermediates, len(x)))
        arrays.update(tensor_arrays)
    with atomic_path(out_path, protect=protect) as tmp:
        with open(tmp, "wb") as stream:
            np.savez_compressed(stream, meta=np.array(json.dumps(record)), rows=_row_hashes(x), **arrays)
    return record


class RecordedRunner(BaseRunner):
    """The outputs an artifact gave on another machine (`record_outputs`), replayed as a runner.

    `infer(batch)` returns the recorded outputs of the inputs in `batch`, found by a hash of
    each input; an input that was not recorded raises `InputError`.
    """

    format = "recorded"

    def _source_path(self, path) -> Path:
        return require_file(path, "recorded outputs (.npz)")

    def _load_impl(self):
        data = _read_npz(self.path, "recorded outputs")
        if "meta" not in data or "rows" not in data:
            raise InputError(f"{self.path}: no recording metadata; expected outputs written by "
                             "edgetrunc run")
        self.record = self._recording_meta(data["meta"])
        rows = data["rows"]
        if rows.ndim != 1 or rows.dtype.kind not in "US":
            raise InputError(f"{self.path}: 'rows' is {rows.dtype} {list(rows.shape)}; expected "
                             "one input hash per row, as written by edgetrunc run")
        self._outputs = {key[len(_OUTPUT_PREFIX):]: value for key, value in data.items()
                         if key.startswith(_OUTPUT_PREFIX)}
        if not self._outputs:
            raise InputError(f"{self.path}: no recorded outputs")
        for name, value in self._outputs.items():
            if value.dtype.kind not in "biuf" or value.ndim < 1 or len(value) != len(rows):
                raise InputError(f"{self.path}: output {printable(name)!r} is {value.dtype} "
                                 f"{list(value.shape)}; expected one numeric row per recorded "
                                 f"input ({len(rows)})")
            self._outputs[name] = value.astype(np.float32, copy=False)
        self._rows = {row: i for i, row in enumerate(rows.tolist())}
        self._meta = RunnerMetadata(
            path=str(self.path), format=str(self.record.get("format", "recorded")),
            precision=str(self.record.get("precision", "fp32")),
            inputs=[TensorInfo(name="input", shape=(None, None, None, None), dtype="float32")],
            outputs=[TensorInfo(name=n, shape=(None, *v.shape[1:]), dtype="float32")
                     for n, v in self._outputs.items()],
            layout="NHWC",
            backend=f"recorded: {self.record.get('backend')} on {self._where()}",
            threads=self.record.get("threads"), output_activation=self.record.get("output_activation"),
            embedded={"precision": self.record.get("precision")}, recorded=dict(self.record))

    def _where(self) -> str:
        from edgetrunc.runtime.host import where_label

        where = self.record.get("where")
        return where_label(where) if isinstance(where, dict) else str(self.record.get("platform"))

    def tensors(self) -> dict:
        """`{name: (description, float32 array [n, ...])}` of the recorded intermediate tensors
        (empty when the recording has none)."""
        described = self.record.get("tensors")
        if not isinstance(described, list):
            return {}
        data = _read_npz(self.path, "recorded outputs")
        found = {}
        for item in described:
            if isinstance(item, dict) and isinstance(data.get(item.get("key")), np.ndarray):
                found[str(item.get("name"))] = (item, data[item["key"]].astype(np.float32, copy=False))
        return found

    def _recording_meta(self, meta: np.ndarray) -> dict:
        """The recording's metadata: one JSON object stored as text."""
        record = None
        if meta.dtype.kind in "US" and meta.size == 1:
            try:
                record = json.loads(_text(meta.reshape(()).item()))
            except (ValueError, RecursionError):
                record = None
        if not isinstance(record, dict):
            raise InputError(f"{self.path}: unreadable recording metadata 'meta' ({meta.dtype} "
                             f"{list(meta.shape)}); expected outputs written by edgetrunc run")
        return record

    def row_hashes(self) -> list:
        """The hash of every recorded input (one per distinct input)."""
        self.metadata()
        return list(self._rows)

    def outputs_of(self, rows) -> dict:
        """The recorded outputs of the inputs whose hashes are `rows`, in that order."""
        self.metadata()
        missing = [row for row in rows if row not in self._rows]
        if missing:
            raise InputError(f"{self.path}: {len(missing)} of {len(rows)} inputs were not recorded; "
                             "compare recordings made on the same inputs")
        index = [self._rows[row] for row in rows]
        return {name: value[index] for name, value in self._outputs.items()}

    def infer(self, batch) -> dict:
        rows = _row_hashes(batch if isinstance(batch, NamedInputs) else np.asarray(batch))
        missing = [i for i, row in enumerate(rows) if row not in self._rows]
        if missing:
            raise InputError(f"{self.path}: {len(missing)} of {len(rows)} inputs were not recorded; "
                             "run parity with --inputs INPUTS.npz, the file given to edgetrunc run")
        index = [self._rows[row] for row in rows]
        return {name: value[index] for name, value in self._outputs.items()}
