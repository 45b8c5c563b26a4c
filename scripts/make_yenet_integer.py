#!/usr/bin/env python3
"""The 512x512 Ye-Net-pattern fixture of the full-integer path, made and measured end to end.

`python -m scripts.make_yenet_integer [--out build/yenet512] [--qat-epochs 1] [--qat-pairs 16]`

1. Builds the fixture: 512x512x1 input, the 30 basic SRM high-pass filters as a fixed 5x5
   convolution (`models._filters`, bank "srm30", each stored exactly by the converter), a
   truncation to [-3, 3], then Ye-Net's body (three 3x3 convolutions of 30 filters at full
   resolution, four convolution + average-pool stages, global average, two-way softmax;
   `make_foreign_models._yenet_body`). The body's weights are random (seeded); the
   classifier alone is trained briefly (a linear discriminant of cover and stego on the
   calibration tiles' features, `fit_head`), so that the stego logit spreads over a few units
   around 0 (a random head leaves every tile within 1e-3 of 0.5, and a head that separates
   photos instead of cover and stego puts every decision far from the threshold; in neither
   does agreement of decisions measure anything).
2. Fine-tunes it quantization-aware (`edgetrunc.train.qat.fine_tune_qat`, distilling the
   float model) and converts it with `--tflite int8-full --target ethos-u`.
3. Prints the held-out figures BENCHMARKS.md records: decision agreement of the artifact with
   its quantization-aware Keras model and with the float model, and the three P_E.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

SIZE = 512
LOGIT_SPREAD = 2.0  # std of the fixture's stego logit on its calibration tiles


def build(seed: int = 0):
    """The float fixture (see the module docstring), before its head is scaled."""
    import keras

    from edgetrunc.layers import Truncation
    from edgetrunc.models._filters import high_pass_bank
    from scripts.make_foreign_models import _yenet_body

    keras.utils.set_random_seed(seed)
    kernel, _, _ = high_pass_bank("srm30")
    inputs = keras.Input((SIZE, SIZE, 1), name="image")
    srm = keras.layers.Conv2D(30, 5, padding="same", use_bias=False, trainable=False, name="srm")
    x = srm(inputs)
    srm.set_weights([kernel])
    x = Truncation(threshold=3.0, name="tlu")(x)
    return keras.Model(inputs, _yenet_body(keras.layers, x, 1.0), name="yenet512")


def fit_head(model, pairs) -> None:
    """Train the classifier alone, briefly: the linear discriminant of the stego logit on the
    global-average features of `pairs` (cover/stego tiles), scaled to mean 0 and std
    `LOGIT_SPREAD` on them. The random body stays as it is."""
    import keras

    head = model.get_layer("softmax")
    features = keras.Model(model.inputs, head.input).predict(pairs.x, batch_size=4, verbose=0)
    features = features.astype(np.float64)
    y = np.asarray(pairs.y)
    centered = features - features.mean(0)
    covariance = np.cov(centered.T) + 1e-3 * np.eye(features.shape[1]) * np.trace(np.cov(centered.T))
    direction = np.linalg.solve(covariance, features[y == 1].mean(0) - features[y == 0].mean(0))
    logit = centered @ direction
    direction *= LOGIT_SPREAD / max(float(logit.std()), 1e-12)
    bias = -float(features.mean(0) @ direction)
    kernel = np.stack([-direction / 2, direction / 2], axis=1).astype(np.float32)
    head.set_weights([kernel, np.array([-bias / 2, bias / 2], np.float32)])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/yenet512"))
    parser.add_argument("--qat-epochs", type=int, default=1)
    parser.add_argument("--qat-pairs", type=int, default=16)
    parser.add_argument("--qat-lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from edgetrunc.data.geometry import require_image_geometry
    from edgetrunc.export import calibration as calib_data
    from edgetrunc.export import convert
    from edgetrunc.keras.load import load_keras_model as load_model
    from edgetrunc.train.qat import fine_tune_qat
    from scripts.benchmarks.integer import quality

    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model = build(args.seed)
    geometry = require_image_geometry(model, "yenet512", "the fixture")
    fit_head(model, calib_data.calibration_pairs("embedded", geometry, model=model))
    source, qat_path = args.out / "yenet512.keras", args.out / "yenet512_qat.keras"
    model.save(source)
    record = fine_tune_qat(source, qat_path, epochs=args.qat_epochs, lr=args.qat_lr,
                           max_pairs=args.qat_pairs, batch_size=4, seed=args.seed, force=True)
    manifest = convert(qat_path, args.out, tflite=("int8-full",), onnx=(), target="ethos-u",
                       force=True, speed=False)
    (entry,) = manifest["artifacts"]
    artifact = args.out / entry["path"]
    figures = quality({"source": load_model(qat_path), "float": load_model(source)}, artifact)
    result = {"qat": record, "evaluation": entry["quantization"]["evaluation"],
              "integer": entry["integer"], "ops": entry["ops"], "quality": figures,
              "wall_seconds": round(time.perf_counter() - started, 1)}
    (args.out / "yenet512_integer.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(json.dumps({"held-out tiles": figures["samples"], "train tiles": record["train_tiles"],
                      "agreement artifact vs QAT Keras": figures["agreement"]["source"],
                      "agreement artifact vs float": figures["agreement"]["float"],
                      "P_E": figures["p_e"], "wall_seconds": result["wall_seconds"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
