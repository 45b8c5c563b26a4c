#!/usr/bin/env python3
"""The 512x512 Ye-Net-pattern fixture of the full-integer path, made and measured end to end.

`python -m scripts.make_yenet_integer [--out build/yenet512] [--float YENET.keras]
[--train-minutes 32] [--qat-epochs 2] [--qat-pairs 64]`

1. A float Ye-Net-pattern detector (the registered `yenet`: the 30 basic SRM filters as a
   fixed 5x5 convolution, each stored exactly by the converter, a truncation to [-3, 3], Ye-Net's
   body with batch normalization, global average, two-way softmax), trained end to end as a
   detector by `edgetrunc.train` on 128x128 tiles (stride 64; curriculum 1.0, 0.7, 0.4 bpp;
   the last fifth with batch normalization frozen, as `make train` trains tlunet) for
   `--train-minutes` of wall time, or read from the trained `--float` file. The net is fully
   convolutional: its weights go unchanged into the 512x512x1 model (`yenet512.keras`).
2. Fine-tunes that model quantization-aware at 512x512 (`edgetrunc.train.qat.fine_tune_qat`,
   distilling the float model) and converts it with `--tflite int8-full --target ethos-u`.
3. Prints the held-out figures BENCHMARKS.md records: decision agreement of the artifact with
   its quantization-aware Keras model and with the float model, and the three P_E; and writes
   them with the training and fine-tuning records to `yenet512_integer.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

SIZE = 512
TRAIN_SIZE = 128


def trained_float(out: Path, minutes: float, seed: int) -> tuple:
    """Train the float detector at `TRAIN_SIZE` (see the module docstring); (path, record)."""
    from edgetrunc.train import train

    path = out / f"yenet{TRAIN_SIZE}.keras"
    record = train(model="yenet", model_kwargs={"input_shape": (TRAIN_SIZE, TRAIN_SIZE, 1)},
                   stride=TRAIN_SIZE // 2, curriculum="1.0,0.7,0.4", stage_epochs=3, epochs=60,
                   patience=10, frozen_bn_fraction=0.2, time_budget=minutes, out=path, seed=seed, force=True)
    return path, record


def at_size(path: Path, size: int):
    """The registered `yenet` at `size` x `size` with the weights of the trained file `path`."""
    from edgetrunc import models
    from edgetrunc.keras.load import load_keras_model

    trained = load_keras_model(path)
    model = models.create("yenet", input_shape=(size, size, 1))
    model.set_weights(trained.get_weights())
    return model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/yenet512"))
    parser.add_argument("--float", type=Path, default=None,
                        help="a trained `yenet` file (any input size); default: train one")
    parser.add_argument("--train-minutes", type=float, default=32.0)
    parser.add_argument("--qat-epochs", type=int, default=2)
    parser.add_argument("--qat-pairs", type=int, default=64)
    parser.add_argument("--qat-lr", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from edgetrunc.export import convert
    from edgetrunc.keras.load import load_keras_model
    from edgetrunc.train.qat import fine_tune_qat
    from scripts.benchmarks.integer import quality

    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    trained, training = (args.float, None) if args.float else trained_float(
        args.out, args.train_minutes, args.seed)
    source, qat_path = args.out / f"yenet{SIZE}.keras", args.out / f"yenet{SIZE}_qat.keras"
    at_size(trained, SIZE).save(source)
    record = fine_tune_qat(source, qat_path, epochs=args.qat_epochs, lr=args.qat_lr,
                           max_pairs=args.qat_pairs, batch_size=4, seed=args.seed, force=True)
    manifest = convert(qat_path, args.out, tflite=("int8-full",), onnx=(), target="ethos-u",
                       force=True, speed=False)
    (entry,) = manifest["artifacts"]
    artifact = args.out / entry["path"]
    figures = quality({"source": load_keras_model(qat_path), "float": load_keras_model(source)},
                      artifact)
    summary = {k: training.get(k) for k in ("epochs", "test", "wall_seconds")} if training else None
    result = {"float": str(trained), "training": summary, "qat": record,
              "evaluation": entry["quantization"]["evaluation"], "integer": entry["integer"],
              "ops": entry["ops"], "quality": figures,
              "wall_seconds": round(time.perf_counter() - started, 1)}
    (args.out / "yenet512_integer.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(json.dumps({"held-out tiles": figures["samples"], "train tiles": record["train_tiles"],
                      "agreement artifact vs QAT Keras": figures["agreement"]["source"],
                      "agreement artifact vs float": figures["agreement"]["float"],
                      "P_E": figures["p_e"], "wall_seconds": result["wall_seconds"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
