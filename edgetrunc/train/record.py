"""The training record: the JSON written beside a trained model (no TensorFlow).

`build_record` assembles it from the run's settings (`TrainConfig`), its data, its epochs
and its final figures: config, seed, versions, data (split, tiles and pairs per photo),
per-epoch metrics, stop reason, best epoch, the batch-norm step, validation and test
figures, wall time and images/s; the embedding, and for a cached one (HILL, S-UNIWARD, WOW)
its messages per tile and the stego cache's folder and counts. Floats are rounded to 5 digits and NaN written as null.
With several workers (`config.workers`), `batch_pairs` is each worker's batch,
`global_batch_pairs` the pairs of one step over all of them, and the image counts and
images/s cover all workers. `worker_summary` is what a worker that is not the chief returns
instead (it writes no record).
"""

from __future__ import annotations

import math

from edgetrunc._text import json_safe
from edgetrunc._version import package_versions

VERSION_KEYS = ("edgetrunc", "python", "numpy", "tensorflow", "keras", "platform")


def rounded_figures(report: dict, keys=("accuracy", "auc", "p_e", "p_e_photo_mean")) -> dict:
    """The headline figures of a detection report, rounded to 4 digits (NaN as None)."""
    return {k: (None if report.get(k) is None or (isinstance(report[k], float) and math.isnan(report[k]))
                else round(float(report[k]), 4)) for k in keys if k in report}


def record_versions() -> dict:
    """edgetrunc, Python, numpy, TensorFlow (from `tensorflow` or `tensorflow-cpu`), Keras
    and the platform."""
    found = package_versions(("numpy", "tensorflow", "tensorflow-cpu", "keras"), with_platform=True)
    cpu_build = found.pop("tensorflow-cpu", None)
    found.setdefault("tensorflow", cpu_build)
    return {key: found.get(key) for key in VERSION_KEYS}


def _config_section(config, data, replicas: int) -> dict:
    tile = int(data.tiles.tile_size)  # the model's input size
    return {"model": config.model, "model_kwargs": config.model_kwargs, "payload": config.payload,
            "embedding": config.stego.embedding,
            "messages": config.stego.describe()["messages"], "curriculum": config.stages, "stage_epochs": config.stage_epochs,
            "epochs": int(config.epochs), "batch_pairs": data.batch_size, "lr": float(config.lr),
            "lr_schedule": config.lr_schedule, "patience": config.patience,
            "stride": config.stride or tile, "max_tiles": config.max_tiles,
            "eval_stride": config.eval_stride or tile, "max_eval_pairs": config.max_eval_pairs,
            "augment": config.augment, "stream": config.stream,
            "shuffle_buffer": int(config.shuffle_buffer), "bn_reestimate": config.bn_reestimate,
            "frozen_bn_fraction": config.frozen_bn_fraction, "strategy": config.strategy,
            "replicas": int(replicas), "workers": int(data.workers),
            "global_batch_pairs": data.batch_size * int(data.workers),
            "time_budget_min": config.time_budget,
            "fractions": list(config.fractions)}


def _data_section(config, data) -> dict:
    test = data.test_pairs
    return {"covers": config.covers if isinstance(config.covers, str) else "list",
            "photos": len(data.covers), "streamed": bool(data.streamed), "split": data.splits,
            "train_tiles": len(data.tiles), "train_tiles_per_photo": data.tiles.tiles_per_photo(),
            "val_pairs": data.val_pairs.n_pairs,
            "val_pairs_per_photo": data.val_pairs.tiles_per_photo(),
            "test_pairs": test.n_pairs if test else 0,
            "test_pairs_per_photo": test.tiles_per_photo() if test else {},
            "photo_notes": {c.name: c.describe() for c in data.covers},
            "stego_cache": _stego_cache_section(config.stego)}


def _stego_cache_section(stego):
    """Where the cached stego tiles came from and what this run embedded (None: LSB matching,
    which bypasses the cache)."""
    if not stego.cached:
        return None
    stats = stego.stats
    return {"folder": str(stego.cache_dir), "embedded": stats.embedded, "reused": stats.reused,
            "rebuilt": stats.rebuilt, "cannot_carry": stats.cannot_carry}


def build_record(config, data, run, *, model_file: str, digest: str, replicas: int,
                 parameters: int, batchnorm: dict, val: dict, test, wall: float) -> dict:
    """The training record of a finished run, JSON-ready.

    `config` is the `TrainConfig`, `data` the run's `TrainingData`, `run` its `TrainingRun`
    (epoch rows, schedule, images trained on); the keywords are the saved model's file name
    and SHA-256, the number of replicas and parameters, the batch-norm step's record, and
    the validation and test reports of the kept model.
    """
    schedule = run.schedule
    record = {
        "model_file": model_file, "model_sha256": digest,
        "command": config.command,
        "config": _config_section(config, data, replicas),
        "seed": int(config.seed),
        "versions": record_versions(),
        "parameters": int(parameters),
        "data": _data_section(config, data),
        "epochs": run.history,
        "stop_reason": schedule.stop_reason,
        "best_epoch": run.best_epoch,
        "bn_frozen_from_epoch": schedule.frozen_from,
        "batchnorm_reestimation": batchnorm,
        "val": val,
        "test": test,
        "wall_seconds": wall,
        "train_seconds": run.train_seconds,
        "images_per_second": run.trained_images / run.train_seconds if run.train_seconds else None,
        "trained_images": run.trained_images,
    }
    return json_safe(record, nan="null", digits=5)


def worker_summary(cluster, run, wall: float) -> dict:
    """What a worker that is not the chief returns (it writes nothing): its place in the
    cluster and the epochs it trained, with no model file."""
    return json_safe({"model_file": None, "worker": cluster.index, "workers": cluster.workers,
                      "task": {"type": cluster.task_type, "index": cluster.task_index},
                      "epochs": len(run.history), "best_epoch": run.best_epoch,
                      "stop_reason": run.schedule.stop_reason, "wall_seconds": wall},
                     nan="null", digits=5)
