"""`convert`: every artifact of a `.keras` model, checked, with `manifest.json`.

Order of work: validate every option and the output folder first (nothing is written for
bad input), load the model, export each artifact, embed the metadata (thresholds, source
hash, edgetrunc version), write it to a temporary file beside its destination, read it
back and run the inspector, measure int8 decision agreement and accuracy against Keras on
held-out pairs, and only then move all artifacts and the manifest into place. An existing
output is replaced only with `force=True`; the source is never overwritten.
"""

from __future__ import annotations

import hashlib
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from edgetrunc import _log
from edgetrunc._version import __version__
from edgetrunc.keras.load import load_model
from edgetrunc._io import new_file_mode, require_writable_dir, sha256_file, write_json_atomic
from edgetrunc.errors import InputError
from edgetrunc.metrics import stego_probability
from edgetrunc.export._onnx import ONNX_PRECISIONS, OPSETS
from edgetrunc.keras.precision import float32_model
from edgetrunc.export._tflite import INT8_MODES, TFLITE_PRECISIONS
from edgetrunc.migrate import require_keras_file

MANIFEST = "manifest.json"
CALIBRATION_PAIRS = 64
CALIBRATION_STRIDE = 128
EVALUATION_STRIDE = 64
AGREEMENT_TARGET = 0.98
ACCURACY_DELTA_TARGET = 0.01


def _check_precisions(kind, values, allowed):
    values = tuple(values or ())
    bad = [v for v in values if v not in allowed]
    if bad:
        raise InputError(f"--{kind}: unknown precision {', '.join(map(str, bad))}; expected any of "
                         f"{', '.join(allowed)}")
    return tuple(dict.fromkeys(values))


