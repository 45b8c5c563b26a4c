"""`convert`: every artifact of a `.keras` model, checked, with `manifest.json`.

Order of work: validate every option and the output folder first (nothing is written for
bad input), load the model, export each artifact, embed the metadata (thresholds, source
hash, edgetrunc version), stage it in the output folder (`export.commit.OutputSet`, under a
lock), read it back and run the inspector, measure int8 decision agreement and accuracy
against Keras on held-out pairs, and only then commit the set, the manifest last. An existing
output is replaced only with `force=True`; the source is never overwritten.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from edgetrunc import _log
from edgetrunc._io import resolve_path, sha256_file
from edgetrunc._log import quiet_converter
from edgetrunc._text import dumps_json
from edgetrunc._version import __version__
from edgetrunc.errors import InputError
from edgetrunc.export import calibration as calib_data
from edgetrunc.export import evaluation, manifest
from edgetrunc.export.commit import OutputSet
from edgetrunc.export.formats import export_format
from edgetrunc.export.prepared import prepare
from edgetrunc.export.onnx.exporter import DEFAULT_ONNX_PRECISIONS, ONNX_PRECISIONS, check_opset
from edgetrunc.export.speed import int8_speed
from edgetrunc.export.tflite.exporter import (DEFAULT_TFLITE_PRECISIONS, INT8_MODES,
                                             TFLITE_PRECISIONS)
from edgetrunc.export.tflite.passes import TARGETS
from edgetrunc.keras.load import load_keras_model, require_keras_file
from edgetrunc.legacy import lambda_layers
from edgetrunc.legacy.custom import custom_objects_scope, load_custom_objects
from edgetrunc.metrics import (MAX_ACCURACY_DELTA, MIN_DECISION_AGREEMENT, is_detector_shape,
                               nearly_constant)
from edgetrunc.runtime.metadata import artifact_metadata

KERAS_SUFFIXES = (".keras", ".h5")  # a .h5 with lambdas or unknown classes names `edgetrunc migrate`


def _check_precisions(kind, values, allowed):
    values = tuple(values or ())
    bad = [v for v in values if v not in allowed]
    if bad:
        raise InputError(f"{kind}: unknown precision {', '.join(map(str, bad))}; expected any of "
                         f"{', '.join(allowed)}", param=kind)
    return tuple(dict.fromkeys(values))


def _check_out_dir(out_dir: Path) -> None:
    """Raise InputError unless `out_dir` is a writable folder or can be made in one; nothing
    is created here (a refused run leaves no trace)."""
    resolve_path(out_dir, what="output folder")  # a symbolic link loop, named as one
    probe = out_dir
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"{probe}: exists and is not a folder; expected an output folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"{out_dir}: output folder is not writable")


def _check_options(tflite, onnx, opset, int8_mode, calibration, target="cpu"):
    if target not in TARGETS:
        raise InputError(f"target {target}: expected one of {', '.join(TARGETS)}", param="target")
    tflite = _check_precisions("tflite", tflite, TFLITE_PRECISIONS)
    onnx = _check_precisions("onnx", onnx, ONNX_PRECISIONS)
    if not tflite and not onnx:
        raise InputError("nothing to convert: give at least one precision, e.g. tflite=fp32 or onnx=fp32")
    try:
        check_opset(opset, "int8" if "int8" in onnx else "fp32")
    except InputError as exc:
        raise InputError(str(exc), param="opset") from None
    if int8_mode not in INT8_MODES:
        raise InputError(f"int8_mode {int8_mode}: expected one of {', '.join(INT8_MODES)}", param="int8_mode")
    if calibration not in (None, "embedded") and not Path(calibration).is_dir():
        raise InputError(f"calibration {calibration}: expected 'embedded' or a folder of images", param="calibration")
    return tflite, onnx


def convert(model_path, out_dir=None, tflite=DEFAULT_TFLITE_PRECISIONS, onnx=DEFAULT_ONNX_PRECISIONS, opset=17,
            nchw=False, calibration="embedded", int8_io=False, force=False,
            int8_mode="truncation-aware", evaluate=True, timings=None,
            literal=False, custom_objects=None, trust_lambda=False, target="cpu",
            speed=True) -> dict:
    """Convert `model_path` to every requested artifact in `out_dir` and write the manifest.

    Returns the manifest dict (also written to `out_dir/manifest.json`). If `timings` is a
    dict, it receives the conversion wall time of each artifact in seconds.
    Exact layout rewrites (the passes of `export.tflite.passes` / `export.onnx.passes`) run
    by default; `literal=True` keeps a one-to-one translation. Each manifest entry lists the
    passes that changed its artifact (`"passes"`). `custom_objects` (a dict, or the path
    of the user's own `.py` file, which is run) are offered to Keras by name while loading
    and converting. `trust_lambda=True` loads Lambda layers and converts them as traced.
    `target` ("cpu", "ethos-u", "micro") picks the TFLite pass lists (the CPU-only packing
    rewrite is left out elsewhere) and is recorded in each TFLite entry; "int8-full" is the
    full-integer TFLite model (`export.tflite.integer`).
    With `speed`, each int8 artifact is timed against the fp32 one of its format
    (`export.speed.int8_speed`; a warning when int8 is slower).
    """
    tflite, onnx = _check_options(tflite, onnx, opset, int8_mode, calibration, target)
    source = require_keras_file(model_path, KERAS_SUFFIXES)  # a SavedModel folder names migrate
    out_dir = Path(out_dir) if out_dir is not None else (source.parent if str(source.parent) else Path("."))
    _check_out_dir(out_dir)
    artifacts = manifest.plan(source.stem, tflite, onnx)
    outputs = OutputSet(out_dir, [name for _, _, name in artifacts] + [manifest.MANIFEST],
                        force=force, protect=[source])
    outputs.preflight()  # a killed run's commit finished, targets refused before the (slow) load
    options = {"opset": int(opset), "nchw": nchw, "int8_io": int8_io, "int8_mode": int8_mode,
               "literal": bool(literal), "target": target, "speed": bool(speed)}
    custom_objects = load_custom_objects(custom_objects)
    with custom_objects_scope(custom_objects):
        prepared = prepare(load_keras_model(source, safe_mode=True, checked=True,
                                             custom_objects=custom_objects, trust_lambda=trust_lambda))
    _warn_traced_lambdas(source, prepared.model)
    with outputs, custom_objects_scope(custom_objects):
        return _convert_model(prepared, source, sha256_file(source), outputs, artifacts, options,
                              calibration, evaluate, timings)


def _warn_traced_lambdas(source, model) -> None:
    names = [path for _, path in lambda_layers(model)]
    if names:
        _log.warn(f"{source}: Lambda layer(s) {', '.join(names)} converted as traced "
                  "(--trust-lambda); a truncation inside a Lambda becomes plain ops, not a "
                  "Truncation: edgetrunc migrate replaces those")


def _is_detector(model) -> bool:
    return len(model.outputs) == 1 and is_detector_shape(model.outputs[0].shape)


def _model_geometry(model, source, needs_int8):
    """The model's `ImageGeometry` when int8 artifacts need calibration images, else None."""
    from edgetrunc.data.geometry import require_image_geometry

    if not needs_int8 or len(model.inputs) > 1:  # several inputs: calibrated input by input
        return None
    return require_image_geometry(model, source.name, "int8 calibration; convert it with "
                                  "--tflite fp32,fp16 --onnx fp32")


def _held_out(model, source, calibration, geometry, evaluate, batch):
    """`(held-out pairs, Keras stego probability on them)`, or `(None, None)` when int8
    decisions are not compared (not asked, or the model is not a detector)."""
    if not evaluate:
        return None, None
    if len(model.inputs) > 1:
        _log.info(f"convert: {source.name} has {len(model.inputs)} inputs: int8 decisions are "
                  "not compared with Keras (edgetrunc parity compares every output)")
        return None, None
    if not _is_detector(model):
        _log.info(f"convert: {source.name} is not a detector ([N, 2] or [N, 1] output): "
                  "int8 decisions are not compared with Keras")
        return None, None
    from edgetrunc.keras.runner import predict_probability

    held_out = calib_data.held_out_pairs(calibration, geometry, model)
    keras_probability = predict_probability(model, held_out.x, batch_size=batch)
    if nearly_constant(keras_probability):
        _log.warn(f"convert: the Keras outputs of {source.name} are nearly constant on the held-out "
                  f"pairs (stego probability std {float(np.std(keras_probability)):.2e} over "
                  f"{len(keras_probability)} inputs): int8 decision agreement proves little; "
                  "use a trained model")
    return held_out, keras_probability


def _export(prepared, fmt, precision, calib, options, metadata, applied) -> bytes:
    """The bytes of one artifact of the prepared model with its metadata embedded; `applied`
    receives the names of the passes that changed it."""
    x = None if calib is None else calib.x
    payload = {**metadata, "format": fmt, "precision": precision}
    return export_format(fmt).export.artifact(prepared, precision, x, applied, payload, **options)


def _evaluate(entry, fmt, tmp, held_out, keras_probability, batch):
    """Add the held-out comparison with Keras to an int8 entry; warn when it misses the targets."""
    with quiet_converter():  # the interpreter's "Created XNNPACK delegate" line
        probability = evaluation.artifact_probability(fmt, tmp, held_out.x, batch)
    quality = evaluation.quality_against_keras(keras_probability, probability, held_out.y)
    stride = calib_data.evaluation_stride(held_out.x.shape[1])
    quality["data"] = (f"held-out pairs ({held_out.split} split, stride "
                       f"{stride}, payload {held_out.payload})")
    entry["quantization"]["evaluation"] = quality
    if not quality["passed"]:
        _log.warn(f"{entry['path']}: decision agreement {quality['decision_agreement']:.3f}, "
                  f"accuracy delta {quality['accuracy_delta']:+.3f} "
                  f"(targets >= {MIN_DECISION_AGREEMENT}, |delta| <= {MAX_ACCURACY_DELTA})")


def _release_memory() -> None:
    """Hand the memory an export freed back to the system: the converters leave much freed
    heap behind (about 2 GB after the five artifacts of a 14-block residual net), which
    would otherwise add up to the peak of the next one."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _convert_model(prepared, source, source_sha, outputs, artifacts, options, calibration,
                   evaluate, timings):
    model, truncations = prepared.model, prepared.truncations
    needs_int8 = any(p.startswith("int8") for _, p, _ in artifacts)
    geometry = _model_geometry(model, source, needs_int8)
    calib = calib_data.model_calibration(calibration, geometry, model) if needs_int8 else None
    batch = calib_data.evaluation_batch(model, geometry) if geometry and evaluate else None
    held_out, keras_probability = _held_out(model, source, calibration, geometry,
                                            evaluate and needs_int8, batch)
    metadata = artifact_metadata(__version__, source.name, source_sha, truncations, None, None)
    entries, staged_paths = {}, {}
    # ONNX first: tf2onnx sets the peak memory of a conversion (about 2 GB above the model for
    # a 14-block residual net), lowest before the TFLite converter's heap has grown
    for fmt, precision, name in sorted(artifacts, key=lambda artifact: artifact[0] != "onnx"):
        _log.info(f"convert: {name} ({fmt} {precision}) ...")
        started = time.perf_counter()
        applied = []
        content = _export(prepared, fmt, precision, calib, options, metadata, applied)
        elapsed = time.perf_counter() - started
        staged = staged_paths[name] = outputs.stage(name, content)
        inspect = export_format(fmt).export.inspect
        entry = manifest.artifact_entry(
            name, fmt, precision, content, inspect(str(staged), truncations, precision),
            manifest.quantization_entry(fmt, precision, options["int8_io"],
                                        options["int8_mode"], calib, options["literal"]),
            applied, options["target"] if fmt == "tflite" else None)
        if "uint8_activations" in applied:
            entry["quantization"]["activations"] = ("uint8 (int8 left a Conv without an int8 "
                                                    "kernel in onnxruntime here)")
        if precision.startswith("int8") and held_out is not None:
            _evaluate(entry, fmt, staged, held_out, keras_probability, batch)
        if timings is not None:
            timings[name] = elapsed
        entries[name] = entry
        _release_memory()
        _log.info(f"convert: {name} done in {elapsed:.1f} s, {len(content) / 1024:.0f} KiB")
    entries = [entries[name] for _, _, name in artifacts]  # the manifest lists them as planned
    if options["speed"] and needs_int8:
        int8_speed(entries, staged_paths, None if calib is None else calib.x)
    result = manifest.build_manifest(source, source_sha, outputs.out_dir, entries,
                                     manifest.model_io(model))
    outputs.commit(manifest.MANIFEST, dumps_json(result))
    return result
