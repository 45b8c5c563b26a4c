"""The chunks of a per-layer comparison: Keras layer outputs once per chunk, shared by every artifact.

`LayerReader.read(states, keras=True)` goes over the samples `size` at a time. For each chunk
the Keras model computes every layer's output once (or, with `keras=False`, only the shapes are
given: a pass that reads the artifact alone), then each artifact in turn runs the chunk in one
invocation and yields `(outputs, state, tensors)`; its tensors go before the next artifact runs,
so one artifact's tensors and one chunk's Keras outputs are the most held at once. A TFLite runner
(a fixed arena, values read lazily) serves every chunk when it is the only artifact; otherwise,
and always for ONNX Runtime (which holds its last run's tensors until its next run ends), the
runner lives for one chunk. `MemoryReader` serves arrays already in memory. No TensorFlow.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from edgetrunc.runtime import formats


class LayerReader:
    """Chunks of `batch` for `keras_runner` and the artifacts of `states` (see the module docstring)."""

    def __init__(self, keras_runner, states: list, batch: np.ndarray, size: int, threads=None):
        from edgetrunc.runtime.intermediates import intermediate_threads

        self.keras_runner, self.batch, self.size = keras_runner, batch, max(1, int(size))
        self.threads = intermediate_threads(threads)
        self.shapes = None
        self.kept = {}  # state -> runner kept across chunks (a lone TFLite artifact)
        self.lazy = {id(state): formats.get(state.format).lazy_tensors for state in states}
        self.lone = len(states) == 1 and self.lazy[id(states[0])]

    def _runner(self, state):
        from edgetrunc.runtime import open_with_intermediates

        runner = self.kept.get(id(state))
        if runner is None:
            runner = open_with_intermediates(state.path, threads=self.threads)
            if self.lone:
                self.kept[id(state)] = runner
        return runner

    def _shapes(self, count: int) -> dict:
        return {name: SimpleNamespace(shape=(count, *shape)) for name, shape in self.shapes.items()}

    def read(self, states: list, keras: bool = True):
        from edgetrunc.runtime.intermediates import release_memory

        for start in range(0, len(self.batch), self.size):
            part = self.batch[start:start + self.size]
            if keras or self.shapes is None:
                outputs = self.keras_runner.layer_outputs(part)
                self.shapes = {name: value.shape[1:] for name, value in outputs.items()}
            else:
                outputs = self._shapes(len(part))
            for state in states:
                runner = self._runner(state)
                runner.infer(part)
                tensors = runner.intermediate_tensors(**({"lazy": True} if self.lazy[id(state)] else {}))
                yield outputs, state, tensors
                tensors.clear()  # this artifact's arrays go before the next one's arrive
                del tensors, runner
                if not self.lone:
                    release_memory()
            outputs.clear()
            del outputs

    def close(self) -> None:
        self.kept.clear()


class MemoryReader:
    """One chunk of arrays held in memory: `{layer: Keras output}` and the artifact tensors."""

    def __init__(self, layer_outputs: dict, tensors: list):
        self.outputs, self.tensors = layer_outputs, list(tensors)

    def read(self, states: list, keras: bool = True):
        for state in states:
            yield self.outputs, state, self.tensors

    def close(self) -> None:
        pass
