"""Quantization-aware fine-tuning of a trained detector (`edgetrunc train --qat`).

`fine_tune_qat` loads a `.keras` detector, makes its quantization-aware clone
(`keras.qat.quantize_model`: fake-quantized weights and activations with the ranges the
full-integer converter uses, batch normalization frozen, the stego logit as its output),
calibrates the tracked ranges on the converter's own calibration pairs, fine-tunes it for a
few short epochs on cover/stego training tiles, and writes the result, which loads in safe
mode and converts with `convert --tflite int8-full`. The fine-tuning distils the float
model: its target on each tile is the float model's stego probability (cross-entropy of the
quantization-aware logit against it), so the integer model learns to decide as the float
one does, not to re-fit the labels. Its record (JSON beside the model) gives the
held-out detection figures of the float model and of the fine-tuned one, and their decision
agreement before and after the fine-tuning; a fine-tuning that lowered it below
`MIN_DECISION_AGREEMENT` (too high a learning rate for the model) is warned of in one line.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from edgetrunc import _log
from edgetrunc._io import atomic_path, check_output, write_text_atomic
from edgetrunc.errors import InputError
from edgetrunc.metrics import MIN_DECISION_AGREEMENT, decision_agreement

QAT_LR = 1e-4
QAT_EPOCHS = 3
QAT_TRAIN_PAIRS = 256


def _pairs(covers, geometry, payload, seed, model, max_pairs):
    from edgetrunc.data.dataset import load_pairs
    from edgetrunc.export import calibration as calib_data

    train = load_pairs(covers=covers, split="train", payload=payload, seed=seed + 1,
                       max_pairs=max_pairs, stride=max(1, geometry.tile // 4),
                       tile=geometry.tile, channels=geometry.channels)
    held_out = calib_data.held_out_pairs(covers, geometry, model)
    return train, held_out


def _float_targets(model, x, batch_size: int = 16) -> np.ndarray:
    """The float model's stego probability `[N, 1]` on `x`: the distillation targets."""
    from edgetrunc.keras.runner import predict_probability

    return predict_probability(model, x, batch_size=batch_size).astype(np.float32)[:, None]


def _figures(model, pairs) -> tuple:
    from edgetrunc.keras.runner import predict_probability
    from edgetrunc.metrics import detection_report

    probability = predict_probability(model, pairs.x, batch_size=16)
    report = detection_report(pairs.y, probability, pairs.sources)
    return probability, {"accuracy": round(float(report["accuracy"]), 4),
                         "p_e": round(float(report["p_e"]), 4)}


def _agreement(float_probability, probability) -> float:
    return float(decision_agreement(float_probability, probability)["decision_agreement"])


def fine_tune_qat(source, out, covers="embedded", payload=0.4, epochs=QAT_EPOCHS, lr=QAT_LR,
                  max_pairs=QAT_TRAIN_PAIRS, batch_size=16, seed=0, force=False) -> dict:
    """Fine-tune the detector at `source` with quantization-aware training; write it to
    `out` (and `<out stem>.qat.json`, its record). Returns the record."""
    import keras

    from edgetrunc.data.geometry import require_image_geometry
    from edgetrunc.export import calibration as calib_data
    from edgetrunc.keras.load import load_keras_model
    from edgetrunc.keras.qat import calibrate_ranges, quantize_model

    source, out = Path(source), Path(out)
    record_path = out.with_name(f"{out.stem}.qat.json")
    for target in (out, record_path):
        if target.exists() and not force:
            raise InputError(f"{target}: exists; expected a new output (or force=True)", param="out")
        check_output(target, protect=[source])
    if epochs < 1 or lr <= 0 or max_pairs < 1:
        raise InputError(f"epochs {epochs}, lr {lr}, max_pairs {max_pairs}: expected positive values")
    started = time.perf_counter()
    model = load_keras_model(source, safe_mode=True)
    geometry = require_image_geometry(model, source.name, "quantization-aware training")
    keras.utils.set_random_seed(int(seed))
    train, held_out = _pairs(covers, geometry, payload, int(seed), model, max_pairs)
    float_probability, float_figures = _figures(model, held_out)
    qat = quantize_model(model)
    # the tiles the converter calibrates the quantization-aware model file on (fewer for more layers)
    calibration = calib_data.calibration_pairs(covers, geometry, model=qat)
    calibrate_ranges(qat, calibration.x)
    before = _agreement(float_probability, _figures(qat, held_out)[0])
    qat.compile(optimizer=keras.optimizers.Adam(learning_rate=float(lr)),
                loss=keras.losses.BinaryCrossentropy(from_logits=True))
    _log.info(f"train --qat: {len(train.x)} tiles, {epochs} epoch(s), lr {lr}")
    history = qat.fit(train.x, _float_targets(model, train.x, batch_size), epochs=int(epochs),
                      batch_size=int(batch_size), shuffle=True, verbose=0)
    calibrate_ranges(qat, calibration.x)  # the converter calibrates on these tiles too
    qat_probability, qat_figures = _figures(qat, held_out)
    with atomic_path(out, protect=[source]) as tmp:
        qat.save(tmp)
    agreement = _agreement(float_probability, qat_probability)
    if agreement < min(before, MIN_DECISION_AGREEMENT):
        _log.warn(f"train --qat: the fine-tuning lowered the held-out decision agreement with the "
                  f"float model from {before:.3f} to {agreement:.3f}; try a lower --qat-lr than {lr:g}")
    record = {
        "source": str(source), "model_file": str(out), "epochs": int(epochs), "lr": float(lr),
        "train_tiles": int(len(train.x)), "calibration_tiles": int(len(calibration.x)),
        "target": "the float model's stego probability (distillation)", "loss": [round(float(v), 5) for v in history.history["loss"]],
        "held_out": {"samples": int(len(held_out.x)), "float": float_figures, "qat": qat_figures,
                     "decision_agreement_with_float": round(agreement, 4),
                     "decision_agreement_before_fine_tuning": round(before, 4)},
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    write_text_atomic(record_path, json.dumps(record, indent=2) + "\n", protect=[source])
    return record
