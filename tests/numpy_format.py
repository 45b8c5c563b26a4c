"""A toy artifact format, registered in this one place: a detector stored as numpy arrays.

A `.npyart` file (`np.savez`) holds the clip bounds and the dense head of a Keras model
`Input(S, S, C) -> Truncation -> GlobalAveragePooling2D -> Dense(2, softmax)`;
`NumpyRunner` computes it with numpy. Importing this module registers the format (worker
processes import it too: `edgetrunc.runtime.formats.plugin_modules`).
"""

from __future__ import annotations

import numpy as np

from edgetrunc._io import require_file
from edgetrunc.runtime import formats
from edgetrunc.runtime._base import BaseRunner, RunnerMetadata, TensorInfo

SUFFIX = ".npyart"


def write_numpy_artifact(model, path) -> None:
    """The `.npyart` of a Keras model built as in the module docstring."""
    from edgetrunc.keras.truncations import find_truncations

    (truncation,) = find_truncations(model)
    kernel, bias = next(layer for layer in model.layers if layer.weights).get_weights()
    with open(path, "wb") as stream:
        np.savez(stream, lower=np.float32(truncation["lower"]),
                 upper=np.float32(truncation["upper"]), kernel=kernel, bias=bias,
                 shape=np.array(model.inputs[0].shape[1:]))


class NumpyRunner(BaseRunner):
    format = "numpy"

    def _source_path(self, path):
        return require_file(path, f"{SUFFIX} file")

    def _load_impl(self):
        with np.load(self.path) as data:
            self._arrays = {key: data[key] for key in data.files}
        shape = tuple(int(d) for d in self._arrays["shape"])
        self._meta = RunnerMetadata(
            path=str(self.path), format=self.format, precision="fp32",
            inputs=[TensorInfo("image", (None, *shape), "float32")],
            outputs=[TensorInfo("head", (None, 2), "float32")], backend="numpy",
            threads=self.threads, output_activation="softmax")

    def _infer_impl(self, batch):
        a = self._arrays
        pooled = np.clip(batch, a["lower"], a["upper"]).mean(axis=(1, 2))
        logits = pooled @ a["kernel"] + a["bias"]
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return {"head": (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)}


FORMAT = formats.register(formats.ArtifactFormat("numpy", SUFFIX, NumpyRunner,
                                                 description="numpy arrays of a tiny detector"))