def _check_out_dir(out_dir: Path) -> None:
    """Raise InputError unless `out_dir` exists and is writable, or can be created."""
    probe = out_dir
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise InputError(f"{probe}: exists and is not a folder; expected an output folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"{out_dir}: output folder is not writable")
    require_writable_dir(out_dir)  # created now, so a folder that cannot be made fails first


KERAS_SUFFIXES = (".keras", ".h5")  # a .h5 with lambdas or unknown classes names `edgetrunc migrate`


def load_keras_model(path):
    """Load a `.keras` file (safe mode, edgetrunc layers registered) or raise InputError."""
    return load_model(path, safe_mode=True, suffixes=KERAS_SUFFIXES)


def _model_image_shape(model):
    if len(model.inputs) != 1:
        raise InputError(f"{model.name}: {len(model.inputs)} inputs; expected one image input")
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4:
        raise InputError(f"{model.name}: input shape {shape}; expected [N, H, W, C]")
    return shape[1:]


def _fit_to_model(x, shape):
    """Crop 256x256x1 tiles to the model's input size (for models on smaller inputs)."""
    h, w, c = shape
    h = h or x.shape[1]
    w = w or x.shape[2]
    if h > x.shape[1] or w > x.shape[2] or (c or 1) != x.shape[3]:
        raise InputError(f"calibration: tiles {list(x.shape[1:])} do not fit the model input "
                         f"{[h, w, c]}")
    return np.ascontiguousarray(x[:, :h, :w, :])


def calibration_pairs(calibration, shape, split="train", stride=CALIBRATION_STRIDE,
                      max_pairs=CALIBRATION_PAIRS, seed=0):
    """Cover/stego tiles for calibration ("embedded" or a folder of covers)."""
    from edgetrunc.data.dataset import load_pairs

    covers = "embedded" if calibration in (None, "embedded") else calibration
    if covers != "embedded" and not Path(covers).is_dir():
        raise InputError(f"--calibration {covers}: expected 'embedded' or a folder of images")
    try:
        pairs = load_pairs(covers=covers, split=split, payload=0.4, seed=seed,
                           max_pairs=max_pairs, stride=stride)
    except InputError:
        if split == "all":
            raise
        pairs = load_pairs(covers=covers, split="all", payload=0.4, seed=seed,
                           max_pairs=max_pairs, stride=stride)
    pairs.x = _fit_to_model(pairs.x, shape)
    return pairs


def quality_against_keras(keras_probability, artifact_probability, labels) -> dict:
    """Decision agreement, accuracy delta and probability MAE of an artifact vs Keras."""
    ref = np.asarray(keras_probability, np.float64)
    out = np.asarray(artifact_probability, np.float64)
    y = np.asarray(labels)
    acc_keras = float(np.mean((ref >= 0.5) == y))
    acc = float(np.mean((out >= 0.5) == y))
    agreement = float(np.mean((ref >= 0.5) == (out >= 0.5)))
    delta = acc - acc_keras
    return {
        "samples": int(len(y)),
        "decision_agreement": round(agreement, 4),
        "accuracy_keras": round(acc_keras, 4),
        "accuracy": round(acc, 4),
        "accuracy_delta": round(delta, 4),
        "probability_mae": round(float(np.mean(np.abs(ref - out))), 5),
        "keras_probability_std": round(float(np.std(ref)), 4),
        "passed": bool(agreement >= AGREEMENT_TARGET and abs(delta) <= ACCURACY_DELTA_TARGET + 1e-9),
    }


def _artifact_probability(fmt, path, x, nchw, batch=16):
    if fmt == "tflite":
        from edgetrunc.runtime.tflite_runner import TFLiteRunner

        runner = TFLiteRunner(str(path))
    else:
        from edgetrunc.runtime.onnx_runner import ONNXRunner

        runner = ONNXRunner(str(path))
    from edgetrunc.runtime.scoring import runner_activation

    activation, parts = runner_activation(runner), []
    for i in range(0, len(x), batch):
        outputs = runner.infer(x[i:i + batch])
        parts.append(stego_probability(next(iter(outputs.values())), activation))
    return np.concatenate(parts)


def _versions():
    from importlib import metadata

    found = {"edgetrunc": __version__, "python": platform.python_version()}
    for name in ("tensorflow", "tensorflow-cpu", "keras", "tf2onnx", "onnx", "onnxruntime",
                 "ai-edge-litert", "numpy"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _plan(stem, tflite, onnx):
    return ([("tflite", p, f"{stem}_{p}.tflite") for p in tflite]
            + [("onnx", p, f"{stem}_{p}.onnx") for p in onnx])


def convert(model_path, out_dir=None, tflite=TFLITE_PRECISIONS, onnx=ONNX_PRECISIONS, opset=17,
            nchw=False, calibration="embedded", int8_io=False, force=False,
            int8_mode="truncation-aware", evaluate=True, timings=None,
            pack_front_end=False) -> dict:
    """Convert `model_path` to every requested artifact in `out_dir` and write the manifest.

    Returns the manifest dict (also written to `out_dir/manifest.json`). If `timings` is a
    dict, it receives the conversion wall time of each artifact in seconds.
    `pack_front_end=True` also packs the one-channel convolutions of the fp32/fp16 TFLite
    artifacts (the int8 one always packs its float front end).
    """
    tflite = _check_precisions("tflite", tflite, TFLITE_PRECISIONS)
    onnx = _check_precisions("onnx", onnx, ONNX_PRECISIONS)
    if not tflite and not onnx:
        raise InputError("nothing to convert: give at least one --tflite or --onnx precision")
    if not isinstance(opset, (int, np.integer)) or int(opset) not in OPSETS:
        raise InputError(f"--opset {opset}: expected an ONNX opset from {OPSETS[0]} to {OPSETS[-1]}")
    if "int8" in onnx:
        from edgetrunc.export._onnx import _check_opset

        try:
            _check_opset(int(opset), "int8")
        except InputError as exc:
            raise InputError(f"--{exc}") from None
    if int8_mode not in INT8_MODES:
        raise InputError(f"--int8-mode {int8_mode}: expected one of {', '.join(INT8_MODES)}")
    if calibration not in (None, "embedded") and not Path(calibration).is_dir():
        raise InputError(f"--calibration {calibration}: expected 'embedded' or a folder of images")
    source = Path(model_path)
    require_keras_file(source, KERAS_SUFFIXES)  # a SavedModel folder names `edgetrunc migrate`
    out_dir = Path(out_dir) if out_dir is not None else (source.parent if str(source.parent) else Path("."))
    _check_out_dir(out_dir)
    plan = _plan(source.stem, tflite, onnx)
    targets = [out_dir / name for _, _, name in plan] + [out_dir / MANIFEST]
    for target in targets:
        if target.exists() and target.resolve() == source.resolve():
            raise InputError(f"{target}: refusing to overwrite the source model")
        if target.is_dir():
            raise InputError(f"{target}: is a folder; expected to write a file there")
    existing = [str(t) for t in targets if t.exists()]
    if existing and not force:
        raise InputError(f"{existing[0]}: exists; use --force to replace the outputs "
                         f"({len(existing)} file(s) exist)")

    model = float32_model(load_keras_model(source))
    source_sha = sha256_file(source)
    return _convert_model(model, source, source_sha, out_dir, plan, opset, nchw, calibration,
                          int8_io, int8_mode, evaluate, timings, pack_front_end)


def _convert_model(model, source, source_sha, out_dir, plan, opset, nchw, calibration, int8_io,
                   int8_mode, evaluate, timings, pack_front_end=False):
    from edgetrunc.export import _onnx as onnx_export
    from edgetrunc.export import _tflite as tflite_export
    from edgetrunc.export._truncations import find_truncations

    shape = _model_image_shape(model)
    truncations = find_truncations(model)
    needs_int8 = any(p == "int8" for _, p, _ in plan)
    calib = calibration_pairs(calibration, shape) if needs_int8 else None
    held_out = None
    output_shape = tuple(model.outputs[0].shape) if len(model.outputs) == 1 else ()
    if needs_int8 and evaluate and not (len(output_shape) == 2 and output_shape[1] in (1, 2)):
        _log.info(f"convert: {source.name} is not a detector ([N, 2] or [N, 1] output): "
                  "int8 decisions are not compared with Keras")
        evaluate = False
    if needs_int8 and evaluate:
        held_out = calibration_pairs(calibration, shape, split="test", stride=EVALUATION_STRIDE,
                                     max_pairs=None, seed=0)
        from edgetrunc.parity.keras_runner import output_activation

        keras_probability = stego_probability(model.predict(held_out.x, batch_size=16, verbose=0),
                                              output_activation(model))
    metadata = {"edgetrunc_version": __version__, "source_sha256": source_sha,
                "source": source.name, "truncations": truncations}
    out_dir.mkdir(parents=True, exist_ok=True)
    temporaries = {}
    artifacts = []
    try:
        for fmt, precision, name in plan:
            _log.info(f"convert: {name} ({fmt} {precision}) ...")
            started = time.perf_counter()
            if fmt == "tflite":
                content = tflite_export.export_tflite(
                    model, precision, calibration=None if calib is None else calib.x,
                    int8_io=int8_io, int8_mode=int8_mode,
                    pack_front_end=None if precision == "int8" else bool(pack_front_end))
                content = tflite_export.embed_tflite_metadata(
                    content, {**metadata, "format": fmt, "precision": precision})
            else:
                proto = onnx_export.export_onnx(
                    model, precision, opset=int(opset), nchw=nchw,
                    calibration=None if calib is None else calib.x, int8_mode=int8_mode)
                onnx_export.set_onnx_metadata(proto, {
                    "edgetrunc.version": __version__, "edgetrunc.source_sha256": source_sha,
                    "edgetrunc.source": source.name, "edgetrunc.truncations": truncations,
                    "edgetrunc.precision": precision})
                content = proto.SerializeToString()
            elapsed = time.perf_counter() - started
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=out_dir)
            with os.fdopen(fd, "wb") as fh:
                fh.write(content)
            temporaries[name] = Path(tmp)
            if fmt == "tflite":
                report = tflite_export.inspect_tflite(tmp, truncations, precision)
            else:
                report = onnx_export.inspect_onnx(tmp, truncations, precision)
            entry = {
                "path": name, "format": fmt, "precision": precision,
                "sha256": hashlib.sha256(content).hexdigest(), "bytes": len(content),
                "ops": report["ops"], "truncations": report["truncations"],
                "inputs": report["inputs"], "outputs": report["outputs"],
                "quantization": _quantization_entry(fmt, precision, int8_io, int8_mode, calib),
            }
            if precision == "int8" and held_out is not None:
                from edgetrunc.export._tflite import quiet_converter

                with quiet_converter():  # the interpreter's "Created XNNPACK delegate" line
                    probability = _artifact_probability(fmt, tmp, held_out.x, nchw)
                quality = quality_against_keras(keras_probability, probability, held_out.y)
                quality["data"] = (f"held-out pairs ({held_out.split} split, stride "
                                   f"{EVALUATION_STRIDE}, payload {held_out.payload})")
                entry["quantization"]["evaluation"] = quality
                if not quality["passed"]:
                    _log.warn(f"{name}: decision agreement {quality['decision_agreement']:.3f}, "
                              f"accuracy delta {quality['accuracy_delta']:+.3f} "
                              f"(targets >= {AGREEMENT_TARGET}, |delta| <= {ACCURACY_DELTA_TARGET})")
            if timings is not None:
                timings[name] = elapsed
            artifacts.append(entry)
            _log.info(f"convert: {name} done in {elapsed:.1f} s, {len(content) / 1024:.0f} KiB")
        manifest = {
            "source": {"path": os.path.relpath(source.resolve(), out_dir.resolve()),
                       "sha256": source_sha},
            "artifacts": artifacts,
            "versions": _versions(),
        }
        for name, tmp in temporaries.items():
            os.chmod(tmp, new_file_mode())
            os.replace(tmp, out_dir / name)
        write_json_atomic(out_dir / MANIFEST, manifest, protect=(source,))
        return manifest
    finally:
        for tmp in temporaries.values():
            if tmp.exists():
                tmp.unlink()


def _quantization_entry(fmt, precision, int8_io, int8_mode, calib):
    if precision == "fp32":
        return None
    if precision == "fp16":
        return {"weights": "float16", "activations": "float32"}
    entry = {
        "weights": "int8 (per channel)",
        "activations": "int8",
        "mode": int8_mode,
        "float_before_first_truncation": int8_mode == "truncation-aware",
        "truncation": ("range of each truncation's producer set to [lower, upper]; int8 "
                       "saturation performs the clip" if fmt == "tflite" else
                       "Clip input and output quantized with range [lower, upper]")
                      if int8_mode == "truncation-aware" else "calibrated ranges",
        "io": ("int8" if int8_io else "float32") if fmt == "tflite" else "float32",
        "calibration": {"samples": int(len(calib.x)), "split": calib.split,
                        "photos": list(calib.photos), "payload": calib.payload},
    }
    if int8_mode == "truncation-aware":
        if fmt == "tflite":
            from edgetrunc.export._tflite import INT8_FLOAT_TYPES, INT8_KEEP_FLOAT

            entry["float_op_types"] = list(INT8_FLOAT_TYPES)
            entry["float_inside_xnnpack"] = list(INT8_KEEP_FLOAT)
            entry["front_end"] = "float, one-channel convolutions packed 4 pixels per channel"
        else:
            from edgetrunc.export._onnx import ONNX_INT8_TYPES

            entry["int8_op_types"] = list(ONNX_INT8_TYPES)
    if fmt == "onnx":
        entry["format"] = "QDQ"
    return entry
