"""The epochs of a training run: data, model, one epoch (`run_epoch`) and the loop over them.

`prepare_data` splits the covers by photo and builds the training tiles and the validation,
test and training-probe pairs; `build_model` creates and compiles the registered detector
under a `tf.distribute` strategy (`edgetrunc.train.strategy`; across machines every worker
trains on its share of the tiles). `run_epoch` trains one epoch on a `tf.data` pipeline of
pair batches and judges the model in inference mode (validation pairs, before and after the
per-epoch batch-norm re-estimation, and a probe of training pairs); `fit_epochs` runs the
epochs the `Schedule` plans, keeps the best weights and a checkpoint of them. Imports
TensorFlow / Keras inside the functions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from edgetrunc import _log
from edgetrunc.data.covers import resolve_covers
from edgetrunc.data.dataset import load_pairs, pair_batches, training_tiles
from edgetrunc.data.geometry import DEFAULT_TILE, ImageGeometry, require_image_geometry
from edgetrunc.data.splits import split_sources
from edgetrunc.data.stego_tiles import prefill_training
from edgetrunc.data.stream import (EVAL_BATCH_PAIRS, StreamPairs, prefill_stream, scan_covers,
                                   stream_pairs, stream_training_tiles, use_streaming)
from edgetrunc.errors import InputError, first_line
from edgetrunc.keras.runner import predict_probability
from edgetrunc.metrics import detection_report
from edgetrunc.train.batchnorm import freeze_batchnorm, reestimate_batchnorm
from edgetrunc.train.record import rounded_figures
from edgetrunc.train.schedule import Schedule, selection_score
from edgetrunc.train.tf_data import kept_failures, read_failure, stream_epoch_dataset
from edgetrunc.train.strategy import (chief_values, distributed_epoch, is_multiworker,
                                      make_strategy, replicas_per_worker, train_steps,
                                      worker_share)

PREDICT_BATCH = 32
DEFAULT_GEOMETRY = ImageGeometry(DEFAULT_TILE, 1)


@dataclass
class TrainingData:
    """The photos of a run, their split, the training tiles and the scored pairs."""

    covers: list
    splits: dict
    tiles: object
    batch_size: int  # pairs per batch, at most the number of tiles
    val_pairs: object
    test_pairs: object
    train_probe: object
    workers: int = 1  # machines training together, each on its share of the tiles
    streamed: bool = False  # tiles read from the cover files every epoch (StreamTiles)

    @property
    def steps(self) -> int:
        """Batches per epoch, the same on every worker (the smallest share decides)."""
        return len(self.tiles) // self.workers // self.batch_size

    @property
    def images_per_epoch(self) -> int:
        """Images trained on per epoch, all workers together."""
        return self.steps * 2 * self.batch_size * self.workers


@dataclass
class TrainingRun:
    """What the epochs produced: a row per epoch, the schedule's state, the best weights."""

    schedule: Schedule
    history: list = field(default_factory=list)
    best_weights: list | None = None
    best_epoch: int | None = None
    trained_images: int = 0
    train_seconds: float = 0.0


