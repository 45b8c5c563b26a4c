"""Keras 2 (tf-keras) for the fixture scripts, and the classes they write into their models.

`legacy_tf_keras()` returns `(tf, k)`: TensorFlow with `tf.keras` as Keras 2 and the tf_keras
module (exits with the install line where tf-keras is missing); call it before anything else
imports TensorFlow.

`keras2_clip_classes(k, tf)` returns `(CenteredKernel, HardClip, LearnedTLU)` built on the
tf.keras 2 module `k`: an unregistered kernel constraint, a custom clip class with its own
threshold key (`clip_value`) and a clip class that stores its threshold as a learned weight,
as public steganalysis code writes them. They are made inside a function because `k` is
imported only after `TF_USE_LEGACY_KERAS=1` is set in that process.
"""

from __future__ import annotations

import os
import sys


def legacy_tf_keras() -> tuple:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf

    try:
        import tf_keras as k
    except ImportError:
        sys.exit("this script needs tf-keras (Keras 2): "
                 "pip install --no-deps -c constraints.txt tf-keras")
    return tf, k


def keras2_clip_classes(k, tf) -> tuple:
    class CenteredKernel(k.constraints.Constraint):
        def __call__(self, w):
            return w - tf.reduce_mean(w, axis=(0, 1), keepdims=True)

    class HardClip(k.layers.Layer):
        def __init__(self, clip_value=2.0, **kwargs):
            super().__init__(**kwargs)
            self.clip_value = clip_value

        def call(self, x):
            return tf.clip_by_value(x, -self.clip_value, self.clip_value)

        def get_config(self):
            return {**super().get_config(), "clip_value": self.clip_value}

    class LearnedTLU(k.layers.Layer):
        def build(self, input_shape):
            self.threshold = self.add_weight(name="threshold", shape=(),
                                             initializer=k.initializers.Constant(2.5))

        def call(self, x):
            return tf.clip_by_value(x, -self.threshold, self.threshold)

    return CenteredKernel, HardClip, LearnedTLU
