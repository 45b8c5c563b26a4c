"""Write the truncation-variant model files under tests/fixtures/variants/ with Keras 2 (tf-keras).

The forms public steganalysis code writes that are not a symmetric clip: ALASKA2's Xu-Net
one-sided `DCT_Trunc = -(relu(-x + 8) - 8)` (= min(x, 8)) as a Lambda, with and without the
`ABS` Lambda beside it (`.hdf5`, as that code saves); a lone `tf.minimum(x, 8)` op layer; a
`TLU` class whose threshold sits under its own key (`th`, as the Bayar-ResSE net writes it) and
one whose config holds two numbers; and a file with several blockers at once (an activation
function saved by name, an unknown class, a Lambda reading a script global, an unknown op
layer). `MANIFEST.json` holds each
model's Keras 2 output on a fixed input. The tests read only the committed files; this
script needs tf-keras (the `legacy-fixtures` extra) and is run by hand:

    pip install --no-deps -c constraints.txt tf-keras
    python -m scripts.make_variant_fixtures [--out tests/fixtures/variants]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from scripts._keras2_classes import legacy_tf_keras

tf, k = legacy_tf_keras()  # tf.keras is Keras 2 from here on

K = k.backend
SHAPE = (32, 32, 1)
SCALE = 0.5  # a script global read by one saved lambda: the file cannot store it


def _xunet(front, name):
    """A Xu-Net-pattern detector: fixed DCT-like filters, `front` layers, conv, BN, tanh, pool."""
    inputs = k.Input(SHAPE, name="image")
    x = k.layers.Conv2D(16, 4, padding="same", use_bias=False, name="dct")(inputs)
    for layer in front:
        x = layer(x)
    x = k.layers.Conv2D(8, 3, padding="same", name="conv2")(x)
    x = k.layers.BatchNormalization(name="bn")(x)
    x = k.layers.Activation("tanh", name="tanh")(x)
    x = k.layers.AveragePooling2D(2, name="pool")(x)
    x = k.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = k.layers.Dense(2, activation="softmax", name="softmax")(x)
    model = k.Model(inputs, outputs, name=name)
    rng = np.random.default_rng(0)
    kernel = rng.normal(0, 1, (4, 4, 1, 16))
    kernel -= kernel.mean(axis=(0, 1), keepdims=True)  # zero-mean, so min(x, 8) saturates
    model.get_layer("dct").set_weights([(2 * kernel).astype("float32")])
    return model


def _tlu_class(keys):
    class TLU(k.layers.Layer):
        def __init__(self, **kwargs):
            self.params = {key: kwargs.pop(key) for key in keys}
            super().__init__(**kwargs)

        def call(self, x):
            th = self.params[keys[0]]
            return tf.clip_by_value(x, -th, th)

        def get_config(self):
            return {**super().get_config(), **self.params}

    return TLU


def build(out: Path) -> dict:
    k.utils.set_random_seed(0)
    manifest = {}
    x = np.random.default_rng(1).integers(0, 256, (2, *SHAPE)).astype("float32")

    def save(filename, model, **info):
        model.save(out / filename)
        manifest[filename] = {"input_shape": list(SHAPE),
                              "keras2_output": model(x).numpy().tolist(), **info}

    trunc = k.layers.Lambda(lambda v: -(K.relu(-v + 8) - 8), name="DCT_Trunc")
    save("xunet_trunc.hdf5", _xunet([trunc], "xunet_trunc"),
         truncation="Lambda -(relu(-x + 8) - 8) = min(x, 8)")
    front = [k.layers.Lambda(lambda v: K.abs(v), name="ABS"),
             k.layers.Lambda(lambda v: -(K.relu(-v + 8) - 8), name="DCT_Trunc")]
    save("xunet_abs_trunc.hdf5", _xunet(front, "xunet_abs_trunc"),
         truncation="Lambda ABS, then Lambda -(relu(-x + 8) - 8)")

    inputs = k.Input(SHAPE, name="image")
    y = k.layers.Conv2D(4, 3, padding="same", name="conv1")(inputs)
    y = tf.minimum(y, 8.0)
    y = k.layers.GlobalAveragePooling2D(name="gap")(y)
    save("tfop_min.h5", k.Model(inputs, k.layers.Dense(2, activation="softmax")(y)),
         truncation="op layer tf.minimum(x, 8)")

    for filename, keys, values in (("tlu_th.h5", ("th",), (3.0,)),
                                   ("tlu_two.h5", ("th", "alpha"), (3.0, 0.5))):
        layer = _tlu_class(keys)(name="tlu", **dict(zip(keys, values)))
        save(filename, _xunet([layer], filename.split(".")[0]),
             truncation=f"class TLU({', '.join(f'{a}={b}' for a, b in zip(keys, values))})")

    def tlu(v):
        return K.clip(v, -3.0, 3.0)

    inputs = k.Input(SHAPE, name="image")
    y = k.layers.Conv2D(4, 3, padding="same", activation=tlu, name="conv1")(inputs)
    y = _tlu_class(("th",))(name="tlu2", th=2.0)(y)
    y = k.layers.Lambda(lambda v: v * SCALE, name="scale")(y)
    y = tf.math.softsign(y)
    y = k.layers.GlobalAveragePooling2D(name="gap")(y)
    save("blockers.h5", k.Model(inputs, k.layers.Dense(2, activation="softmax")(y)),
         truncation="activation tlu, class TLU(th=2), Lambda reading the script global "
         "SCALE, op layer tf.math.softsign")
    return manifest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "tests"
                                             / "fixtures" / "variants"))
    out = Path(parser.parse_args(argv).out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = build(out)
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    for name in sorted(manifest):
        print(f"{name:24s} {(out / name).stat().st_size / 1024:7.1f} KiB  "
              f"{manifest[name]['truncation']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
