"""Training of a registered detector on cover/stego pairs, with its training record.

`train(...)` owns the whole run: cover photos are split by source (train / validation /
test), the training photos are tiled (optionally with a denser stride) and fed through
`tf.data` with prefetch as pair batches (a cover and its stego always in the same batch,
a fresh message and one of the 8 rotations/flips every epoch). An optional curriculum
starts at higher payloads and steps down to the target payload. After every epoch the
model is judged as it ships, in inference mode (batch normalization on its running
statistics, re-estimated on training tiles after every epoch by default), on the
validation photos; the best epoch by photo-weighted validation P_E is kept (ties broken
by the pooled P_E, then the mean per-photo AUC). The learning rate follows a cosine or
plateau schedule; after `patience` epochs without improvement (or for the last part of
the planned epochs) batch normalization can be frozen in inference mode for a final
phase, and training stops after `patience` more epochs without improvement or when the
wall-time budget runs out. The test photos are scored at the end, and the model plus a
JSON training record (config, versions, data, per-epoch metrics, test figures pooled and
per photo, wall time, images/s) are written atomically.

The parts: `config` (`TrainConfig`, the validated settings), `schedule` (`Schedule`, the
pure epoch plan), `loop` (data, model, `run_epoch`, the epochs), `batchnorm` (re-estimation
and freezing of the batch-norm statistics), `strategy` (the `tf.distribute` strategy and,
for training on several machines, the cluster from `TF_CONFIG`) and `record`
(`build_record`). On several machines only the chief writes anything: the model, its
checkpoint and the record; the other workers train their share and return a short summary.
"""

from __future__ import annotations

import dataclasses
import textwrap
import time

from edgetrunc import _log
from edgetrunc._io import atomic_path, sha256_file, write_json_atomic
from edgetrunc.train.batchnorm import finalize_batchnorm, reestimate_batchnorm
from edgetrunc.train.config import (EVAL_STRIDE, LR_SCHEDULES, TrainConfig, checked_keras_output,
                                    parse_curriculum, parse_model_args, record_path,
                                    settings_doc)
from edgetrunc.train.loop import (build_model, evaluate_pairs, fit_epochs, prepare_data,
                                  training_batches)
from edgetrunc.train.record import build_record, worker_summary
from edgetrunc.train.strategy import STRATEGIES, read_cluster
from edgetrunc.train.schedule import EpochPlan, Schedule, selection_score

__all__ = ["train", "TrainConfig", "Schedule", "EpochPlan", "selection_score", "parse_curriculum",
           "parse_model_args", "record_path", "checked_keras_output", "reestimate_batchnorm",
           "evaluate_pairs", "STRATEGIES", "LR_SCHEDULES", "EVAL_STRIDE"]


def train(config: TrainConfig | None = None, /, **settings) -> dict:
    """Train a model on cover/stego pairs and write it to `out` plus its training record.

    The settings are `TrainConfig`'s fields, given as keywords (`train(model="tlunet",
    epochs=3)`) or as a `TrainConfig` (with keywords, they replace its fields); each field's
    meaning and default are listed below (from `TrainConfig`, where they are written once).
    Returns the training record (also written as JSON beside the model); on a worker that
    is not the chief, a summary of its epochs (`worker_summary`; nothing is written).
    """
    started = time.monotonic()
    if config is None:
        config = TrainConfig(**settings)
    elif settings:
        config = dataclasses.replace(config, **settings)
    return run_training(config, started)


if train.__doc__:  # None under python -OO
    train.__doc__ += "\n" + textwrap.indent(settings_doc(TrainConfig), "    ") + "\n"


def run_training(config: TrainConfig, started: float | None = None) -> dict:
    """Run the training `config` describes; see `train`. `started` (`time.monotonic()`)
    is when the run began, for its time budget and wall time (default: now)."""
    started = time.monotonic() if started is None else started
    cluster = read_cluster(config.strategy)
    out = checked_keras_output(config.out, config.force) if cluster.is_chief else None
    net, strategy, geometry = build_model(config)
    data = prepare_data(config, geometry, workers=cluster.workers)
    checkpoint = out.with_name(f".{out.name}.best.keras") if out is not None else None
    run = fit_epochs(net, strategy, data, config, started, checkpoint)
    if out is None:  # a worker that is not the chief writes nothing
        _log.info(f"worker {cluster.index} of {cluster.workers}: {len(run.history)} epochs; "
                  "the chief writes the model and the training record")
        return worker_summary(cluster, run, time.monotonic() - started)
    net.set_weights(run.best_weights)
    batchnorm, val = finalize_batchnorm(
        net, config.bn_reestimate, run.schedule.frozen_from, run.best_weights,
        training_batches(data, config, config.payload, 10_000),
        validate=lambda: evaluate_pairs(net, data.val_pairs))
    test = evaluate_pairs(net, data.test_pairs) if data.test_pairs is not None else None
    wall = time.monotonic() - started
    with atomic_path(out) as tmp:
        net.save(tmp)
        digest = sha256_file(tmp)
    if checkpoint.exists():
        checkpoint.unlink()
    record = build_record(config, data, run, model_file=out.name, digest=digest,
                          replicas=strategy.num_replicas_in_sync,
                          parameters=net.count_params(), batchnorm=batchnorm, val=val,
                          test=test, wall=wall)
    record_file = record_path(out)
    write_json_atomic(record_file, record)
    if test is not None:
        _log.info(f"test ({data.test_pairs.n_pairs} pairs, {len(data.splits['test'])} photos): "
                  f"accuracy {test['accuracy']:.3f}, AUC {test['auc']:.3f}, P_E {test['p_e']:.3f}, "
                  f"per-photo mean P_E {test['p_e_photo_mean']:.3f}")
    _log.info(f"wrote {out} and {record_file} ({wall / 60:.1f} min)")
    return record
