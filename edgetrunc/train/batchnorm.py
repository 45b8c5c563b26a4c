"""Batch-normalization statistics of a model in training: re-estimation, freezing, the final choice.

`reestimate_batchnorm` ("precise BN") sets every trainable BatchNormalization layer's running
statistics to their average over a few training batches; `freeze_batchnorm` re-estimates them
and puts the layers in inference mode for the last phase of training; `finalize_batchnorm`
judges the best weights on the validation pairs once training ends and, in mode "end",
re-estimates the statistics and keeps them only when validation does not get worse.
Imports TensorFlow / Keras inside the functions.
"""

from __future__ import annotations

import numpy as np

from edgetrunc import _log
from edgetrunc.train.record import rounded_figures
from edgetrunc.train.schedule import selection_score

MAX_BATCHES = 8


def reestimate_batchnorm(model, batches, max_batches: int = MAX_BATCHES) -> int:
    """Set every BatchNormalization's running statistics to their average over `batches`.

    "Precise BN": the model runs in training mode (each layer normalizes with the batch
    statistics, as during training); each layer's batch mean and variance are averaged over
    up to `max_batches` batches and written as its moving mean and variance. Weights are
    not touched. Layers frozen in inference mode (`trainable=False`) are left as they are.
    Returns the number of batches used.
    """
    import keras

    bn_layers = [layer for layer in model.layers
                 if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]
    if not bn_layers:
        return 0
    moments = _moments_probe(model, bn_layers)
    saved = [(np.asarray(layer.moving_mean), np.asarray(layer.moving_variance))
             for layer in bn_layers]
    sums, used = None, 0
    for x, _ in batches:
        if used >= max_batches:
            break
        stats = [(np.asarray(m, np.float64), np.asarray(v, np.float64)) for m, v in moments(x)]
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


def _moments_probe(model, bn_layers):
    """A compiled function: batch -> (mean, variance) of each layer's input in training mode,
    made once per model and set of layers and kept on the model."""
    import keras
    import tensorflow as tf

    names = [layer.name for layer in bn_layers]
    probe = getattr(model, "_edgetrunc_bn_probe", None)
    if probe is None or probe[0] != names:
        inputs_of = keras.Model(model.inputs, [layer.input for layer in bn_layers])

        def moments(x):
            outs = inputs_of(x, training=True)
            outs = outs if isinstance(outs, (list, tuple)) else [outs]
            return [tf.nn.moments(o, axes=list(range(len(o.shape) - 1))) for o in outs]

        probe = (names, tf.function(moments, reduce_retracing=True, autograph=False))
        model._edgetrunc_bn_probe = probe
    return probe[1]


def freeze_batchnorm(model, batches) -> int:
    """Re-estimate the statistics on `batches`, then put every BatchNormalization layer in
    inference mode (`trainable=False`). The model must be compiled again afterwards.
    Returns the number of batches used."""
    import keras

    used = reestimate_batchnorm(model, batches)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    return used


def finalize_batchnorm(model, mode: str, frozen_from, best_weights, batches, validate) -> tuple:
    """The batch-norm step after training, on a model holding its best weights.

    `validate()` scores the model on the validation pairs. Mode "end" (and batch norm not
    frozen during training): re-estimate on `batches`, kept only when the validation score
    does not get worse, else the `best_weights` are put back. Returns `(record, validation
    report of the model as it is kept)`; the record says what was done.
    """
    val_best = validate()
    bn_record = {"done": False, "mode": mode}
    if mode == "epoch":
        bn_record = {"done": True, "mode": "epoch",
                     "note": "statistics re-estimated on 8 training batches after every epoch; "
                             "each epoch's validation with the running statistics is in "
                             "epochs[].val_running_bn_statistics"}
    if frozen_from is not None:
        bn_record = {"done": True, "at_epoch": frozen_from,
                     "note": "re-estimated, then frozen for the last epochs"}
    elif mode == "end":
        before = rounded_figures(val_best)
        used = reestimate_batchnorm(model, batches)
        val_after = validate()
        after = rounded_figures(val_after)
        kept = selection_score(val_after) <= selection_score(val_best)
        bn_record = {"done": True, "batches": used, "val_before": before, "val_after": after,
                     "kept": bool(kept)}
        if kept:
            val_best = val_after
        else:
            model.set_weights(best_weights)
        _log.info(f"batch-norm statistics re-estimated on {used} batches: val P_E "
                  f"{before['p_e']} -> {after['p_e']} (per-photo mean {before['p_e_photo_mean']} "
                  f"-> {after['p_e_photo_mean']}); {'kept' if kept else 'discarded'}")
    return bn_record, val_best
