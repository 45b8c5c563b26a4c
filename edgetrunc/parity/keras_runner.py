"""`KerasRunner`: the reference backend of the parity check (imports TensorFlow and Keras).

Follows `edgetrunc.runtime.BaseRunner`: created from a `.keras` path (or a loaded model),
`infer(batch)` runs a compiled `tf.function` of the model in inference mode, `batch_size`
images at a time, and returns `{output name: float32}`. `layer_outputs(batch)` returns the
output of every layer in graph order, for the per-layer comparison.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetrunc.errors import InputError
from edgetrunc.keras.activation import layer_name_of, output_activation  # noqa: F401
from edgetrunc.runtime._base import BaseRunner, RunnerMetadata, TensorInfo


def load_keras_model(path):
    """Load a `.keras` or `.h5` file (compile=False), raising `InputError` if it is unusable."""
    from edgetrunc.keras.load import load_model

    return load_model(path)


class KerasRunner(BaseRunner):
    """Run a Keras model with a compiled `tf.function` on float32 NHWC batches.

    Args:
        path_or_model: a `.keras` path or a `keras.Model`.
        threads: kept for the runner interface; TensorFlow's thread pools are process-wide
            and are not changed here.
        batch_size: images per call of the compiled function (default 16).
    """

    format = "keras"

    def __init__(self, path_or_model, threads: int | None = None, batch_size: int = 16):
        self._model = None if isinstance(path_or_model, (str, Path)) else path_or_model
        self.batch_size = int(batch_size)
        self._layer_model = None
        path = path_or_model if self._model is None else f"<memory>/{path_or_model.name}.keras"
        super().__init__(path, threads)

    def _source_path(self, path) -> Path:
        if self._model is not None or Path(path).is_dir():  # a SavedModel folder: load_model says what to do
            return Path(path)
        return super()._source_path(path)

    @property
    def model(self):
        return self._model

    def _load_impl(self):
        import tensorflow as tf

        if self._model is None:
            self._model = load_keras_model(self.path)
        model = self._model
        if len(model.inputs) != 1:
            raise InputError(f"{self.path}: expected a model with one input; it has {len(model.inputs)}")
        self._function = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        names = [getattr(t, "name", f"output_{i}").split(":")[0] for i, t in enumerate(model.outputs)]
        self._output_names = [layer_name_of(t, model) or name for t, name in zip(model.outputs, names)]
        shape = tuple(None if d is None else int(d) for d in model.inputs[0].shape)
        self._meta = RunnerMetadata(
            path=str(self.path), format="keras", precision="fp32",
            inputs=[TensorInfo(name=model.inputs[0].name, shape=shape, dtype="float32")],
            outputs=[TensorInfo(name=n, shape=tuple(None if d is None else int(d) for d in t.shape),
                                dtype="float32") for n, t in zip(self._output_names, model.outputs)],
            layout="NHWC",
            extra={"backend": f"keras {__import__('keras').__version__} / tensorflow {tf.__version__}",
                   "output_activation": output_activation(model),
                   "layers": len(model.layers)})

    def _infer_impl(self, batch: np.ndarray) -> dict:
        parts = []
        for start in range(0, len(batch), self.batch_size):
            out = self._function(batch[start:start + self.batch_size])
            out = out if isinstance(out, (list, tuple)) else [out]
            parts.append([np.asarray(o, dtype=np.float32) for o in out])
        return {name: np.concatenate([p[i] for p in parts]) for i, name in enumerate(self._output_names)}

    def layer_outputs(self, batch: np.ndarray) -> dict:
        """`{layer name: float32 output}` of every layer with one output tensor, in graph order."""
        import keras
        import tensorflow as tf

        if self._layer_model is None:
            layers, outputs = [], []
            for layer in self._model.layers:
                try:
                    out = layer.output
                except (AttributeError, ValueError):
                    continue
                if isinstance(out, (list, tuple)):
                    continue
                layers.append(layer.name)
                outputs.append(out)
            self._layer_names = layers
            probe = keras.Model(self._model.inputs[0], outputs)
            self._layer_model = tf.function(lambda x: probe(x, training=False), reduce_retracing=True)
        parts = []
        for start in range(0, len(batch), self.batch_size):
            outs = self._layer_model(np.asarray(batch[start:start + self.batch_size], np.float32))
            parts.append([np.asarray(o, dtype=np.float32) for o in outs])
        return {name: np.concatenate([p[i] for p in parts]) for i, name in enumerate(self._layer_names)}

    def single_inbound(self) -> dict:
        """`{layer name: its only inbound layer}` for the layers with exactly one inbound layer."""
        inbound = {}
        for layer in self._model.layers:
            nodes = getattr(layer, "_inbound_nodes", [])
            if len(nodes) != 1:
                continue
            sources = {t._keras_history[0].name for t in nodes[0].input_tensors
                       if getattr(t, "_keras_history", None) is not None}
            if len(sources) == 1 and len(nodes[0].input_tensors) == 1:
                inbound[layer.name] = sources.pop()
        return inbound

    def replay(self, layer_names: list, value: np.ndarray):
        """Run the named layers, in order, on `value` (inference mode); None if a layer refuses it."""
        out = value
        try:
            for name in layer_names:
                out = self._model.get_layer(name)(out, training=False)
        except (ValueError, TypeError, KeyError):
            return None
        return np.asarray(out, dtype=np.float32)
