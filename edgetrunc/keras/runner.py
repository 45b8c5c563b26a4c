"""The one batched Keras predictor: `KerasRunner` and `predict_probability` (imports TensorFlow).

`KerasRunner` follows `edgetrunc.runtime.BaseRunner`: created from a `.keras` path (or a
loaded model), `infer(batch)` runs a compiled `tf.function` of the model in inference mode,
`batch_size` images at a time, and returns `{output name: float32}`, so every runtime helper
(`score_batch`, the parity comparator) takes it like an artifact runner. `layer_outputs(batch)`
returns the output of every layer in graph order, for the per-layer comparison.
`predict_probability(model, x)` is the stego probability `[N]` of an in-memory model, for
training, evaluation and conversion. The compiled function is kept on the model, so calling
either again does not trace again.
"""

from __future__ import annotations

import re

from pathlib import Path

import numpy as np

from edgetrunc.errors import InputError
from edgetrunc.keras.activation import layer_name_of, output_activation
from edgetrunc.metrics import stego_probability
from edgetrunc.runtime._base import BaseRunner, RunnerMetadata, TensorInfo

DEFAULT_BATCH_SIZE = 16


_SCOPE_NAME = re.compile(r"[A-Za-z0-9.][A-Za-z0-9_.\\/>-]*")  # TensorFlow's graph scope names


def compiled_inference(model):
    """`model(x, training=False)` as a `tf.function`, made once per model and kept on it.
    A model with a layer name that a TensorFlow graph refuses as a scope (markup, spaces,
    braces) runs eagerly instead: the same numbers, no graph."""
    infer = getattr(model, "_edgetrunc_infer", None)
    if infer is None:
        import tensorflow as tf

        names = [layer.name for layer in getattr(model, "_flatten_layers", lambda: [])()]
        if all(_SCOPE_NAME.fullmatch(str(name)) for name in names):
            infer = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        else:
            infer = lambda x: model(x, training=False)  # noqa: E731
        model._edgetrunc_infer = infer
    return infer


def predict_outputs(model, x: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE) -> list:
    """Every output of `model` on `x` (inference mode), `batch_size` inputs at a time.

    Returns one float32 array per model output, the batches concatenated.
    """
    infer = compiled_inference(model)
    parts = []
    for start in range(0, len(x), int(batch_size)):
        out = infer(_float32(x[start:start + int(batch_size)]))
        out = out if isinstance(out, (list, tuple)) else [out]
        parts.append([np.asarray(o, dtype=np.float32) for o in out])
    if not parts:
        return [np.zeros((0, *(int(d or 0) for d in t.shape[1:])), np.float32) for t in model.outputs]
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]


def output_names(model) -> list:
    """The name of each output of `model`, in order: the layer that makes it, else its tensor name."""
    names = [getattr(t, "name", f"output_{i}").split(":")[0] for i, t in enumerate(model.outputs)]
    return [layer_name_of(t, model) or name for t, name in zip(model.outputs, names)]


def _model_feed(batch):
    """A feed `{input name: array}` as `NamedInputs` (sliced like one array); an array as it is."""
    from edgetrunc.runtime.feeds import NamedInputs

    return NamedInputs(batch) if isinstance(batch, dict) else batch


def _float32(batch):
    """The model's call argument: one float32 array, or a list of them in input order."""
    from edgetrunc.runtime.feeds import NamedInputs

    if isinstance(batch, NamedInputs):
        return [np.asarray(value, np.float32) for value in batch.arrays.values()]
    return np.asarray(batch, np.float32)


def predict_probability(model, x: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE,
                        activation: str | None = None) -> np.ndarray:
    """Stego probability `[N]` (float64) of `x` under `model` in inference mode.

    Batch norm runs on its running statistics. Each batch of the first output goes through
    `edgetrunc.metrics.stego_probability` with the model's last activation (`activation`,
    default `output_activation(model)`), so logits and one-column outputs are handled as
    everywhere else.
    """
    activation = activation or output_activation(model)
    infer = compiled_inference(model)
    parts = []
    for start in range(0, len(x), int(batch_size)):
        out = infer(np.asarray(x[start:start + int(batch_size)], np.float32))
        first = out[0] if isinstance(out, (list, tuple)) else out
        parts.append(stego_probability(np.asarray(first), activation))
    return np.concatenate(parts) if parts else np.zeros((0,), np.float64)


