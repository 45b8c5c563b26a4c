"""Build detectors written the way public steganalysis code writes them, at any size.

Each pattern is a model a user brings to edgetrunc, with its truncation in the form such code
uses, and the `migrate` options that turn it into a `Truncation` model:

    yenet      Ye-Net layout (30 SRM-size 5x5 filters, TLU, stacked 3x3 convolutions, average
               pools), 512x512x1; Keras 2: a named Lambda `TLU(x, tlu_threshold=3)` and a
               kernel initializer function; Keras 3: a Lambda on `keras.ops.clip`
    rgb        128x128x3, truncations as an activation function (`Activation(tlu)` and
               `Dense(..., activation=tlu)`) around SeparableConv2D and DepthwiseConv2D (Keras 2)
    constraint an unregistered kernel constraint and regularizer with a custom clip class (Keras 2)
    learned    a truncation class that stores its threshold as a weight (Keras 2)
    residual   a deep residual net (SRNet-like: full-resolution residual blocks, then
               downsampling ones), its truncation a Lambda on `keras.ops.clip` (Keras 3)
    sigmoid    one sigmoid output unit, its truncation an unregistered class `HardTLU` (Keras 3)
    se_residual  a 14-block residual squeeze-excitation net with a Bayar-constrained 5x5
               front end and a TLU, 256x256x1, as migrate writes it (`Truncation`; Keras 3)

Keras 3 models are written by default; `--keras2` writes the tf.keras 2 `.h5` forms (needs
tf-keras; run it in its own process). `--small` gives the few-kilobyte sizes of the tests;
the default sizes are the real ones (for the benchmark). `MIGRATE_OPTIONS` lists the options
each file needs; the build functions are importable (`build_keras3(name, small)`).

    python -m scripts.make_foreign_models --out DIR [--small] [--keras2] [NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if "--keras2" in sys.argv[1:]:
    os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tf.keras is Keras 2 in that process

import keras  # noqa: E402 - module globals: saved functions read `keras`, `tf` and `K`
import tensorflow as tf  # noqa: E402

K = None  # the Keras 2 backend (tf_keras.backend), set by build_keras2

KERAS3 = ("yenet", "residual", "sigmoid")
KERAS2 = ("yenet", "rgb", "constraint", "learned")
MIGRATE_OPTIONS = {
    ("keras3", "yenet"): ["--trust-lambda"],
    ("keras3", "residual"): ["--trust-lambda"],
    ("keras3", "sigmoid"): ["--truncation-class", "HardTLU"],
    ("keras2", "yenet"): ["--trust-lambda"],
    ("keras2", "rgb"): ["--truncation-class", "tlu=3"],
    ("keras2", "constraint"): ["--truncation-class", "HardClip"],
    ("keras2", "learned"): ["--truncation-class", "LearnedTLU"],
}
# (input size, channels, width factor, residual blocks) per pattern, real and small
SIZES = {"yenet": ((512, 1, 1.0), (32, 1, 0.15)), "rgb": ((128, 3, 1.0), (32, 3, 0.25)),
         "constraint": ((256, 1, 1.0), (32, 1, 0.25)), "learned": ((256, 1, 1.0), (32, 1, 0.25)),
         "residual": ((256, 1, 1.0), (32, 1, 0.25)), "sigmoid": ((256, 1, 1.0), (32, 1, 0.25))}
RESIDUAL_BLOCKS = (14, 3)  # real, small


def _width(n: int, factor: float) -> int:
    return max(2, int(round(n * factor)))


def _high_pass(conv, seed=0):
    """Zero-mean 5x5 kernels of SRM-filter magnitude, as a trained front end has."""
    import numpy as np

    kernel, *rest = conv.get_weights()
    noise = np.random.default_rng(seed).normal(0, 1, kernel.shape)
    conv.set_weights([(3 * (noise - noise.mean((0, 1)))).astype("float32"), *rest])


def _yenet_body(layers, x, factor):
    """Ye-Net after its TLU: 3x3 convolutions, average pools, global pooling, two-way softmax."""
    for i in range(3):
        x = layers.Conv2D(_width(30, factor), 3, padding="same", activation="relu", name=f"conv{i + 2}")(x)
    x = layers.AveragePooling2D(2, name="pool1")(x)
    for i, (filters, kernel) in enumerate(((32, 5), (32, 5), (32, 3), (16, 3))):
        x = layers.Conv2D(_width(filters, factor), kernel, padding="same", activation="relu",
                          name=f"conv{i + 5}")(x)
        x = layers.AveragePooling2D(2, name=f"pool{i + 2}")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return layers.Dense(2, activation="softmax", name="softmax")(x)


def build_keras3(name: str, small: bool = False):
    """The Keras 3 model of pattern `name` (see the module docstring)."""
    if name == "se_residual":
        return build_se_residual(small)
    layers = keras.layers
    size, channels, factor = SIZES[name][1 if small else 0]
    inputs = keras.Input((size, size, channels), name="image")

    if name == "yenet":
        x = layers.Conv2D(_width(30, factor), 5, padding="same", name="conv1")(inputs)
        x = layers.Lambda(lambda t: keras.ops.clip(t, -3.0, 3.0), output_shape=tuple(x.shape[1:]),
                          name="tlu")(x)
        model = keras.Model(inputs, _yenet_body(layers, x, factor), name="yenet")
    elif name == "residual":
        model = keras.Model(inputs, _residual(layers, inputs, factor, RESIDUAL_BLOCKS[small],
                                              lambda t: keras.ops.clip(t, -3.0, 3.0)),
                            name="residual")
    elif name == "sigmoid":
        x = layers.Conv2D(_width(16, factor), 5, padding="same", name="conv1")(inputs)
        x = _hard_tlu_class()(3.0, name="tlu")(x)
        x = layers.Conv2D(_width(16, factor), 3, padding="same", activation="relu", name="conv2")(x)
        x = layers.AveragePooling2D(4, name="pool")(x)
        x = layers.GlobalAveragePooling2D(name="gap")(x)
        model = keras.Model(inputs, layers.Dense(1, activation="sigmoid", name="score")(x),
                            name="sigmoid_head")
    else:
        raise SystemExit(f"{name}: not a Keras 3 pattern ({', '.join(KERAS3)}, se_residual)")
    _high_pass(model.get_layer("conv1" if name != "residual" else "stem"))
    return model


def _hard_tlu_class():
    class HardTLU(keras.layers.Layer):  # unregistered, as a user's own class is
        def __init__(self, threshold=3.0, **kwargs):
            super().__init__(**kwargs)
            self.threshold = threshold

        def call(self, x):
            return keras.ops.clip(x, -self.threshold, self.threshold)

        def get_config(self):
            return {**super().get_config(), "threshold": self.threshold}

    return HardTLU


def _residual(layers, inputs, factor, blocks, truncate):
    """SRNet-like: a stem, full-resolution residual blocks, then strided residual blocks."""
    width = _width(16, factor)
    x = layers.Conv2D(_width(64, factor), 3, padding="same", name="stem")(inputs)
    x = layers.Lambda(truncate, output_shape=tuple(x.shape[1:]), name="tlu")(x)
    x = layers.Conv2D(width, 3, padding="same", name="stem2")(x)
    x = layers.ReLU(name="stem2_relu")(layers.BatchNormalization(name="stem2_bn")(x))
    return _residual_blocks(layers, x, factor, blocks)


def _residual_blocks(layers, x, factor, blocks, squeeze=0):
    """Half the blocks at full resolution, then strided ones doubling the width (up to 256),
    global pooling and a two-way softmax; with `squeeze`, each block's residual is scaled by
    a squeeze-excitation (global pool, Dense c/squeeze relu, Dense c sigmoid)."""
    width, plain = x.shape[-1], blocks // 2
    for i in range(blocks):
        stride = 1 if i < plain else 2
        filters = width if i < plain else min(_width(256, factor), width * 2 ** (i - plain + 1))
        y = layers.Conv2D(filters, 3, padding="same", strides=stride, name=f"block{i}_conv1")(x)
        y = layers.ReLU(name=f"block{i}_relu1")(layers.BatchNormalization(name=f"block{i}_bn1")(y))
        y = layers.Conv2D(filters, 3, padding="same", name=f"block{i}_conv2")(y)
        y = layers.BatchNormalization(name=f"block{i}_bn2")(y)
        if squeeze:
            s = layers.GlobalAveragePooling2D(name=f"block{i}_se_pool")(y)
            s = layers.Dense(max(2, filters // squeeze), activation="relu", name=f"block{i}_se_fc1")(s)
            s = layers.Dense(filters, activation="sigmoid", name=f"block{i}_se_fc2")(s)
            s = layers.Reshape((1, 1, filters), name=f"block{i}_se_reshape")(s)
            y = layers.Multiply(name=f"block{i}_se_scale")([y, s])
        if stride != 1 or x.shape[-1] != filters:
            x = layers.Conv2D(filters, 1, strides=stride, name=f"block{i}_skip")(x)
        x = layers.ReLU(name=f"block{i}_out")(layers.Add(name=f"block{i}_add")([x, y]))
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return layers.Dense(2, activation="softmax", name="softmax")(x)


def bayar_constrained(kernel):
    """A Bayar constraint applied to a `[k, k, in, out]` kernel: each filter's center is -1
    and its other taps sum to 1 (a prediction-error filter, as the constraint keeps it while
    training)."""
    import numpy as np

    k = np.array(kernel, dtype=np.float32)
    center = k.shape[0] // 2
    k[center, center] = 0
    k /= k.sum(axis=(0, 1), keepdims=True)
    k[center, center] = -1
    return k


def build_se_residual(small: bool = False):
    """The layout of a public 14-block residual squeeze-excitation steganalysis net: a
    Bayar-constrained 5x5 front end (weights as the constraint leaves them), its TLU as the
    `Truncation` that `edgetrunc migrate --truncation-class TLU=3` writes, 14 residual SE
    blocks on 256x256x1 (`--small`: 3 blocks on 32x32x1), a two-way softmax."""
    from edgetrunc.layers import Truncation

    layers = keras.layers
    size, factor = (32, 0.25) if small else (256, 1.0)
    inputs = keras.Input((size, size, 1), name="image")
    bayar = layers.Conv2D(_width(8, factor), 5, padding="same", use_bias=False, name="bayar")
    x = bayar(inputs)
    weights = __import__("numpy").random.default_rng(0).uniform(0.01, 1, bayar.kernel.shape)
    bayar.set_weights([bayar_constrained(weights)])
    x = Truncation(3.0, name="tlu")(x)
    x = layers.Conv2D(_width(16, factor), 3, padding="same", name="stem")(x)
    x = layers.ReLU(name="stem_relu")(layers.BatchNormalization(name="stem_bn")(x))
    outputs = _residual_blocks(layers, x, factor, RESIDUAL_BLOCKS[small], squeeze=4)
    return keras.Model(inputs, outputs, name="se_residual")


def build_keras2(name: str, small: bool = False):
    """The tf.keras 2 model of pattern `name`; needs tf-keras and TF_USE_LEGACY_KERAS=1."""
    global K
    import tf_keras as k

    K = k.backend
    size, channels, factor = SIZES[name][1 if small else 0]
    inputs = k.Input((size, size, channels), name="image")

    def srm_init(shape, dtype=None):
        return tf.random.normal(shape, dtype=dtype)

    def TLU(x, tlu_threshold=3):  # noqa: N802 - named as such code names it
        return K.clip(x, -tlu_threshold, tlu_threshold)

    def tlu(x):
        return tf.maximum(tf.minimum(x, 3.0), -3.0)

    if name == "yenet":
        x = k.layers.Conv2D(_width(30, factor), 5, padding="same", kernel_initializer=srm_init,
                            name="conv1")(inputs)
        x = k.layers.Lambda(TLU, name="tlu")(x)
        model = k.Model(inputs, _yenet_body(k.layers, x, factor), name="yenet")
    elif name == "rgb":
        x = k.layers.Conv2D(_width(16, factor), 5, padding="same", name="conv1")(inputs)
        x = k.layers.Activation(tlu, name="act_tlu")(x)
        x = k.layers.SeparableConv2D(_width(32, factor), 3, padding="same", name="sep1")(x)
        x = k.layers.AveragePooling2D(2, name="pool1")(x)
        x = k.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
        x = k.layers.SeparableConv2D(_width(64, factor), 3, padding="same", activation="relu",
                                     name="sep2")(x)
        x = k.layers.GlobalAveragePooling2D(name="gap")(x)
        x = k.layers.Dense(_width(64, factor), activation=tlu, name="fc")(x)
        model = k.Model(inputs, k.layers.Dense(2, activation="softmax", name="softmax")(x), name="rgb")
    elif name in ("constraint", "learned"):
        model = _keras2_clip_class(k, tf, name, inputs, factor)
    else:
        raise SystemExit(f"{name}: not a Keras 2 pattern ({', '.join(KERAS2)})")
    _high_pass(model.get_layer("conv1"))
    return model


def _keras2_clip_class(k, tf, name, inputs, factor):
    from scripts._keras2_classes import keras2_clip_classes

    CenteredKernel, HardClip, LearnedTLU = keras2_clip_classes(k, tf)  # noqa: N806 - classes
    extra = {"kernel_constraint": CenteredKernel()} if name == "constraint" else {}
    x = k.layers.Conv2D(_width(16, factor), 5, padding="same", use_bias=False, name="conv1",
                        **extra)(inputs)
    x = HardClip(2.0, name="clip")(x) if name == "constraint" else LearnedTLU(name="tlu")(x)
    x = k.layers.Conv2D(_width(16, factor), 3, padding="same", activation="relu", name="conv2")(x)
    x = k.layers.GlobalAveragePooling2D(name="gap")(x)
    return k.Model(inputs, k.layers.Dense(2, activation="softmax", name="softmax")(x), name=name)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="patterns to write (default: all of the framework)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--small", action="store_true", help="the small sizes of the tests")
    parser.add_argument("--keras2", action="store_true", help="the tf.keras 2 .h5 forms (needs tf-keras)")
    args = parser.parse_args(argv)
    if args.keras2:
        try:
            import tf_keras  # noqa: F401
        except ImportError:
            sys.exit("--keras2 needs tf-keras: pip install --no-deps -c constraints.txt tf-keras")
    framework = "keras2" if args.keras2 else "keras3"
    names = args.names or (KERAS2 if args.keras2 else KERAS3)
    args.out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in names:
        model = (build_keras2 if args.keras2 else build_keras3)(name, args.small)
        path = args.out / f"{name}.{'h5' if args.keras2 else 'keras'}"
        model.save(path)
        written[path.name] = {"migrate": MIGRATE_OPTIONS.get((framework, name), []),
                              "input_shape": [int(d) for d in model.inputs[0].shape[1:]],
                              "parameters": int(model.count_params())}
        print(f"wrote {path} ({written[path.name]['parameters']} parameters)")
    (args.out / f"{framework}.json").write_text(json.dumps(written, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