def prepare_data(config, geometry=DEFAULT_GEOMETRY, workers: int = 1) -> TrainingData:
    """Split the covers by photo, tile the training photos, load the scored pairs, all at the
    model's `geometry` (`edgetrunc.data.geometry.ImageGeometry`: tile size and channels);
    `workers` machines each train on their share of the tiles, `batch_size` pairs a batch.
    A cover folder larger than memory (`config.stream`, `edgetrunc.data.stream`) is streamed:
    photos by reference, tiles by index, scored pairs read batch by batch."""
    seed, fractions, payload = config.seed, config.fractions, config.payload
    tile, channels = geometry
    streamed = use_streaming(config.covers, channels, config.stream)
    all_covers = (scan_covers(config.covers, channels, tile) if streamed
                  else resolve_covers(config.covers, channels=channels, min_size=tile))
    splits = split_sources(all_covers, seed=seed, fractions=fractions)
    for name in ("train", "val"):
        if not splits[name]:
            raise InputError(f"covers: {len(all_covers)} usable photo(s) leave the {name} split "
                             "empty; give at least 3 cover images")
    by_name = {c.name: c for c in all_covers}
    train_covers = [by_name[n] for n in splits["train"]]
    if streamed:
        tiles = stream_training_tiles(train_covers, config.stride, config.max_tiles, seed, tile,
                                      channels)
        if config.stego.cached:
            tiles = tiles.subset(prefill_stream(tiles, config.stages, seed, config.stego))
    else:
        tiles = training_tiles(train_covers, stride=config.stride, max_tiles=config.max_tiles,
                               seed=seed, tile=tile)
        if config.stego.cached:
            tiles = tiles.subset(prefill_training(tiles, config.stages, seed, config.stego))
    val_pairs, test_pairs, train_probe = _scored_pairs(config, all_covers, splits, geometry,
                                                       streamed)
    _log.info(f"covers: {len(all_covers)} photos{' (streamed)' if streamed else ''}; train "
              f"{len(splits['train'])} ({len(tiles)} tiles of {tile}x{tile}, stride "
              f"{config.stride or tile}), val {len(splits['val'])} ({val_pairs.n_pairs} pairs), "
              f"test {len(splits['test'])} ({test_pairs.n_pairs if test_pairs else 0} pairs); "
              f"payload {payload} bpp, {config.stego.embedding}")
    if len(tiles) < workers:
        raise InputError(f"covers: {len(tiles)} training tile(s) for {workers} workers; every "
                         "worker needs at least one")
    return TrainingData(covers=all_covers, splits=splits, tiles=tiles,
                        batch_size=min(int(config.batch_size), len(tiles) // workers),
                        val_pairs=val_pairs, test_pairs=test_pairs, train_probe=train_probe,
                        workers=workers, streamed=streamed)


def _scored_pairs(config, all_covers, splits, geometry, streamed: bool) -> tuple:
    """`(validation, test or None, training probe)` pairs: `PairSet`s in memory, or
    `StreamPairs` read batch by batch when the covers are streamed."""
    seed, payload, limit, stride = config.seed, config.payload, config.max_eval_pairs, \
        config.eval_stride
    tile, channels = geometry
    cut = {"tile": tile, "channels": channels, "stego": config.stego}
    if streamed:
        def pairs(split, max_pairs, split_stride):
            return stream_pairs(all_covers, splits, split, payload, seed, max_pairs,
                                split_stride, **cut)
    else:
        def pairs(split, max_pairs, split_stride):
            return load_pairs(all_covers, split, payload, seed, max_pairs, split_stride,
                              config.fractions, **cut)
    return (pairs("val", limit, stride), pairs("test", limit, stride) if splits["test"] else None,
            pairs("train", limit or 64, None))


def compile_detector(net, strategy, lr: float) -> None:
    """Compile `net` for training under `strategy`: Adam at `lr`, sparse cross-entropy."""
    import keras

    with strategy.scope():
        net.compile(optimizer=keras.optimizers.Adam(learning_rate=float(lr)),
                    loss="sparse_categorical_crossentropy", metrics=["accuracy"])


def build_model(config) -> tuple:
    """`(model, strategy, geometry)`: the seeded, compiled detector, which must map square image
    tiles (its `ImageGeometry`) to [N, 2]."""
    import keras

    from edgetrunc.models import create

    keras.utils.set_random_seed(int(config.seed))
    strategy = make_strategy(config.strategy)
    with strategy.scope():
        try:
            net = create(config.model, seed=int(config.seed), **config.model_kwargs)
        except (TypeError, ValueError) as exc:
            raise InputError(f"model {config.model}: {exc}", param="model") from None
    compile_detector(net, strategy, config.lr)
    geometry = require_image_geometry(net, f"model={config.model}", "train")
    output_shape = tuple(net.output_shape[1:]) if not isinstance(net.output_shape, list) else None
    if output_shape != (2,):
        raise InputError(f"model {config.model}: output shape {output_shape}; train needs a "
                         "two-way (cover, stego) softmax detector [N, 2], e.g. tlunet", param="model")
    return net, strategy, geometry


def evaluate_pairs(model, pairs, batch_size: int = PREDICT_BATCH) -> dict:
    """`detection_report` of `model` (inference mode) on a `PairSet`, or on `StreamPairs`
    batch by batch."""
    if isinstance(pairs, StreamPairs):
        parts = [predict_probability(model, x, batch_size) for x in pairs.batches(EVAL_BATCH_PAIRS)]
        probs = np.concatenate(parts) if parts else np.zeros(0)
        return detection_report(pairs.y, probs, pairs.sources)
    return detection_report(pairs.y, predict_probability(model, pairs.x, batch_size), pairs.sources)


def training_batches(data, config, payload: float, epoch: int):
    """One epoch of numpy pair batches of all the training tiles (batch-norm statistics):
    `pair_batches` in memory, the streamed pipeline when the covers are streamed."""
    if not data.streamed:
        return pair_batches(data.tiles, payload, data.batch_size, seed=config.seed, epoch=epoch,
                            augment=config.augment, stego=config.stego)
    steps = len(data.tiles) // data.batch_size
    return stream_epoch_dataset(data.tiles, data.batch_size, steps, payload, config.seed, epoch,
                                config.augment, config.stego,
                                config.shuffle_buffer).as_numpy_iterator()


class _Progress:
    """A Keras callback showing a per-epoch progress bar on stderr."""

    def __new__(cls, total, desc):
        import keras

        class Callback(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.bar = _log.progress(range(total), desc=desc, total=total, unit="batch")
                self.iterator = iter(self.bar)

            def on_train_batch_end(self, batch, logs=None):
                next(self.iterator, None)
                if hasattr(self.bar, "set_postfix") and logs:
                    self.bar.set_postfix(loss=f"{float(logs.get('loss', 0)):.3f}",
                                         acc=f"{float(logs.get('accuracy', 0)):.3f}")

            def on_train_end(self, logs=None):
                if hasattr(self.bar, "close"):
                    self.bar.close()

        return Callback()


def _epoch_dataset(data, config, epoch: int, payload: float, worker: int = 0):
    """One epoch of pair batches as a prefetching `tf.data.Dataset` (worker `worker`'s share
    of the tiles, `data.steps` batches, when several workers train together)."""
    import tensorflow as tf

    if data.streamed:
        return stream_epoch_dataset(data.tiles, data.batch_size, data.steps, payload, config.seed,
                                    epoch, config.augment, config.stego, config.shuffle_buffer,
                                    worker, data.workers)
    images = 2 * data.batch_size
    tile_shape = data.tiles.tiles.shape[1:]  # [tile, tile] gray or [tile, tile, 3] RGB
    signature = (tf.TensorSpec((images, *tile_shape[:2], tile_shape[2] if len(tile_shape) == 3 else 1),
                               tf.float32),
                 tf.TensorSpec((images,), tf.int64))

    @kept_failures
    def generate():
        yield from pair_batches(worker_share(data.tiles, worker, data.workers), payload,
                                data.batch_size, seed=config.seed, epoch=epoch,
                                augment=config.augment, stego=config.stego)

    dataset = tf.data.Dataset.from_generator(generate, output_signature=signature).take(data.steps)
    return dataset.apply(tf.data.experimental.assert_cardinality(data.steps)).prefetch(2)


def _train_epoch(net, data, config, epoch: int, payload: float) -> tuple:
    """Train one epoch; returns its loss and training-mode accuracy (over all workers)."""
    desc = f"epoch {epoch + 1} ({payload:g} bpp)"
    strategy = net.distribute_strategy
    if is_multiworker(strategy):
        replicas = replicas_per_worker(strategy, data.workers, data.batch_size)
        dataset = distributed_epoch(
            strategy, lambda worker: _epoch_dataset(data, config, epoch, payload, worker), replicas)
        return train_steps(net, strategy, dataset, data.steps, data.images_per_epoch // data.steps,
                           desc)
    fit = net.fit(_epoch_dataset(data, config, epoch, payload), epochs=1, verbose=0,
                  shuffle=False, callbacks=[_Progress(data.steps, desc)])
    return fit.history["loss"][-1], fit.history["accuracy"][-1]


@dataclass
class EpochResult:
    """One trained epoch: its record row, validation report and training time."""

    row: dict
    val: dict
    val_running: dict | None
    probe: dict
    train_seconds: float
    seconds: float  # training and judging


def run_epoch(net, data, config, plan) -> EpochResult:
    """Train one epoch of `plan`, then judge the model in inference mode."""
    epoch, payload = plan.epoch, plan.payload
    t0 = time.monotonic()
    loss, accuracy = _train_epoch(net, data, config, epoch, payload)
    t_train = time.monotonic() - t0
    val_running = evaluate_pairs(net, data.val_pairs) if config.bn_reestimate != "none" else None
    if config.bn_reestimate == "epoch" and not plan.batchnorm_frozen:
        reestimate_batchnorm(net, training_batches(data, config, payload, 30_000 + epoch))
        val = evaluate_pairs(net, data.val_pairs)
    else:
        val = val_running if val_running is not None else evaluate_pairs(net, data.val_pairs)
    probe = evaluate_pairs(net, data.train_probe)
    seconds = time.monotonic() - t0
    row = {"epoch": epoch + 1, "payload": payload, "lr": plan.lr,
           "train_loss": float(loss),
           "train_accuracy_training_mode": float(accuracy),
           "train_inference": rounded_figures(probe),
           "val": rounded_figures(val),
           "val_running_bn_statistics": rounded_figures(val_running) if val_running else None,
           "val_per_photo_p_e": {k: v["p_e"] for k, v in val["per_source"].items()},
           "seconds": time.monotonic() - t0,
           "images_per_second": data.images_per_epoch / t_train if t_train else None}
    return EpochResult(row=row, val=val, val_running=val_running, probe=probe,
                       train_seconds=t_train, seconds=seconds)


def _log_epoch(result: EpochResult, improved: bool) -> None:
    row, val, running, probe = result.row, result.val, result.val_running, result.probe
    _log.info(f"epoch {row['epoch']}: {row['payload']:g} bpp, lr {row['lr']:.2e}, "
              f"loss {row['train_loss']:.4f}, train acc {row['train_accuracy_training_mode']:.3f} "
              f"(inference mode {probe['accuracy']:.3f}), val acc {val['accuracy']:.3f} "
              f"P_E {val['p_e']:.3f} (per-photo mean {val['p_e_photo_mean']:.3f})"
              + (f" [running BN statistics: acc {running['accuracy']:.3f}, P_E "
                 f"{running['p_e']:.3f}]" if running is not val and running else "")
              + f"{' *' if improved else ''}, {row['images_per_second']:.0f} img/s")


def _freeze(net, strategy, data, config, run: TrainingRun, plan) -> None:
    """Start the frozen-BN phase: back to the best weights, statistics re-estimated, frozen."""
    if run.best_weights is not None:
        net.set_weights(run.best_weights)
    used = freeze_batchnorm(net, training_batches(data, config, config.payload, 20_000))
    compile_detector(net, strategy, plan.lr)
    _log.info(f"epoch {plan.epoch + 1}: batch-norm statistics re-estimated on {used} batches "
              "and frozen; training goes on in inference mode")


def fit_epochs(net, strategy, data, config, started: float, checkpoint) -> TrainingRun:
    """Run the epochs the schedule plans; the best weights (at the target payload) are kept
    and saved to `checkpoint` as they improve (None: not saved, as on a worker that is not
    the chief). `started` is the run's `time.monotonic()`. Across machines, every worker
    decides with the chief's elapsed time and validation score, so all run the same epochs.
    A cover that vanished or changed during a streamed epoch, and a worker of the cluster
    that stopped answering, end the run with one line (`InputError`)."""
    import tensorflow as tf

    try:
        return _fit_epochs(net, strategy, data, config, started, checkpoint)
    except tf.errors.OpError as exc:
        failure = read_failure()
        if failure is not None:
            raise failure from None
        lost = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                tf.errors.CancelledError, tf.errors.AbortedError)
        if not isinstance(exc, lost) or not is_multiworker(strategy):
            raise
        raise InputError(f"strategy multiworker: a worker of the cluster stopped answering "
                         f"({first_line(exc)}); every worker must run to the end: start them "
                         "all again", param="strategy") from None


def _fit_epochs(net, strategy, data, config, started: float, checkpoint) -> TrainingRun:
    run = TrainingRun(Schedule(config.stages, config.epochs, config.stage_epochs, config.lr,
                               config.lr_schedule, config.patience, config.frozen_bn_fraction,
                               config.time_budget))
    schedule = run.schedule
    for epoch in range(int(config.epochs)):
        plan = schedule.begin(epoch, chief_values(strategy, [time.monotonic() - started])[0])
        if plan is None:
            break
        if plan.freeze_batchnorm:
            _freeze(net, strategy, data, config, run, plan)
        net.optimizer.learning_rate.assign(plan.lr)
        result = run_epoch(net, data, config, plan)
        run.trained_images += data.images_per_epoch
        run.train_seconds += result.train_seconds
        *score, seconds = chief_values(strategy, [*selection_score(result.val), result.seconds])
        improved = schedule.finish(tuple(score), seconds)
        if improved:
            run.best_weights, run.best_epoch = net.get_weights(), schedule.best_epoch
            if checkpoint is not None:
                net.save(checkpoint)
        result.row["best"] = improved
        run.history.append(result.row)
        _log_epoch(result, improved)
        if schedule.stopped:
            break
    if run.best_weights is None:
        run.best_weights, run.best_epoch = net.get_weights(), len(run.history)
    return run
