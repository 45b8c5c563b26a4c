"""Evaluation of a detector (`.keras` or full-model `.h5`, `.tflite` or `.onnx`) on cover/stego pairs.

`evaluate(model_path, ...)` builds the pairs with `edgetrunc.data.load_pairs` (the held-out
test photos of the embedded covers by default), or for a user folder (every photo by
default) with `edgetrunc.data.stream.stream_pairs`, read batch by batch, so memory stays
bounded however many tiles its photos hold; the pairs are cut at the
model's geometry (`edgetrunc.data.geometry`: its square input size, 256 for a free size;
grayscale or RGB), scores
them in inference mode (Keras) or through `edgetrunc.runtime.open_runner` (TFLite, ONNX
Runtime; no TensorFlow needed for those), and returns accuracy, ROC AUC, P_E, the
confusion matrix, per-photo figures and the P_E averaged over photos.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetrunc import _log
from edgetrunc._io import check_run_paths, require_file
from edgetrunc._text import table
from edgetrunc.data.covers import resolve_covers
from edgetrunc.data.dataset import check_payload, load_pairs
from edgetrunc.data.splits import split_sources
from edgetrunc.data.stego_cache import DEFAULT_EMBEDDING, StegoSettings
from edgetrunc.data.stream import StreamPairs, scan_covers, stream_pairs
from edgetrunc.data.geometry import require_image_geometry
from edgetrunc.errors import InputError
from edgetrunc.keras.activation import output_activation
from edgetrunc.keras.load import load_keras_model, require_keras_file
from edgetrunc.keras.runner import predict_probability
from edgetrunc.metrics import detection_report, is_detector_shape
from edgetrunc.runtime import formats, open_runner
from edgetrunc.runtime.scoring import score_batch

KERAS_SUFFIXES = (".keras", ".h5")
BATCH_SIZE = 32


def keras_scorer(path, batch_size: int = BATCH_SIZE, custom_objects=None):
    """`(score(x) -> stego probability [N], ImageGeometry)` of a Keras detector file, in
    inference mode."""
    model = load_keras_model(path, custom_objects=custom_objects)
    geometry = require_image_geometry(model, path, "evaluate")
    _require_detector_output(path, [tuple(t.shape) for t in model.outputs])
    activation = output_activation(model)
    return (lambda x: predict_probability(model, x, batch_size, activation)), geometry


def _require_detector_output(path, shapes) -> None:
    """Evaluation needs one detector output: `[N, 2]` (cover, stego) or `[N, 1]`."""
    if len(shapes) != 1 or not is_detector_shape(shapes[0]):
        got = f"{len(shapes)} outputs" if len(shapes) != 1 else f"output {list(shapes[0])}"
        raise InputError(f"{path}: {got}; evaluate needs one detector output [N, 2] (cover, "
                         "stego) or [N, 1] (edgetrunc parity compares other outputs)")


def runtime_scorer(path, batch_size: int = BATCH_SIZE, threads: int | None = None):
    """`(score(x) -> stego probability [N], ImageGeometry)` of a `.tflite` or `.onnx` detector
    on the runtime."""
    runner = open_runner(path, threads=threads)
    outputs = runner.metadata().outputs
    if len(outputs) != 1:
        raise InputError(f"{path}: {len(outputs)} outputs; expected one [N, 2] softmax")
    geometry = require_image_geometry(runner, path, "evaluate")
    _require_detector_output(path, [tuple(outputs[0].shape)])
    return (lambda x: score_batch(runner, x, batch_size, clip=False)), geometry


def evaluate(model_path, covers="embedded", payload: float = 0.4, seed: int = 0,
             split: str | None = None, stride: int | None = 128, max_pairs: int | None = None,
             batch_size: int = BATCH_SIZE, threads: int | None = None,
             embedding: str = DEFAULT_EMBEDDING,
             stego_cache=None, workers: int | None = None, custom_objects=None) -> dict:
    """Accuracy, AUC, P_E, confusion matrix and per-photo figures of a detector.

    Args:
        model_path: a `.keras`, full-model `.h5`, `.tflite` or `.onnx` file.
        covers: `"embedded"`, a folder of cover images, or a list of `Cover`.
        payload: payload in bits per pixel, in (0, 1].
        seed: seed of the photo split and of the embedding (as in training).
        split: `"test"` (default for the embedded covers), `"all"` (default for a folder),
            `"train"` or `"val"`.
        stride: tile stride (default 128, as the training record's test figures).
        max_pairs: score at most this many pairs (round-robin over photos).
        embedding: `"lsbm"`, `"hill"`, `"suniward"` or `"wow"`; the content-adaptive ones
            come from the stego cache (`stego_cache` folder, filled by `workers` processes).
        custom_objects: a dict or the path of your own `.py` file (run) whose functions
            and classes a `.keras` / `.h5` model needs (`edgetrunc.legacy.custom`).
    """
    check_run_paths({"stego_cache": stego_cache}, {"model_path": model_path,
                                                    "covers": None if covers == "embedded" else covers},
                    folders=("stego_cache",))  # before the cache folder is made
    stego = StegoSettings.of_run(embedding, stego_cache, workers)
    if Path(model_path).is_dir():
        require_keras_file(model_path)  # a SavedModel folder names `edgetrunc migrate`
    path = require_file(model_path, "model file", KERAS_SUFFIXES + formats.suffixes(runnable=True))
    payload = check_payload(payload)
    is_embedded = isinstance(covers, str) and covers == "embedded"
    split = split or ("test" if is_embedded else "all")
    artifact = formats.find(path, runnable=True)
    score, geometry = keras_scorer(path, batch_size, custom_objects) if artifact is None else (
        runtime_scorer(path, batch_size, threads))
    cover_list, pairs = _pairs(covers, split, payload, seed, max_pairs, stride, geometry, stego)
    _log.info(f"scoring {len(pairs)} tiles ({pairs.n_pairs} cover/stego pairs, "
              f"{len(pairs.photos)} photos, {split} split) with {path.name}")
    if isinstance(pairs, StreamPairs):
        parts = [score(x) for x in pairs.batches()]
        probs = np.concatenate(parts) if parts else np.zeros(0)
    else:
        probs = score(pairs.x)
    report = detection_report(pairs.y, probs, pairs.sources)
    notes = {c.name: c.describe() for c in cover_list if c.name in set(pairs.photos)}
    for name, figures in report.get("per_source", {}).items():
        figures["pairs"] = figures["samples"] // 2
        figures["jpeg_history"] = notes[name]["jpeg_history"]
        figures["note"] = notes[name]["note"]
    per = report.get("per_source", {})
    scored = [n for n in pairs.photos if n in per]  # --max-pairs may leave photos without a pair
    jpeg = [n for n in scored if notes[n]["jpeg_history"]]
    never = [n for n in scored if not notes[n]["jpeg_history"]]
    return {"model": str(path), "format": artifact.name if artifact else path.suffix.lower()[1:],
            "covers": str(covers)
            if isinstance(covers, (str, Path)) else "list", "split": split, "payload": payload,
            "embedding": stego.embedding,
            "seed": int(seed), "stride": stride or geometry.tile, "pairs": pairs.n_pairs,
            "photos": scored, **report,
            "error_photo_mean_jpeg_history": _mean([per[n]["error"] for n in jpeg]),
            "error_photo_mean_never_compressed": _mean([per[n]["error"] for n in never])}


def _pairs(covers, split, payload, seed, max_pairs, stride, geometry, stego):
    """`(covers, pairs)`: a folder's photos by reference and its pairs read batch by batch
    (`StreamPairs`: one photo in memory at a time, however many tiles it holds); covers in
    memory already as one `PairSet`."""
    tile, channels = geometry.tile, geometry.channels
    if not isinstance(covers, (str, Path)) or str(covers) == "embedded":
        cover_list = resolve_covers(covers, channels=channels, min_size=tile)
        return cover_list, load_pairs(cover_list, split=split, payload=payload, seed=seed,
                                      max_pairs=max_pairs, stride=stride, tile=tile,
                                      channels=channels, stego=stego)
    if max_pairs is not None and int(max_pairs) < 1:
        raise InputError(f"max_pairs must be >= 1; got {max_pairs}", param="max_pairs")
    if stride is not None and int(stride) < 1:
        raise InputError(f"stride must be >= 1; got {stride}", param="stride")
    refs = scan_covers(covers, channels, tile)
    splits = split_sources(refs, seed=seed)
    if split not in splits and split != "all":
        raise InputError(f"split must be one of {', '.join((*splits, 'all'))}; got {split!r}",
                         param="split")
    splits["all"] = [ref.name for ref in refs]
    return refs, stream_pairs(refs, splits, split, payload, seed, max_pairs, stride, tile,
                              channels, stego)


def _mean(values):
    values = [v for v in values if v is not None and not np.isnan(v)]
    return float(np.mean(values)) if values else None


def format_report(report: dict) -> str:
    """The evaluation as a terminal table."""
    lines = [f"{report['model']} ({report['format']}): {report['pairs']} cover/stego pairs from "
             f"{len(report['photos'])} photos ({report['split']} split), payload "
             f"{report['payload']} bpp"
             + (f" ({report['embedding']})" if report.get("embedding", "lsbm") != "lsbm" else "")
             + f", tile stride {report['stride']}",
             "",
             f"accuracy {report['accuracy']:.4f}   AUC {report['auc']:.4f}   P_E {report['p_e']:.4f}"
             f"   per-photo mean P_E {report['p_e_photo_mean']:.4f}"]
    if report.get("error_photo_mean_never_compressed") is not None:
        lines.append(f"mean error at the shared threshold: never-compressed photos "
                     f"{report['error_photo_mean_never_compressed']:.4f}"
                     + (f", once-JPEG photos {report['error_photo_mean_jpeg_history']:.4f}"
                        if report.get("error_photo_mean_jpeg_history") is not None else ""))
    (tn, fp), (fn, tp) = report["confusion"]
    lines += ["", "confusion (threshold 0.5)   decided cover   decided stego",
              f"  cover                     {tn:13d}   {fp:13d}",
              f"  stego                     {fn:13d}   {tp:13d}", ""]
    rows = [(name, str(f["pairs"]), f"{f['accuracy']:.3f}",
             "-" if f["auc"] is None or np.isnan(f["auc"]) else f"{f['auc']:.3f}",
             f"{f['p_e']:.3f}", f"{f['error']:.3f}", f["note"])
            for name, f in report.get("per_source", {}).items()]
    lines.append(table(("photo", "pairs", "accuracy", "AUC", "P_E own", "error shared",
                        "JPEG history"), rows, align="lrrrrrl"))
    lines += ["", "P_E own: (P_FA + P_MD) / 2 at the photo's own best threshold (optimistic for few "
              "tiles); error shared: at the one threshold that minimizes the photo-weighted P_E."]
    return "\n".join(lines)