def layer_outputs(model) -> list:
    """`[(layer, output)]` of every layer of `model` whose output Keras knows, in graph order;
    `output` is a tensor, or a list / tuple of them for a layer with several outputs."""
    pairs = []
    for layer in model.layers:
        try:
            pairs.append((layer, layer.output))
        except (AttributeError, ValueError):
            continue
    return pairs


def _single_output_layers(model) -> list:
    """`[(layer, output tensor)]` of every layer of `model` with one output, in graph order."""
    return [(layer, out) for layer, out in layer_outputs(model)
            if not isinstance(out, (list, tuple))]


class KerasRunner(BaseRunner):
    """Run a Keras model with a compiled `tf.function` on float32 NHWC batches.

    Args:
        path_or_model: a `.keras` path or a `keras.Model`.
        threads: kept for the runner interface; TensorFlow's thread pools are process-wide
            and are not changed here.
        batch_size: images per call of the compiled function (default 16).
        custom_objects: for a path, a dict or the user's own `.py` file the model needs.
        trust_lambda: for a path, load its Lambda layers (their stored code runs).
    """

    format = "keras"

    def __init__(self, path_or_model, threads: int | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, custom_objects=None,
                 trust_lambda: bool = False):
        self._model = None if isinstance(path_or_model, (str, Path)) else path_or_model
        self.custom_objects, self.trust_lambda = custom_objects, trust_lambda
        self.batch_size = int(batch_size)
        self._layer_model = None
        path = path_or_model if self._model is None else f"<memory>/{path_or_model.name}.keras"
        super().__init__(path, threads)

    def _source_path(self, path) -> Path:
        if self._model is not None or Path(path).is_dir():  # a SavedModel folder: the loader says what to do
            return Path(path)
        return super()._source_path(path)

    @property
    def model(self):
        return self._model

    def _load_impl(self):
        import keras
        import tensorflow as tf

        if self._model is None:
            from edgetrunc.keras.load import load_keras_model

            self._model = load_keras_model(self.path, custom_objects=self.custom_objects,
                                     trust_lambda=self.trust_lambda)
        model = self._model
        if not model.inputs:
            raise InputError(f"{self.path}: the model has no input")
        self._output_names = output_names(model)
        self._meta = RunnerMetadata(
            path=str(self.path), format="keras", precision="fp32",
            inputs=[TensorInfo(name=t.name, shape=tuple(None if d is None else int(d) for d in t.shape),
                               dtype="float32") for t in model.inputs],
            outputs=[TensorInfo(name=n, shape=tuple(None if d is None else int(d) for d in t.shape),
                                dtype="float32") for n, t in zip(self._output_names, model.outputs)],
            layout="NHWC", backend=f"keras {keras.__version__} / tensorflow {tf.__version__}",
            threads=self.threads, output_activation=output_activation(model),
            layers=len(model.layers))

    def _infer_impl(self, batch) -> dict:
        outputs = predict_outputs(self._model, _model_feed(batch), self.batch_size)
        return dict(zip(self._output_names, outputs))

    def layer_outputs(self, batch: np.ndarray) -> dict:
        """`{layer name: float32 output}` of every layer with one output tensor, in graph order."""
        import keras

        if self._layer_model is None:
            pairs = _single_output_layers(self._model)
            self._layer_names = [layer.name for layer, _ in pairs]
            inputs = self._model.inputs if len(self._model.inputs) > 1 else self._model.inputs[0]
            self._layer_model = keras.Model(inputs, [out for _, out in pairs])
        batch = _model_feed(batch)
        if 0 < len(batch) <= self.batch_size:  # one call: its arrays as they come, no concatenated copy
            outputs = compiled_inference(self._layer_model)(_float32(batch))
            outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
            return {name: np.asarray(out, dtype=np.float32) for name, out in zip(self._layer_names, outputs)}
        outputs = predict_outputs(self._layer_model, batch, self.batch_size)
        return dict(zip(self._layer_names, outputs))

    def layer_output_bytes(self, sample_shape: tuple) -> int:
        """Bytes of `layer_outputs` per sample of `sample_shape` (free dimensions of a layer
        taken as large as the input's: an upper bound for the usual downsampling nets)."""
        largest = max((int(d) for d in sample_shape), default=1)
        total = 0
        for _, out in _single_output_layers(self._model):
            dims = [int(d) if d is not None else largest for d in tuple(out.shape)[1:]]
            total += 4 * int(np.prod(dims, dtype=np.int64))
        return total

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
