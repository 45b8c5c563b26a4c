"""Artifact formats: one descriptor per format, and a toy format run through every command.

`numpy_format` registers a `.npyart` format in one place; parity, infer, run and bench
then take it like the built-in ones, with no other change.
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from edgetrunc.errors import InputError
from edgetrunc.runtime import formats
from edgetrunc.runtime.formats import RunnerOptions

keras = pytest.importorskip("keras")

TESTS = Path(__file__).resolve().parent
SIZE = 16


@pytest.fixture
def numpy_format():
    """The toy format registered for one test, then removed again."""
    import numpy_format as module

    formats.register(module.FORMAT)  # again after a test removed it
    yield module
    formats.unregister("numpy")


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory):
    """A Keras detector the toy format can hold, saved as `.keras`."""
    from edgetrunc.layers import Truncation

    keras.utils.set_random_seed(4)
    inputs = keras.Input((SIZE, SIZE, 1), name="image")
    x = Truncation(100.0, name="tlu")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="head")(x)
    model = keras.Model(inputs, outputs, name="toy")
    model.layers[-1].set_weights([np.array([[0.03, -0.02]], np.float32),
                                  np.array([-1.0, 1.0], np.float32)])
    path = tmp_path_factory.mktemp("toy") / "toy.keras"
    model.save(path)
    return model, path


def test_built_in_formats_are_described_once():
    assert formats.suffixes() == (".tflite", ".onnx", ".npz")
    assert formats.suffixes(runnable=True) == (".tflite", ".onnx")
    assert formats.for_path("a/b.TFLITE").name == "tflite"
    assert formats.get("onnx").runner_kwargs(RunnerOptions(threads=2, spin=False)) == {
        "threads": 2, "spin": False, "preserve_all_tensors": False}
    assert formats.get("tflite").runner_kwargs(RunnerOptions(xnnpack=False)) == {
        "threads": None, "use_xnnpack": False, "preserve_all_tensors": False}
    with pytest.raises(InputError, match=r"'\.npz'; expected a \.tflite or \.onnx artifact"):
        formats.for_path("outputs.npz", runnable=True)
    with pytest.raises(InputError, match="unknown spinning"):
        RunnerOptions.from_dict({"spinning": False})
    with pytest.raises(ValueError, match="taken by the format 'tflite'"):
        formats.register(formats.ArtifactFormat("other", ".tflite", object))


def test_export_hooks_live_on_the_same_descriptor():
    from edgetrunc.export.formats import export_format

    assert export_format("tflite").export.precisions == ("fp32", "fp16", "int8", "int8-full")
    assert export_format("onnx").export.option_names == ("opset", "nchw", "int8_mode", "literal")
    with pytest.raises(InputError, match="has no exporter"):
        export_format("recorded")


def test_a_runner_is_a_context_manager(detector):
    with formats.for_path(detector["onnx"]).open(detector["onnx"]) as runner:
        assert runner.metadata().format == "onnx" and not runner.closed
    assert runner.closed
    with pytest.raises(InputError, match="closed"):
        runner.infer(np.zeros((1, 256, 256, 1), np.float32))
    runner.close()  # a second close does nothing


def test_a_registered_format_runs_through_parity_infer_run_and_bench(numpy_format, toy_model,
                                                                       tmp_path, cli, monkeypatch):
    model, keras_path = toy_model
    artifact = tmp_path / f"toy{numpy_format.SUFFIX}"
    numpy_format.write_numpy_artifact(model, artifact)
    inputs, report = tmp_path / "inputs.npz", tmp_path / "parity.json"

    code, _, err = cli("parity", keras_path, artifact, "--samples", "6", "--inputs", "random",
                       "--per-layer", "--save-inputs", inputs, "--json", report)
    assert code == 0, err
    result = json.loads(report.read_text())
    (entry,) = result["artifacts"]
    assert entry["format"] == "numpy" and entry["passed"]
    assert entry["max_abs_error"] < 1e-5
    assert any("no per-layer" in w for w in result["warnings"])
    assert any("no probes" in w for w in result["warnings"])

    from PIL import Image

    image = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (SIZE, SIZE), np.uint8)).save(image)
    code, out, err = cli("infer", artifact, image, "--json")
    assert code == 0, err
    (scored,) = json.loads(out)["results"]
    expected = model.predict(np.asarray(Image.open(image), np.float32)[None, :, :, None],
                             verbose=0)[0, 1]
    assert scored["stego_probability"] == pytest.approx(float(expected), abs=1e-5)

    recorded = tmp_path / "recorded.npz"
    code, _, err = cli("run", artifact, inputs, "--out", recorded)
    assert code == 0, err
    code, _, err = cli("parity", keras_path, recorded, "--inputs", inputs, "--json", report)
    assert code == 0, err
    assert json.loads(report.read_text())["artifacts"][0]["passed"]

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])]))
    code, out, err = cli("bench", artifact, "--runs", "2", "--warmup", "1", "--json")
    assert code == 0, err
    (row,) = json.loads(out)["results"]
    assert row["format"] == "numpy" and row["p50_ms"] > 0
    assert "numpy_format" in sys.modules


def test_an_unregistered_suffix_names_the_known_ones(tmp_path, cli):
    artifact = tmp_path / "toy.npyart"
    artifact.write_bytes(b"x")
    code, _, err = cli("infer", artifact, artifact)
    assert code == 2 and "expected a .tflite or .onnx artifact" in err
