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
"""

from __future__ import annotations

import math
import os
import platform
import time
from pathlib import Path

import numpy as np

from edgetrunc import _log
from edgetrunc._io import atomic_path, require_writable_dir, sha256_file, write_json_atomic
from edgetrunc.data.covers import resolve_covers
from edgetrunc.data.dataset import check_payload, load_pairs, pair_batches, training_tiles
from edgetrunc.data.splits import DEFAULT_FRACTIONS, split_sources
from edgetrunc.errors import InputError
from edgetrunc.metrics import detection_report

STRATEGIES = ("default", "mirrored")
LR_SCHEDULES = ("cosine", "plateau", "constant")
EVAL_STRIDE = 128


def record_path(model_path) -> Path:
    """`models/tlunet.keras` -> `models/tlunet.training.json`."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.name[: -len(model_path.suffix)] + ".training.json")


def parse_curriculum(curriculum, payload: float) -> list[float]:
    """`"1.0,0.7,0.4"` (or a list) -> payload stages ending at `payload`."""
    if curriculum in (None, "", []):
        return [payload]
    items = curriculum.split(",") if isinstance(curriculum, str) else list(curriculum)
    try:
        stages = [float(item) for item in items if str(item).strip()]
    except ValueError:
        raise InputError(f"--curriculum: expected payloads like 1.0,0.7,0.4; got {curriculum!r}") from None
    for value in stages:
        if not 0 < value <= 1:
            raise InputError(f"--curriculum: payload {value} outside (0, 1] bits per pixel")
    if any(b > a for a, b in zip(stages, stages[1:])):
        raise InputError(f"--curriculum: payloads must go down to the target; got {curriculum!r}")
    if stages[-1] < payload:
        raise InputError(f"--curriculum: ends at {stages[-1]} below the target payload {payload}")
    if stages[-1] != payload:
        stages.append(payload)
    return stages


def parse_model_args(items) -> dict:
    """`["front_end=srm6", "width=2"]` -> `{"front_end": "srm6", "width": 2}`."""
    kwargs = {}
    for item in items or ():
        if isinstance(item, tuple):
            key, value = item
        else:
            if "=" not in item:
                raise InputError(f"--model-arg: expected KEY=VALUE; got {item!r}")
            key, value = item.split("=", 1)
            value = _literal(value)
        kwargs[key.strip()] = value
    return kwargs


def _literal(text):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text in ("True", "true"):
        return True
    if text in ("False", "false"):
        return False
    return text


def check_output(out, force: bool) -> Path:
    out = Path(out)
    if out.suffix != ".keras":
        raise InputError(f"{out}: output must end in .keras")
    if out.exists() and out.is_dir():
        raise InputError(f"{out}: is a folder; expected a .keras file path")
    if out.exists() and not force:
        raise InputError(f"{out}: exists; pass --force to replace it")
    require_writable_dir(out.parent if str(out.parent) else Path("."))
    if not os.access(out.parent if str(out.parent) else ".", os.W_OK):
        raise InputError(f"{out.parent}: output folder is not writable")
    return out


def package_versions() -> dict:
    import keras
    import tensorflow as tf

    from edgetrunc._version import __version__

    return {"edgetrunc": __version__, "python": platform.python_version(),
            "numpy": np.__version__, "tensorflow": tf.__version__, "keras": keras.__version__,
            "platform": platform.platform()}


def make_strategy(name: str):
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name.startswith("one:"):
        return tf.distribute.OneDeviceStrategy(name.split(":", 1)[1])
    raise InputError(f"--strategy: expected default, mirrored or one:DEVICE; got {name!r}")


