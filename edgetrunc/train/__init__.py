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

import time

from edgetrunc import _log
from edgetrunc._io import atomic_path, sha256_file, write_json_atomic
from edgetrunc.data.splits import DEFAULT_FRACTIONS
from edgetrunc.data.stego_cache import DEFAULT_MESSAGES
from edgetrunc.train.batchnorm import finalize_batchnorm, reestimate_batchnorm
from edgetrunc.train.config import (EVAL_STRIDE, LR_SCHEDULES, TrainConfig, checked_keras_output,
                                    parse_curriculum, parse_model_args, record_path)
from edgetrunc.data.stream import DEFAULT_SHUFFLE_BUFFER
from edgetrunc.train.loop import (build_model, evaluate_pairs, fit_epochs, prepare_data,
                                  training_batches)
from edgetrunc.train.record import build_record, worker_summary
from edgetrunc.train.strategy import STRATEGIES, read_cluster
from edgetrunc.train.schedule import EpochPlan, Schedule, selection_score

__all__ = ["train", "TrainConfig", "Schedule", "EpochPlan", "selection_score", "parse_curriculum",
           "parse_model_args", "record_path", "checked_keras_output", "reestimate_batchnorm",
           "evaluate_pairs", "STRATEGIES", "LR_SCHEDULES", "EVAL_STRIDE"]


def train(model: str = "tlunet", covers="embedded", payload: float = 0.4, epochs: int = 30,
          batch_size: int = 16, lr: float = 1e-3, patience: int = 8, curriculum=None,
          stage_epochs: int = 2, max_tiles: int | None = None, stride: int | None = None,
          strategy: str = "default", out="models/tlunet.keras", seed: int = 0,
          force: bool = False, time_budget: float | None = None, model_kwargs=None,
          lr_schedule: str = "cosine", eval_stride: int | None = EVAL_STRIDE,
          max_eval_pairs: int | None = None, bn_reestimate: str = "epoch",
          fractions=DEFAULT_FRACTIONS, augment: bool = True, frozen_bn_fraction: float = 0.0,
          command: str | None = None, embedding: str = "lsbm", messages: int = DEFAULT_MESSAGES,
          stego_cache=None, workers: int | None = None, stream: str = "auto",
          shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER) -> dict:
    """Train `model` on cover/stego pairs and write it to `out` plus its training record.

    Args:
        model: registered model name.
        covers: `"embedded"`, a folder of cover images, or a list of `Cover`.
        payload: target LSB-matching payload in bits per pixel, in (0, 1].
        epochs: maximum number of epochs (all stages together).
        batch_size: pairs per batch (a batch holds 2 * batch_size images).
        lr: initial learning rate (Adam).
        patience: early stopping after this many epochs at the target payload without a
            better validation P_E (with `frozen_bn_fraction`, the frozen phase starts then
            instead, and a second run of `patience` epochs ends it).
        curriculum: payload stages, e.g. `"1.0,0.7,0.4"`; every stage but the last lasts
            `stage_epochs` epochs.
        max_tiles: use at most this many training tiles (round-robin over photos).
        stride: training tile stride in pixels (default one tile: the model input, 256 for
            tlunet; a quarter tile gives 16x more tiles).
        strategy: `"default"`, `"mirrored"`, `"multiworker"` (several machines, the cluster
            from the `TF_CONFIG` environment variable; each worker trains on its share of
            the tiles with `batch_size` pairs a batch) or `"one:DEVICE"` (tf.distribute).
        out: output `.keras` path; the record goes beside it (`<name>.training.json`).
        seed: seeds the split, the tiles, the messages, the augmentation and the weights.
        force: replace an existing output.
        time_budget: wall-time budget in minutes; no epoch starts that would overrun it.
        model_kwargs: keyword arguments for the model builder (e.g. `front_end="srm6"`).
        lr_schedule: `"cosine"` (to 1% of `lr` over the planned epochs), `"plateau"`
            (halve after `max(2, patience // 3)` epochs without improvement) or `"constant"`.
        eval_stride: tile stride of the validation and test tiles (default 128).
        max_eval_pairs: cap on validation and test pairs (quick runs).
        bn_reestimate: `"epoch"`: re-estimate the batch-norm statistics on training tiles
            after every epoch, before validation (the validation figures with the running
            statistics are recorded beside them); `"end"`: once after training, kept only
            when the validation P_E does not get worse; `"none"`.
        fractions: train / validation / test fractions of the photos.
        augment: random rotations/flips of the training tiles.
        frozen_bn_fraction: the last fraction of the planned epochs at the target payload
            runs with batch normalization frozen (statistics re-estimated first, then the
            layers in inference mode), so the weights are tuned for the model as it ships.
        command: the command line that ran this training (kept in the record).
        embedding: `"lsbm"` (LSB matching, a fresh message every epoch), `"hill"`,
            `"suniward"` or `"wow"` (conseal; embedded once into the stego cache).
        messages: K, the messages per training tile of a cached embedding, cycled over the
            epochs (message `epoch mod K`).
        stego_cache: the stego cache folder (default `$XDG_CACHE_HOME/edgetrunc/stego`).
        workers: processes that fill the stego cache (default: every usable core).
        stream: `"auto"` (a cover folder whose decoded pixels exceed 64 MiB is streamed from
            its files every epoch, `edgetrunc.data.stream`), `"on"` or `"off"`.
        shuffle_buffer: pairs in the shuffle buffer of a streamed epoch.

    Returns the training record (also written as JSON beside the model); on a worker that
    is not the chief, a summary of its epochs (`worker_summary`; nothing is written).
    """
    started = time.monotonic()
    config = TrainConfig(
        model=model, covers=covers, payload=payload, epochs=epochs, batch_size=batch_size,
        lr=lr, patience=patience, curriculum=curriculum, stage_epochs=stage_epochs,
        max_tiles=max_tiles, stride=stride, strategy=strategy, out=out, seed=seed, force=force,
        time_budget=time_budget, model_kwargs=model_kwargs, lr_schedule=lr_schedule,
        eval_stride=eval_stride, max_eval_pairs=max_eval_pairs, bn_reestimate=bn_reestimate,
        fractions=fractions, augment=augment, frozen_bn_fraction=frozen_bn_fraction,
        command=command, embedding=embedding, messages=messages, stego_cache=stego_cache,
        workers=workers, stream=stream, shuffle_buffer=shuffle_buffer)
    return run_training(config, started)


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
