"""`convert` does each piece of work once: one load and one truncation walk per model, one
tf2onnx conversion for both ONNX precisions, and each TFLite flatbuffer parsed once, with its
passes and metadata written in one go; the artifacts are those of separate exports."""

import hashlib
from collections import Counter

import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("tf2onnx")

from edgetrunc.export import conversion, export_onnx, export_tflite  # noqa: E402
from edgetrunc.export.tflite import graph as tg  # noqa: E402
from edgetrunc.layers import Truncation  # noqa: E402
from edgetrunc.runtime.metadata import read_tflite_metadata  # noqa: E402


def _model():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((16, 16, 1), name="input")
    x = keras.layers.Conv2D(2, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = Truncation(2.0, name="tlu")(x)
    x = keras.layers.AveragePooling2D(2, name="pool")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="head")(x),
                       name="tiny")


def _counting(monkeypatch, module, name, calls):
    original = getattr(module, name)

    def counted(*args, **kwargs):
        calls[name] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)


def test_convert_loads_once_walks_once_and_converts_onnx_once(tmp_path, monkeypatch):
    import tf2onnx

    import edgetrunc.keras.load as load
    import edgetrunc.keras.precision as precision
    import edgetrunc.keras.truncations as truncations

    path = tmp_path / "tiny.keras"
    _model().save(path)
    calls = Counter()
    _counting(monkeypatch, keras.saving, "load_model", calls)
    _counting(monkeypatch, load, "require_keras_file", calls)
    _counting(monkeypatch, conversion, "require_keras_file", calls)  # the file is checked once
    _counting(monkeypatch, truncations, "find_truncations", calls)
    _counting(monkeypatch, precision, "float32_model", calls)
    _counting(monkeypatch, tf2onnx.convert, "from_keras", calls)
    timings = {}
    manifest = conversion.convert(path, tmp_path / "out", tflite=("fp32", "fp16"),
                                  onnx=("fp32", "int8"), evaluate=False, speed=False,
                                  timings=timings)
    assert len(manifest["artifacts"]) == 4
    # exported ONNX first (tf2onnx's peak on the smallest heap), listed as planned
    assert list(timings) == ["tiny_fp32.onnx", "tiny_int8.onnx", "tiny_fp32.tflite", "tiny_fp16.tflite"]
    assert [a["path"] for a in manifest["artifacts"]] == [
        "tiny_fp32.tflite", "tiny_fp16.tflite", "tiny_fp32.onnx", "tiny_int8.onnx"]
    assert calls == {"load_model": 1, "require_keras_file": 1, "find_truncations": 1,
                     "float32_model": 1, "from_keras": 1}


def test_each_tflite_flatbuffer_is_parsed_and_written_once(monkeypatch):
    reads, writes = [], []
    read, write = tg.read_model, tg.write_model

    def counted_read(content):
        reads.append(hashlib.sha256(bytes(content)).hexdigest())
        return read(content)

    def counted_write(model_t):
        writes.append(1)
        return write(model_t)

    monkeypatch.setattr(tg, "read_model", counted_read)
    monkeypatch.setattr(tg, "write_model", counted_write)
    payload = {"format": "tflite", "precision": "fp32", "truncations": []}
    applied = []
    content = export_tflite(_model(), "fp32", applied=applied, metadata=payload)
    assert applied  # the passes changed it: before, it was written, read again and written
    assert (len(reads), len(writes)) == (1, 1)
    assert read_tflite_metadata(content) == payload
    reads.clear(), writes.clear()
    export_tflite(_model(), "fp16", metadata=payload)
    # the fp16 flatbuffer (edited) and the fp32 one (read for its exact constants): once each
    assert len(reads) == len(set(reads)) == 2 and len(writes) == 1


def test_prepared_model_gives_the_bytes_of_separate_exports():
    from edgetrunc.export.prepared import prepare

    model = _model()
    prepared = prepare(model)
    x = keras.random.uniform((8, 16, 16, 1), seed=0).numpy() * 255
    shared = {p: export_tflite(prepared, p) for p in ("fp32", "fp16")}
    shared_onnx = {p: export_onnx(prepared, p, calibration=x).SerializeToString()
                   for p in ("fp32", "int8")}
    assert shared == {p: export_tflite(model, p) for p in ("fp32", "fp16")}
    assert shared_onnx == {p: export_onnx(model, p, calibration=x).SerializeToString()
                           for p in ("fp32", "int8")}


def test_a_model_xnnpack_refuses_runs_with_the_builtin_kernels(tmp_path, monkeypatch, capsys):
    """The converter's int8 graph of a deep SE net fails XNNPACK's prepare at its first run;
    evaluation, the speed check and parity then run it with the built-in kernels."""
    import numpy as np

    from edgetrunc.runtime import open_runner, tflite_runner

    path = tmp_path / "m.tflite"
    path.write_bytes(export_tflite(_model(), "fp32"))
    x = np.random.default_rng(0).uniform(0, 255, (3, 16, 16, 1)).astype(np.float32)
    with open_runner(path, use_xnnpack=False) as runner:
        expected = runner.infer(x)
    run = tflite_runner.TFLiteRunner._run

    def refusing(self, interpreter, batch):
        if self.use_xnnpack:
            raise RuntimeError("failed to create XNNPACK runtimeNode number 3 "
                               "(TfLiteXNNPackDelegate) failed to prepare.")
        return run(self, interpreter, batch)

    monkeypatch.setattr(tflite_runner.TFLiteRunner, "_run", refusing)
    capsys.readouterr()
    with open_runner(path) as runner:
        results = runner.infer(x)
        assert not runner.use_xnnpack
    assert results.keys() == expected.keys()
    assert all(np.array_equal(results[k], expected[k]) for k in expected)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "m.tflite: XNNPACK cannot run this model here" in line and "built-in kernels" in line


def test_held_out_batches_shrink_for_a_net_with_many_layer_outputs(monkeypatch):
    from edgetrunc.data.geometry import image_geometry
    from edgetrunc.export import calibration

    model = _model()
    geometry = image_geometry(model)
    assert calibration.evaluation_batch(model, geometry) == calibration.EVALUATION_BATCH
    per_image = calibration.activation_values(model, geometry)
    monkeypatch.setattr(calibration, "BATCH_ACTIVATIONS", 3 * per_image)
    assert calibration.evaluation_batch(model, geometry) == 3
    monkeypatch.setattr(calibration, "BATCH_ACTIVATIONS", per_image // 2)
    assert calibration.evaluation_batch(model, geometry) == 1