def predict_stego(model, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Stego probability `[N]` of `x` in inference mode (batch norm on running statistics)."""
    import tensorflow as tf

    infer = getattr(model, "_edgetrunc_infer", None)
    if infer is None:
        infer = tf.function(lambda batch: model(batch, training=False), reduce_retracing=True)
        model._edgetrunc_infer = infer
    outputs = []
    for start in range(0, len(x), batch_size):
        outputs.append(np.asarray(infer(tf.constant(x[start:start + batch_size]))))
    probs = np.concatenate(outputs) if outputs else np.zeros((0, 2), np.float32)
    return probs[:, 1] if probs.ndim == 2 and probs.shape[1] == 2 else probs.reshape(-1)


def evaluate_pairs(model, pairs, batch_size: int = 32) -> dict:
    """`detection_report` of `model` (inference mode) on a `PairSet`."""
    return detection_report(pairs.y, predict_stego(model, pairs.x, batch_size), pairs.sources)


def reestimate_batchnorm(model, batches, max_batches: int = 8) -> int:
    """Set every BatchNormalization's running statistics to their average over `batches`.

    "Precise BN": the model runs in training mode (each layer normalizes with the batch
    statistics, as during training); each layer's batch mean and variance are averaged over
    up to `max_batches` batches and written as its moving mean and variance. Weights are
    not touched. Layers frozen in inference mode (`trainable=False`) are left as they are.
    Returns the number of batches used.
    """
    import keras
    import tensorflow as tf

    bn_layers = [layer for layer in model.layers
                 if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]
    if not bn_layers:
        return 0
    probe = getattr(model, "_edgetrunc_bn_probe", None)
    if probe is None or probe[0] != [layer.name for layer in bn_layers]:
        inputs_of = keras.Model(model.inputs, [layer.input for layer in bn_layers])

        def moments(x):
            outs = inputs_of(x, training=True)
            outs = outs if isinstance(outs, (list, tuple)) else [outs]
            return [tf.nn.moments(o, axes=list(range(len(o.shape) - 1))) for o in outs]

        probe = ([layer.name for layer in bn_layers],
                 tf.function(moments, reduce_retracing=True, autograph=False))
        model._edgetrunc_bn_probe = probe
    saved = [(np.asarray(layer.moving_mean), np.asarray(layer.moving_variance))
             for layer in bn_layers]
    sums, used = None, 0
    for x, _ in batches:
        if used >= max_batches:
            break
        stats = [(np.asarray(m, np.float64), np.asarray(v, np.float64)) for m, v in probe[1](x)]
        sums = stats if sums is None else [(a + m, b + v) for (a, b), (m, v) in zip(sums, stats)]
        used += 1
    for layer, (mean0, var0) in zip(bn_layers, saved):
        layer.moving_mean.assign(mean0)
        layer.moving_variance.assign(var0)
    if used:
        for layer, (mean_sum, var_sum) in zip(bn_layers, sums):
            layer.moving_mean.assign((mean_sum / used).astype(np.float32))
            layer.moving_variance.assign((var_sum / used).astype(np.float32))
    return used


def selection_score(report: dict) -> tuple:
    """Sort key of a validation report (lower is better): the photo-weighted P_E, then the
    pooled P_E, then the mean of the per-photo AUCs (higher is better) to break ties."""
    aucs = [f["auc"] for f in report.get("per_source", {}).values()
            if f["auc"] is not None and not math.isnan(f["auc"])]
    return (round(report["p_e_photo_mean"], 6), round(report["p_e"], 6),
            -float(np.mean(aucs)) if aucs else 0.0)


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


def _round(report: dict, keys=("accuracy", "auc", "p_e", "p_e_photo_mean")) -> dict:
    return {k: (None if report.get(k) is None or (isinstance(report[k], float) and math.isnan(report[k]))
                else round(float(report[k]), 4)) for k in keys if k in report}


def _clean(obj):
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        value = float(obj)
        return None if math.isnan(value) else round(value, 5)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def train(model: str = "tlunet", covers="embedded", payload: float = 0.4, epochs: int = 30,
          batch_size: int = 16, lr: float = 1e-3, patience: int = 8, curriculum=None,
          stage_epochs: int = 2, max_tiles: int | None = None, stride: int | None = None,
          strategy: str = "default", out="models/tlunet.keras", seed: int = 0,
          force: bool = False, time_budget: float | None = None, model_kwargs=None,
          lr_schedule: str = "cosine", eval_stride: int | None = EVAL_STRIDE,
          max_eval_pairs: int | None = None, bn_reestimate: str = "epoch",
          fractions=DEFAULT_FRACTIONS, augment: bool = True, frozen_bn_fraction: float = 0.0,
          command: str | None = None) -> dict:
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
        stride: training tile stride in pixels (default 256; 64 gives 16x more tiles).
        strategy: `"default"`, `"mirrored"` or `"one:DEVICE"` (tf.distribute).
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

    Returns the training record (also written as JSON beside the model).
    """
    started = time.monotonic()
    payload = check_payload(payload)
    if int(epochs) < 1:
        raise InputError(f"--epochs: expected >= 1; got {epochs}")
    if int(batch_size) < 1:
        raise InputError(f"--batch-size: expected >= 1; got {batch_size}")
    if not (lr > 0 and math.isfinite(lr)):
        raise InputError(f"--lr: expected a positive learning rate; got {lr}")
    if strategy not in STRATEGIES and not str(strategy).startswith("one:"):
        raise InputError(f"--strategy: expected default, mirrored or one:DEVICE; got {strategy!r}")
    if lr_schedule not in LR_SCHEDULES:
        raise InputError(f"--lr-schedule: expected one of {', '.join(LR_SCHEDULES)}; got {lr_schedule!r}")
    if bn_reestimate not in ("epoch", "end", "none"):
        raise InputError(f"--bn-reestimate: expected epoch, end or none; got {bn_reestimate!r}")
    if not 0 <= frozen_bn_fraction < 1:
        raise InputError(f"--frozen-bn: expected a fraction in [0, 1); got {frozen_bn_fraction}")
    if time_budget is not None and not time_budget > 0:
        raise InputError(f"--time-budget: expected minutes > 0; got {time_budget}")
    stages = parse_curriculum(curriculum, payload)
    model_kwargs = parse_model_args(model_kwargs.items() if isinstance(model_kwargs, dict)
                                    else model_kwargs)
    out = check_output(out, force)
    record_file = record_path(out)

    all_covers = resolve_covers(covers)
    splits = split_sources(all_covers, seed=seed, fractions=fractions)
    for name in ("train", "val"):
        if not splits[name]:
            raise InputError(f"covers: {len(all_covers)} usable photo(s) leave the {name} split "
                             "empty; give at least 3 cover images")
    by_name = {c.name: c for c in all_covers}
    train_covers = [by_name[n] for n in splits["train"]]
    tiles = training_tiles(train_covers, stride=stride, max_tiles=max_tiles, seed=seed)
    batch_size = min(int(batch_size), len(tiles))
    val_pairs = load_pairs(all_covers, "val", payload, seed, max_eval_pairs, eval_stride, fractions)
    test_pairs = (load_pairs(all_covers, "test", payload, seed, max_eval_pairs, eval_stride, fractions)
                  if splits["test"] else None)
    train_probe = load_pairs(all_covers, "train", payload, seed, max_eval_pairs or 64, None,
                             fractions)
    _log.info(f"covers: {len(all_covers)} photos; train {len(splits['train'])} "
              f"({len(tiles)} tiles, stride {stride or 256}), val {len(splits['val'])} "
              f"({val_pairs.n_pairs} pairs), test {len(splits['test'])} "
              f"({test_pairs.n_pairs if test_pairs else 0} pairs); payload {payload} bpp")

    import keras
    import tensorflow as tf

    from edgetrunc.models import create

    keras.utils.set_random_seed(int(seed))
    dist = make_strategy(strategy)
    with dist.scope():
        try:
            net = create(model, seed=int(seed), **model_kwargs)
        except (TypeError, ValueError) as exc:
            raise InputError(f"--model {model}: {exc}") from None
        optimizer = keras.optimizers.Adam(learning_rate=float(lr))
        net.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                    metrics=["accuracy"])
    input_shape = tuple(net.input_shape[1:])
    if input_shape[:2] != (256, 256):
        raise InputError(f"--model {model}: input shape {input_shape}; expected 256x256 tiles")
    output_shape = tuple(net.output_shape[1:]) if not isinstance(net.output_shape, list) else None
    if output_shape != (2,):
        raise InputError(f"--model {model}: output shape {output_shape}; train needs a two-way "
                         "(cover, stego) softmax detector [N, 2], e.g. tlunet")

    images_per_batch = 2 * batch_size
    steps = len(tiles) // batch_size
    signature = (tf.TensorSpec((images_per_batch, 256, 256, 1), tf.float32),
                 tf.TensorSpec((images_per_batch,), tf.int64))

    def epoch_dataset(epoch, stage_payload):
        def generate():
            yield from pair_batches(tiles, stage_payload, batch_size, seed=seed, epoch=epoch,
                                    augment=augment)
        dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
        return dataset.apply(tf.data.experimental.assert_cardinality(steps)).prefetch(2)

    checkpoint = out.with_name(f".{out.name}.best.keras")
    history, best = [], {"score": None, "epoch": None, "weights": None}
    stage_index, stage_start, waited, plateau_wait = 0, 0, 0, 0
    current_lr, planned_epochs = float(lr), int(epochs)
    budget_s = None if time_budget is None else float(time_budget) * 60
    epoch_times, stop_reason = [], "max epochs"
    trained_images, train_seconds = 0, 0.0
    frozen_from, freeze_now = None, False
    for epoch in range(int(epochs)):
        elapsed = time.monotonic() - started
        if budget_s is not None and epoch_times:
            reserve = max(epoch_times[-3:]) + 30
            if elapsed + reserve > budget_s:
                stop_reason = f"time budget ({time_budget:g} min)"
                break
            planned_epochs = min(int(epochs), epoch + int((budget_s - elapsed - 30)
                                                          / np.mean(epoch_times[-3:])))
        final_stage = stage_index == len(stages) - 1
        if not final_stage and epoch - stage_start >= stage_epochs:
            stage_index, stage_start = stage_index + 1, epoch
            final_stage = stage_index == len(stages) - 1
        stage_payload = stages[stage_index]
        if (final_stage and frozen_from is None and frozen_bn_fraction > 0 and (freeze_now or
                epoch >= stage_start + (planned_epochs - stage_start) * (1 - frozen_bn_fraction))):
            frozen_from = epoch + 1
            if best["weights"] is not None:
                net.set_weights(best["weights"])
            used = reestimate_batchnorm(net, pair_batches(tiles, payload, batch_size, seed=seed,
                                                          epoch=20_000, augment=augment))
            with dist.scope():
                for layer in net.layers:
                    if isinstance(layer, keras.layers.BatchNormalization):
                        layer.trainable = False
                net.compile(optimizer=keras.optimizers.Adam(learning_rate=current_lr),
                            loss="sparse_categorical_crossentropy", metrics=["accuracy"])
            waited = plateau_wait = 0
            _log.info(f"epoch {epoch + 1}: batch-norm statistics re-estimated on {used} batches "
                      "and frozen; training goes on in inference mode")
        if lr_schedule == "cosine":
            first = stage_start if final_stage else 0
            span = max(1, planned_epochs - first)
            progress = (epoch - first) / span if final_stage else 0.0
            current_lr = float(lr) * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))
        net.optimizer.learning_rate.assign(current_lr)
        t0 = time.monotonic()
        fit = net.fit(epoch_dataset(epoch, stage_payload), epochs=1, verbose=0, shuffle=False,
                      callbacks=[_Progress(steps, f"epoch {epoch + 1} ({stage_payload:g} bpp)")])
        t_train = time.monotonic() - t0
        trained_images += steps * images_per_batch
        train_seconds += t_train
        val_running = evaluate_pairs(net, val_pairs) if bn_reestimate != "none" else None
        if bn_reestimate == "epoch" and frozen_from is None:
            reestimate_batchnorm(net, pair_batches(tiles, stage_payload, batch_size, seed=seed,
                                                   epoch=30_000 + epoch, augment=augment))
            val = evaluate_pairs(net, val_pairs)
        else:
            val = val_running if val_running is not None else evaluate_pairs(net, val_pairs)
        probe = evaluate_pairs(net, train_probe)
        epoch_times.append(time.monotonic() - t0)
        score = selection_score(val)
        row = {"epoch": epoch + 1, "payload": stage_payload, "lr": current_lr,
               "train_loss": float(fit.history["loss"][-1]),
               "train_accuracy_training_mode": float(fit.history["accuracy"][-1]),
               "train_inference": _round(probe),
               "val": _round(val),
               "val_running_bn_statistics": _round(val_running) if val_running else None,
               "val_per_photo_p_e": {k: v["p_e"] for k, v in
                                                         val["per_source"].items()},
               "seconds": time.monotonic() - t0,
               "images_per_second": steps * images_per_batch / t_train if t_train else None}
        improved = False
        if final_stage:
            if best["score"] is None or score < best["score"]:
                best.update(score=score, epoch=epoch + 1, weights=net.get_weights())
                improved = True
                waited = plateau_wait = 0
                net.save(checkpoint)
            else:
                waited += 1
                plateau_wait += 1
        row["best"] = improved
        history.append(row)
        _log.info(f"epoch {epoch + 1}: {stage_payload:g} bpp, lr {current_lr:.2e}, "
                  f"loss {row['train_loss']:.4f}, train acc {row['train_accuracy_training_mode']:.3f} "
                  f"(inference mode {probe['accuracy']:.3f}), val acc {val['accuracy']:.3f} "
                  f"P_E {val['p_e']:.3f} (per-photo mean {val['p_e_photo_mean']:.3f})"
                  + (f" [running BN statistics: acc {val_running['accuracy']:.3f}, P_E "
                     f"{val_running['p_e']:.3f}]" if val_running is not val and val_running else "")
                  + f"{' *' if improved else ''}, {row['images_per_second']:.0f} img/s")
        if lr_schedule == "plateau" and plateau_wait >= max(2, patience // 3):
            current_lr, plateau_wait = current_lr * 0.5, 0
        if final_stage and waited >= patience:
            if frozen_bn_fraction > 0 and frozen_from is None:
                freeze_now = True
                continue
            stop_reason = f"early stopping (no better validation P_E for {patience} epochs)"
            break
    else:
        stop_reason = "max epochs"

    if best["weights"] is None:
        best.update(score=score, epoch=len(history), weights=net.get_weights())
    net.set_weights(best["weights"])
    val_best = evaluate_pairs(net, val_pairs)
    bn_record = {"done": False, "mode": bn_reestimate}
    if bn_reestimate == "epoch":
        bn_record = {"done": True, "mode": "epoch",
                     "note": "statistics re-estimated on 8 training batches after every epoch; "
                             "each epoch's validation with the running statistics is in "
                             "epochs[].val_running_bn_statistics"}
    if frozen_from is not None:
        bn_record = {"done": True, "at_epoch": frozen_from,
                     "note": "re-estimated, then frozen for the last epochs"}
    elif bn_reestimate == "end":
        before = _round(val_best)
        used = reestimate_batchnorm(net, pair_batches(tiles, payload, batch_size, seed=seed,
                                                      epoch=10_000, augment=augment))
        val_after = evaluate_pairs(net, val_pairs)
        after = _round(val_after)
        kept = selection_score(val_after) <= selection_score(val_best)
        bn_record = {"done": True, "batches": used, "val_before": before, "val_after": after,
                     "kept": bool(kept)}
        if kept:
            val_best = val_after
        else:
            net.set_weights(best["weights"])
        _log.info(f"batch-norm statistics re-estimated on {used} batches: val P_E "
                  f"{before['p_e']} -> {after['p_e']} (per-photo mean {before['p_e_photo_mean']} "
                  f"-> {after['p_e_photo_mean']}); {'kept' if kept else 'discarded'}")
    test = evaluate_pairs(net, test_pairs) if test_pairs is not None else None
    wall = time.monotonic() - started

    with atomic_path(out) as tmp:
        net.save(tmp)
        digest = sha256_file(tmp)
    if checkpoint.exists():
        checkpoint.unlink()

    record = {
        "model_file": out.name, "model_sha256": digest,
        "command": command,
        "config": {"model": model, "model_kwargs": model_kwargs, "payload": payload,
                   "curriculum": stages, "stage_epochs": stage_epochs, "epochs": int(epochs),
                   "batch_pairs": batch_size, "lr": float(lr), "lr_schedule": lr_schedule,
                   "patience": patience, "stride": stride or 256, "max_tiles": max_tiles,
                   "eval_stride": eval_stride or 256, "max_eval_pairs": max_eval_pairs,
                   "augment": augment, "bn_reestimate": bn_reestimate,
                   "frozen_bn_fraction": frozen_bn_fraction, "strategy": strategy,
                   "replicas": int(dist.num_replicas_in_sync), "time_budget_min": time_budget,
                   "fractions": list(fractions)},
        "seed": int(seed),
        "versions": package_versions(),
        "parameters": int(net.count_params()),
        "data": {"covers": covers if isinstance(covers, str) else "list",
                 "photos": len(all_covers), "split": splits,
                 "train_tiles": len(tiles), "train_tiles_per_photo": tiles.tiles_per_photo(),
                 "val_pairs": val_pairs.n_pairs, "val_pairs_per_photo": val_pairs.tiles_per_photo(),
                 "test_pairs": test_pairs.n_pairs if test_pairs else 0,
                 "test_pairs_per_photo": test_pairs.tiles_per_photo() if test_pairs else {},
                 "photo_notes": {c.name: c.describe() for c in all_covers}},
        "epochs": history,
        "stop_reason": stop_reason,
        "best_epoch": best["epoch"],
        "bn_frozen_from_epoch": frozen_from,
        "batchnorm_reestimation": bn_record,
        "val": val_best,
        "test": test,
        "wall_seconds": wall,
        "train_seconds": train_seconds,
        "images_per_second": trained_images / train_seconds if train_seconds else None,
        "trained_images": trained_images,
    }
    record = _clean(record)
    write_json_atomic(record_file, record)
    if test is not None:
        _log.info(f"test ({test_pairs.n_pairs} pairs, {len(splits['test'])} photos): "
                  f"accuracy {test['accuracy']:.3f}, AUC {test['auc']:.3f}, P_E {test['p_e']:.3f}, "
                  f"per-photo mean P_E {test['p_e_photo_mean']:.3f}")
    _log.info(f"wrote {out} and {record_file} ({wall / 60:.1f} min)")
    return record
