"""Build models that need the user's own code (custom objects), at the tests' small sizes.

Each pattern is a model a user brings with code of their own; the custom-objects files are
`tests/fixtures/custom/*.py` (the Keras 3 builders here use those very classes):

    gbras      GBRAS-Net-like Keras 2.3-era `.hdf5`: a 30-filter 5x5 front end with the named
               custom activation `Tanh3` (3 tanh(x), a soft truncation), ELU, BatchNorm,
               DepthwiseConv2D, SeparableConv2D with depth_multiplier=3, a training config
               (tf.keras 2; the file says Keras 2.3.1, as the published files do)
    learned_sm a class storing its learned threshold as a weight (`LearnedTLU`, tau = 2.5),
               as a tf.keras 2 SavedModel folder
    srmbank    a Ye-Net-like custom layer holding a [5, 5, 3, 30] SRM filter bank
               (`YeNetPreprocessing`), then a Lambda truncation on `keras.ops.clip` (Keras 3)
    learned    `LearnedTLU` with tau = 2.5 stored as a weight, in a Keras 3 `.keras`
    xunet_abs  ALASKA2's Xu-Net front end: `Lambda(abs)` beside a Lambda truncation (Keras 3)
    two_input  two inputs (an image `pixels` and a side vector `aux`) and two outputs (`score`,
               a softmax, and `embedding`), a `Truncation` on each branch (Keras 3; no code
               of the user's: the multi-input fixture)

    python scripts/make_custom_models.py --out DIR [--keras2] [NAME ...]

`--keras2` writes the tf.keras 2 patterns (needs tf-keras; run it in its own process):
    pip install --no-deps -c constraints.txt tf-keras
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if "--keras2" in sys.argv[1:]:
    os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tf.keras is Keras 2 in that process

import keras  # noqa: E402 - module globals: saved lambdas read `keras`
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

OBJECTS = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "custom"
KERAS3 = ("srmbank", "learned", "xunet_abs", "two_input")
KERAS2 = ("gbras", "learned_sm")
SIZE = 32


def custom_objects(name: str):
    """The module `tests/fixtures/custom/<name>_objects.py`."""
    spec = importlib.util.spec_from_file_location(f"{name}_objects", OBJECTS / f"{name}_objects.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _set_high_pass(layer, seed=0):
    kernel, *rest = layer.get_weights()
    noise = np.random.default_rng(seed).normal(0, 1, kernel.shape)
    layer.set_weights([(3 * (noise - noise.mean((0, 1)))).astype("float32"), *rest])


def build_two_input(size: int = SIZE // 2):
    """Inputs `pixels` [size, size, 1] and `aux` [8] (in that order, not alphabetical),
    outputs `score` [2] (softmax of both branches) and `embedding` [3] (the side branch
    only), a `Truncation` on each branch: the model with several inputs and outputs."""
    from edgetrunc.layers import Truncation

    layers = keras.layers
    pixels = keras.Input((size, size, 1), name="pixels")
    aux = keras.Input((8,), name="aux")
    x = layers.Conv2D(2, 3, padding="same", name="conv")(pixels)
    x = Truncation(3.0, name="tlu_image")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dense(4, name="dense_image")(x)
    y = layers.Dense(4, name="dense_aux")(aux)
    y = Truncation(2.0, name="tlu_aux")(y)  # an int8 Concatenate would requantize it: Add
    score = layers.Dense(2, activation="softmax", name="score")(layers.Add(name="join")([x, y]))
    embedding = layers.Dense(3, name="embedding")(y)
    return keras.Model([pixels, aux], [score, embedding], name="two_input")


def build_keras3(name: str):
    """The Keras 3 model of pattern `name` (small)."""
    layers = keras.layers
    if name == "two_input":
        return build_two_input()
    if name == "srmbank":
        inputs = keras.Input((SIZE, SIZE, 3), name="image")
        srm = custom_objects("srm").YeNetPreprocessing(30, name="srm")
        x = srm(inputs)
        x = layers.Lambda(lambda t: keras.ops.clip(t, -3.0, 3.0), output_shape=tuple(x.shape[1:]),
                          name="tlu")(x)
        x = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(x)
        _set_high_pass(srm)
    elif name == "learned":
        inputs = keras.Input((SIZE, SIZE, 1), name="image")
        x = layers.Conv2D(8, 5, padding="same", use_bias=False, name="conv1")(inputs)
        x = custom_objects("learned").LearnedTLU(name="tlu")(x)
        x = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(x)
    elif name == "xunet_abs":
        inputs = keras.Input((SIZE, SIZE, 1), name="image")
        x = layers.Conv2D(8, 5, padding="same", use_bias=False, name="conv1")(inputs)
        x = layers.Lambda(lambda t: keras.ops.abs(t), output_shape=tuple(x.shape[1:]), name="abs")(x)
        x = layers.BatchNormalization(name="bn1")(x)
        x = layers.Lambda(lambda t: keras.ops.clip(t, -3.0, 3.0), output_shape=tuple(x.shape[1:]),
                          name="tlu")(x)
        x = layers.Conv2D(8, 3, padding="same", activation="tanh", name="conv2")(x)
    else:
        raise SystemExit(f"{name}: not a Keras 3 pattern ({', '.join(KERAS3)})")
    x = layers.AveragePooling2D(4, name="pool")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, layers.Dense(2, activation="softmax", name="softmax")(x), name=name)
    if name != "srmbank":
        _set_high_pass(model.get_layer("conv1"))
    return model


def build_keras2(name: str):
    """The tf.keras 2 model of pattern `name`; needs tf-keras and TF_USE_LEGACY_KERAS=1."""
    import tf_keras as k

    def Tanh3(x):  # noqa: N802 - GBRAS-Net's name
        return k.backend.tanh(x) * 3

    class LearnedTLU(k.layers.Layer):
        def build(self, input_shape):
            self.tau = self.add_weight(name="tau", shape=(),
                                       initializer=k.initializers.Constant(2.5))

        def call(self, x):
            return tf.clip_by_value(x, -self.tau, self.tau)

    inputs = k.Input((SIZE, SIZE, 1), name="image")
    if name == "gbras":
        x = k.layers.Conv2D(30, 5, padding="same", activation=Tanh3, name="srm")(inputs)
        x = k.layers.Conv2D(8, 3, padding="same", name="conv2")(x)
        x = k.layers.ELU(name="elu2")(k.layers.BatchNormalization(name="bn2")(x))
        x = k.layers.DepthwiseConv2D(1, name="dw")(x)
        x = k.layers.SeparableConv2D(8, 3, padding="same", depth_multiplier=3, name="sep")(x)
        x = k.layers.ELU(name="elu3")(k.layers.BatchNormalization(name="bn3")(x))
        x = k.layers.AveragePooling2D(4, name="pool")(x)
    elif name == "learned_sm":
        x = k.layers.Conv2D(8, 5, padding="same", use_bias=False, name="conv1")(inputs)
        x = LearnedTLU(name="tlu")(x)
        x = k.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(x)
    else:
        raise SystemExit(f"{name}: not a Keras 2 pattern ({', '.join(KERAS2)})")
    x = k.layers.GlobalAveragePooling2D(name="gap")(x)
    model = k.Model(inputs, k.layers.Dense(2, activation="softmax", name="softmax")(x), name=name)
    _set_high_pass(model.get_layer("srm" if name == "gbras" else "conv1"))
    if name == "gbras":
        model.compile(optimizer=k.optimizers.SGD(0.005, momentum=0.95),
                      loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def _save_keras2(model, name, out: Path) -> Path:
    if name == "learned_sm":
        path = out / "learned_savedmodel"
        model.save(str(path), save_format="tf")
        return path
    import h5py

    path = out / "gbras.hdf5"
    model.save(str(path), save_format="h5")
    with h5py.File(path, "r+") as handle:  # as the published Keras 2.3 files say
        handle.attrs["keras_version"] = "2.3.1"
        handle.attrs["backend"] = "tensorflow"
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="patterns to write (default: all of the framework)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--keras2", action="store_true", help="the tf.keras 2 forms (needs tf-keras)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    outputs = {}
    for name in args.names or (KERAS2 if args.keras2 else KERAS3):
        keras.utils.set_random_seed(0)
        model = build_keras2(name) if args.keras2 else build_keras3(name)
        if args.keras2:
            path = _save_keras2(model, name, args.out)
        else:
            path = args.out / f"{name}.keras"
            model.save(path)
        result = model(sample_input(model))
        outputs[path.name] = ([np.asarray(r).tolist() for r in result]
                              if isinstance(result, (list, tuple)) else np.asarray(result).tolist())
        print(f"wrote {path}")
    if args.keras2:  # what Keras 2 computed, for the tests to compare against
        (args.out / "custom_keras2.json").write_text(json.dumps(outputs, indent=1) + "\n")
    return 0


def sample_input(model):
    """The fixed input the recorded outputs were computed on: N(0, 1), 2 samples."""
    rng = np.random.default_rng(0)
    arrays = [rng.normal(0, 1, (2, *[int(d) for d in t.shape[1:]])).astype("float32")
              for t in model.inputs]
    return arrays if len(arrays) > 1 else arrays[0]


if __name__ == "__main__":
    sys.exit(main())
