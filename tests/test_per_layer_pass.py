"""Per-layer parity in one pass: the Keras layer outputs are computed once per chunk for every
artifact, and the result is the one each artifact gets alone, whatever the chunking."""

import numpy as np
import pytest


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import keras

    from edgetrunc.export import export_onnx, export_tflite
    from edgetrunc.layers import Truncation

    keras.utils.set_random_seed(5)
    inputs = keras.Input((32, 32, 1), name="input")
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = Truncation(1.0, name="tlu")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="tanh", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x), name="tiny")
    folder = tmp_path_factory.mktemp("tiny")
    paths = [folder / "tiny.tflite", folder / "tiny.onnx"]
    paths[0].write_bytes(export_tflite(model, "fp32"))
    paths[1].write_bytes(export_onnx(model, "fp32").SerializeToString())
    return model, paths


class CountingRunner:
    """A KerasRunner that counts its layer-output computations."""

    def __init__(self, model):
        from edgetrunc.keras.runner import KerasRunner

        self.inner = KerasRunner(model)
        self.inner.metadata()
        self.calls = 0

    def layer_outputs(self, batch):
        self.calls += 1
        return self.inner.layer_outputs(batch)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _figures(layers):
    return [(l.layer, l.status, l.tensor, l.normalized_error, l.local_error) for l in layers]


def test_keras_runs_once_per_chunk_for_every_artifact_and_results_match_one_at_a_time(tiny):
    from edgetrunc.parity.per_layer import compare_artifact_layers, compare_artifacts_layers

    model, paths = tiny
    x = np.random.default_rng(0).uniform(0, 255, (6, 32, 32, 1)).astype(np.float32)
    runner = CountingRunner(model)
    per_sample = runner.layer_output_bytes((32, 32, 1))
    found = compare_artifacts_layers(runner, [(paths[0], "tflite", "fp32"), (paths[1], "onnx", "fp32")],
                                     x, chunk_bytes=2 * per_sample)
    assert runner.calls == 3  # 6 samples in chunks of 2, one Keras computation each
    for path, fmt, (layers, first) in zip(paths, ("tflite", "onnx"), found):
        alone, alone_first = compare_artifact_layers(runner, path, fmt, "fp32", x)  # one chunk
        assert first is None and alone_first is None
        by_chunks, whole = _figures(layers), _figures(alone)
        assert [f[:3] for f in by_chunks] == [f[:3] for f in whole]
        for a, b in zip(by_chunks, whole):
            for u, v in zip(a[3:], b[3:]):
                assert (u is None and v is None) or u == pytest.approx(v, rel=1e-3, abs=1e-5)  # float noise of batching
        assert any(layer.local_error is not None for layer in layers)
