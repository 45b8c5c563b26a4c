"""Write the legacy model files under tests/fixtures/legacy/ with real Keras 2 (tf-keras).

The files are what a user who built a truncation-layer model with `tf.keras` (Keras 2)
brings to edgetrunc: `.h5` models whose truncation is a `Lambda` (`tf.clip_by_value`,
`K.clip` reading a script global, a `tf.minimum(tf.maximum(...))` straight-through
estimator), a custom `TLU` layer class, raw `tf.clip_by_value`, `tf.minimum(tf.maximum())`
and `tf.math.softsign` ops on Keras tensors (saved as `TFOpLambda` layers), a model mixing
`K.clip`, a Lambda with `arguments` and a registered class, a tf.keras `.keras` file, a
weights-only `.h5` and a SavedModel folder with a nested model; models written as public
steganalysis code writes them (a named Lambda function with a default argument and a kernel
initializer function, activation-function truncations with SeparableConv2D and
DepthwiseConv2D, an unregistered constraint and regularizer with a custom clip class, a
class storing a learned threshold weight); plus one Keras 3 `.keras`
file saved by an older edgetrunc whose `Truncation` config lacks the newer keys. The tests
read only the committed files; this script needs tf-keras (the `legacy-fixtures` extra)
and is run by hand:

    pip install --no-deps -c constraints.txt tf-keras   # --no-deps: keeps tensorflow-cpu
    python -m scripts.make_legacy_fixtures [--out tests/fixtures/legacy]

(tf-keras declares a dependency on the `tensorflow` wheel; with `tensorflow-cpu` already
installed, `--no-deps` avoids pulling the full wheel beside it.)

Every model is small (a few KB) with fixed seeds; `MANIFEST.json` lists each file with
its input shape and the output of the legacy model on a fixed 32x32 (or its own size)
input, which the tests compare against.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from scripts._keras2_classes import keras2_clip_classes, legacy_tf_keras

tf, k = legacy_tf_keras()  # tf.keras is Keras 2 from here on
K = k.backend  # saved lambdas read `tf` and `K` as module globals, as Keras 2 code did
T = 3.0  # a script global read by one saved lambda, as old code did: the file cannot store it


def _detector(truncation, shape, name, sequential=False):
    """Conv -> truncation -> tanh -> pool -> conv -> global pool -> 2-way softmax."""
    layers = [
        k.layers.Conv2D(4, 5, padding="same", use_bias=False, name="conv1"),
        truncation,
        k.layers.Activation("tanh", name="tanh"),
        k.layers.AveragePooling2D(2, name="pool"),
        k.layers.Conv2D(8, 3, padding="same", name="conv2"),
        k.layers.BatchNormalization(name="bn"),
        k.layers.GlobalAveragePooling2D(name="gap"),
        k.layers.Dense(2, activation="softmax", name="softmax"),
    ]
    if sequential:
        model = k.Sequential([k.Input(shape, name="image"), *layers], name=name)
    else:
        inputs = k.Input(shape, name="image")
        x = inputs
        for layer in layers:
            x = layer(x)
        model = k.Model(inputs, x, name=name)
    rng = np.random.default_rng(0)
    # the first conv is a zero-mean high-pass kernel x 30, so the truncation saturates
    kernel = rng.normal(0, 1, (5, 5, shape[-1], 4))
    kernel -= kernel.mean(axis=(0, 1), keepdims=True)
    model.get_layer("conv1").set_weights([(30 * kernel).astype("float32")])
    bn = model.get_layer("bn")
    bn.set_weights([rng.uniform(0.5, 2, 8).astype("float32"), rng.normal(0, 1, 8).astype("float32"),
                    rng.normal(0, 0.2, 8).astype("float32"),
                    rng.uniform(0.5, 2, 8).astype("float32")])
    return model


def _sample(shape, seed=1):
    h, w, c = (d or 32 for d in shape)
    return np.random.default_rng(seed).integers(0, 256, (2, h, w, c)).astype("float32")


def build(out: Path) -> dict:
    k.utils.set_random_seed(0)
    manifest = {}

    def record(filename, model, **info):
        shape = tuple(model.inputs[0].shape[1:])
        x = _sample(shape)
        manifest[filename] = {"input_shape": list(shape),
                              "keras2_output": model(x).numpy().tolist(), **info}

    # (a) the plain clip: Lambda(tf.clip_by_value), any image size
    model = _detector(k.layers.Lambda(lambda x: tf.clip_by_value(x, -3.0, 3.0), name="tlu"),
                      (None, None, 1), "clip_lambda")
    model.save(out / "clip_lambda.h5")
    record("clip_lambda.h5", model, truncation="Lambda tf.clip_by_value(x, -3, 3)")

    # (b) K.clip reading the script global T (not stored in the file), fixed 32x32 input
    model = _detector(k.layers.Lambda(lambda x: K.clip(x, -T, T), name="tlu"),
                      (32, 32, 1), "kclip_global")
    model.save(out / "kclip_global.h5")
    record("kclip_global.h5", model, truncation="Lambda K.clip(x, -T, T), T a script global",
           needs="--define T=3.0")

    # (b2) straight-through estimator with tf.minimum/tf.maximum, T captured in a closure,
    # Sequential model
    def ste(threshold):
        return lambda x: x + K.stop_gradient(tf.minimum(tf.maximum(x, -threshold), threshold) - x)

    model = _detector(k.layers.Lambda(ste(2.0), name="tlu"), (None, None, 1),
                      "minmax_ste", sequential=True)
    model.save(out / "minmax_ste.h5")
    record("minmax_ste.h5", model, truncation="Lambda x + K.stop_gradient(min(max(x, -2), 2) - x)")

    # (b3) three channels on a fixed 32x32 input
    model = _detector(k.layers.Lambda(lambda x: tf.clip_by_value(x, -3.0, 3.0), name="tlu"),
                      (32, 32, 3), "rgb_clip")
    model.save(out / "rgb_clip.h5")
    record("rgb_clip.h5", model, truncation="Lambda tf.clip_by_value(x, -3, 3), RGB input")

    # (c) a user's own truncation class: Keras 3 cannot know it
    class TLU(k.layers.Layer):
        def __init__(self, threshold=3.0, **kwargs):
            super().__init__(**kwargs)
            self.threshold = threshold

        def call(self, x):
            return tf.clip_by_value(x, -self.threshold, self.threshold)

        def get_config(self):
            return {**super().get_config(), "threshold": self.threshold}

    model = _detector(TLU(threshold=3.0, name="tlu"), (None, None, 1), "custom_tlu")
    model.save(out / "custom_tlu.h5")
    record("custom_tlu.h5", model, truncation="custom class TLU(threshold=3.0)",
           needs="--truncation-class TLU")

    # (c2) raw TensorFlow ops on Keras tensors: tf.keras 2 saves them as TFOpLambda layers
    def functional(name, truncate, shape=(None, None, 1)):
        inputs = k.Input(shape, name="image")
        x = k.layers.Conv2D(4, 5, padding="same", use_bias=False, name="conv1")(inputs)
        x = truncate(x)
        x = k.layers.Activation("tanh", name="tanh")(x)
        x = k.layers.GlobalAveragePooling2D(name="gap")(x)
        model = k.Model(inputs, k.layers.Dense(2, activation="softmax", name="softmax")(x),
                        name=name)
        kernel = np.random.default_rng(0).normal(0, 1, (5, 5, shape[-1], 4))
        kernel = 30 * (kernel - kernel.mean((0, 1)))
        model.get_layer("conv1").set_weights([kernel.astype("float32")])
        return model

    model = functional("tfop_clip", lambda x: tf.clip_by_value(x, -3.0, 3.0))
    model.save(out / "tfop_clip.h5")
    record("tfop_clip.h5", model, truncation="tf.clip_by_value(x, -3, 3) on a Keras tensor")

    model = functional("tfop_minmax", lambda x: tf.minimum(tf.maximum(x, -2.0), 2.0))
    model.save(out / "tfop_minmax.h5")
    record("tfop_minmax.h5", model, truncation="tf.minimum(tf.maximum(x, -2), 2) on a Keras tensor")

    model = functional("tfop_other", lambda x: tf.math.softsign(x))
    model.save(out / "tfop_other.h5")
    record("tfop_other.h5", model, truncation=None, needs="rewrite tf.math.softsign as a layer")

    # (c3) all in one: K.clip on a Keras tensor (a TFOpLambda), a Lambda with `arguments`,
    # and a registered custom class (saved as "MyLayers>ClipLayer", threshold key "T")
    @k.utils.register_keras_serializable(package="MyLayers")
    class ClipLayer(k.layers.Layer):
        def __init__(self, T=3.0, **kwargs):
            super().__init__(**kwargs)
            self.T = T

        def call(self, x):
            return tf.minimum(tf.maximum(x, -self.T), self.T)

        def get_config(self):
            return {**super().get_config(), "T": self.T}

    def mixed(x):
        x = K.clip(x, -4.0, 4.0)
        x = k.layers.Lambda(lambda x, t: tf.clip_by_value(x, -t, t), arguments={"t": 3.0},
                            name="tlu_args")(x)
        return ClipLayer(T=2.0, name="tlu_class")(x)

    model = functional("mixed_registered", mixed)
    model.save(out / "mixed_registered.h5")
    record("mixed_registered.h5", model,
           truncation="K.clip op + Lambda with arguments + registered MyLayers>ClipLayer(T=2)",
           needs="--trust-lambda --truncation-class ClipLayer")

    # (c4) mixed precision: layers saved with a Keras 2 dtype policy object
    k.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = functional("mixed_float16", lambda x: k.layers.Lambda(
            lambda x: tf.clip_by_value(x, -3.0, 3.0), name="tlu")(x))
    finally:
        k.mixed_precision.set_global_policy("float32")
    model.save(out / "mixed_float16.h5")
    record("mixed_float16.h5", model, truncation="Lambda clip, mixed_float16 policy")

    # (d) tf.keras 2 writing the .keras (v3) format
    model = _detector(k.layers.Lambda(lambda x: tf.clip_by_value(x, -3.0, 3.0), name="tlu"),
                      (None, None, 1), "tfkeras_v3")
    model.save(out / "tfkeras_v3.keras")
    record("tfkeras_v3.keras", model, truncation="Lambda tf.clip_by_value(x, -3, 3)")

    # (e) weights only: no architecture in the file
    model.save_weights(out / "weights_only.h5")
    manifest["weights_only.h5"] = {"input_shape": None, "truncation": None,
                                   "needs": "the architecture in code"}

    # (f) a SavedModel directory (the tf.keras 2 default without a suffix), with the
    # convolution and its truncation inside a nested Functional block
    block_in = k.Input((None, None, 1), name="block_in")
    y = k.layers.Conv2D(4, 5, padding="same", use_bias=False, name="conv1")(block_in)
    y = k.layers.Lambda(lambda x: tf.clip_by_value(x, -3.0, 3.0), name="tlu")(y)
    block = k.Model(block_in, y, name="front")
    inputs = k.Input((None, None, 1), name="image")
    x = k.layers.Activation("tanh", name="tanh")(block(inputs))
    x = k.layers.Conv2D(8, 3, padding="same", name="conv2")(x)
    x = k.layers.BatchNormalization(name="bn")(x)
    x = k.layers.GlobalAveragePooling2D(name="gap")(x)
    model = k.Model(inputs, k.layers.Dense(2, activation="softmax", name="softmax")(x),
                    name="savedmodel")
    rng = np.random.default_rng(0)
    kernel = rng.normal(0, 1, (5, 5, 1, 4))
    block.get_layer("conv1").set_weights([(30 * (kernel - kernel.mean((0, 1)))).astype("float32")])
    model.get_layer("bn").set_weights([rng.uniform(0.5, 2, 8).astype("float32"),
                                       rng.normal(0, 1, 8).astype("float32"),
                                       rng.normal(0, 0.2, 8).astype("float32"),
                                       rng.uniform(0.5, 2, 8).astype("float32")])
    with tempfile.TemporaryDirectory() as tmp:
        model.save(Path(tmp) / "savedmodel", save_format="tf")
        shutil.copytree(Path(tmp) / "savedmodel", out / "savedmodel",
                        ignore=shutil.ignore_patterns("assets", "fingerprint.pb"))
    record("savedmodel", model, truncation="Lambda tf.clip_by_value(x, -3, 3) in a nested block")
    return manifest


def build_foreign(out: Path) -> dict:
    """Files written the way public steganalysis code writes them: training-time objects saved
    by name, truncations written as activation functions, a learned threshold weight."""
    manifest = {}

    def record(filename, model, **info):
        shape = tuple(model.inputs[0].shape[1:])
        manifest[filename] = {"input_shape": list(shape),
                              "keras2_output": model(_sample(shape)).numpy().tolist(), **info}

    def high_pass(model, layer="conv1"):
        conv = model.get_layer(layer)
        kernel = np.random.default_rng(0).normal(0, 1, conv.get_weights()[0].shape)
        conv.set_weights([(30 * (kernel - kernel.mean((0, 1)))).astype("float32"),
                          *conv.get_weights()[1:]])

    # (g) a named Lambda function with a default argument, a kernel initializer function and
    # a custom loss (saved by name only), and a named non-clip Lambda that stays a Lambda
    def srm_init(shape, dtype=None):
        return tf.random.normal(shape, dtype=dtype)

    def TLU(x, tlu_threshold=3):  # noqa: N802 - named as in the code it imitates
        return K.clip(x, -tlu_threshold, tlu_threshold)

    def half(x, factor=0.5):
        return x * factor

    def weighted_loss(y_true, y_pred):
        return k.losses.categorical_crossentropy(y_true, y_pred) * 2.0

    inputs = k.Input((32, 32, 1), name="image")
    x = k.layers.Conv2D(4, 5, padding="same", use_bias=False, kernel_initializer=srm_init,
                        name="conv1")(inputs)
    x = k.layers.Lambda(TLU, name="tlu")(x)
    x = k.layers.Lambda(half, name="half")(x)
    x = k.layers.GlobalAveragePooling2D(name="gap")(x)
    model = k.Model(inputs, k.layers.Dense(2, activation="softmax", name="softmax")(x),
                    name="named_lambda_init")
    high_pass(model)
    model.compile(optimizer="adam", loss=weighted_loss, metrics=["accuracy"])
    model.save(out / "named_lambda_init.h5")
    record("named_lambda_init.h5", model, truncation="Lambda(TLU), def TLU(x, tlu_threshold=3)",
           needs="--trust-lambda")

    # (h) a truncation written as an activation function, as Activation(tlu) and
    # Dense(..., activation=tlu), with SeparableConv2D and DepthwiseConv2D on RGB input
    def tlu(x):
        return tf.maximum(tf.minimum(x, 3.0), -3.0)

    inputs = k.Input((32, 32, 3), name="image")
    x = k.layers.Conv2D(4, 3, padding="same", use_bias=False, name="conv1")(inputs)
    x = k.layers.Activation(tlu, name="act_tlu")(x)
    x = k.layers.SeparableConv2D(6, 3, padding="same", name="sep")(x)
    x = k.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = k.layers.GlobalAveragePooling2D(name="gap")(x)
    x = k.layers.Dense(8, activation=tlu, name="fc")(x)
    model = k.Model(inputs, k.layers.Dense(2, activation="softmax", name="softmax")(x),
                    name="activation_tlu")
    high_pass(model)
    model.save(out / "activation_tlu.h5")
    record("activation_tlu.h5", model, truncation="activation function tlu (clip to [-3, 3])",
           needs="--truncation-class tlu=3")

    # (i) an unregistered kernel constraint and regularizer class, and a custom clip class
    CenteredKernel, HardClip, LearnedTLU = keras2_clip_classes(k, tf)  # noqa: N806 - classes

    class SmallL1(k.regularizers.Regularizer):
        def __call__(self, w):
            return 1e-4 * tf.reduce_sum(tf.abs(w))

        def get_config(self):
            return {}

    inputs = k.Input((None, None, 1), name="image")
    x = k.layers.Conv2D(4, 5, padding="same", use_bias=False, kernel_constraint=CenteredKernel(),
                        kernel_regularizer=SmallL1(), name="conv1")(inputs)
    x = HardClip(2.0, name="clip")(x)
    x = k.layers.GlobalAveragePooling2D(name="gap")(x)
    model = k.Model(inputs, k.layers.Dense(2, activation="softmax", name="softmax")(x),
                    name="constraint_clip")
    high_pass(model)
    model.save(out / "constraint_clip.h5")
    record("constraint_clip.h5", model, truncation="custom class HardClip(clip_value=2.0)",
           needs="--truncation-class HardClip")

    # (j) a truncation class that stores its threshold as a learned weight (LearnedTLU)
    inputs = k.Input((None, None, 1), name="image")
    x = k.layers.Conv2D(4, 5, padding="same", use_bias=False, name="conv1")(inputs)
    x = LearnedTLU(name="tlu")(x)
    x = k.layers.GlobalAveragePooling2D(name="gap")(x)
    model = k.Model(inputs, k.layers.Dense(2, activation="softmax", name="softmax")(x),
                    name="learned_tlu")
    high_pass(model)
    model.save(out / "learned_tlu.h5")
    record("learned_tlu.h5", model, truncation="custom class LearnedTLU, threshold weight 2.5",
           needs="--truncation-class LearnedTLU")
    return manifest


def build_old_truncation(out: Path) -> dict:
    """A Keras 3 `.keras` with a `Truncation` whose config has only the first version's keys."""
    import subprocess

    code = f"""
import json, zipfile, os, numpy as np, keras
from edgetrunc import Truncation
keras.utils.set_random_seed(0)
inputs = keras.Input((None, None, 1), name="image")
x = keras.layers.Conv2D(4, 5, padding="same", use_bias=False, name="conv1")(inputs)
x = Truncation(2.5, name="tlu")(x)
x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="softmax")(x))
path = {str(out / "truncation_old_config.keras")!r}
model.save(path + ".tmp.keras")
with zipfile.ZipFile(path + ".tmp.keras") as src:
    files = {{n: src.read(n) for n in src.namelist()}}
config = json.loads(files["config.json"])
for layer in config["config"]["layers"]:
    if layer["class_name"] == "Truncation":
        for key in ("gradient", "learn_threshold", "lower", "upper"):
            layer["config"].pop(key, None)
files["config.json"] = json.dumps(config).encode()
with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
    for n, data in files.items():
        dst.writestr(n, data)
os.remove(path + ".tmp.keras")
x = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 1)).astype("float32")
print(json.dumps(np.asarray(model(x)).tolist()))
"""
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                            check=True)
    output = json.loads(result.stdout.strip().splitlines()[-1])
    return {"truncation_old_config.keras": {
        "input_shape": [None, None, 1], "keras3_output": output,
        "truncation": "Truncation(2.5) saved without gradient/learn_threshold/lower/upper"}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="tests/fixtures/legacy", help="output folder")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    manifest = build(out)
    manifest.update(build_foreign(out))
    manifest.update(build_old_truncation(out))
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    for name in sorted(manifest):
        path = out / name
        size = (sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
                if path.is_dir() else path.stat().st_size)
        print(f"{name:32s} {size / 1024:7.1f} KiB  {manifest[name].get('truncation')}")
    print(f"{'total':32s} {total / 1024:7.1f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
