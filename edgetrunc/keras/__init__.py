"""Everything edgetrunc does with an in-memory Keras model, below export and parity.

- `load`: the one model loader (`load_keras_model`, Keras 3 files directly, Keras 2 files through
  `edgetrunc.legacy`);
- `truncations`: the one walk that finds `Truncation` layers, nested models included;
- `activation`: the last activation of a model's output;
- `precision`: the float32 copy of a mixed-precision model;
- `runner`: `KerasRunner`, the one batched Keras predictor (a runtime-style runner).

Imports TensorFlow / Keras lazily, inside functions.
"""
