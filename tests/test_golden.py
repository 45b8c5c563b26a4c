"""Golden outputs: parity --save-outputs / --load-outputs, assert_parity(golden=...), recorded
device outputs in assert_parity, and the plugin's cached conversion and marker on a tiny model."""

import json
from pathlib import Path

import numpy as np
import pytest

from edgetrunc.testing import assert_parity

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
MODEL = MODELS / "tlunet.keras"
FP32, INT8_ONNX = MODELS / "tlunet_fp32.tflite", MODELS / "tlunet_int8.onnx"


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    from edgetrunc.cli import main

    path = tmp_path_factory.mktemp("golden") / "golden.npz"
    assert main(["-q", "parity", str(MODEL), str(FP32), str(INT8_ONNX), "--samples", "6",
                 "--no-probes", "--per-layer", "--layer-samples", "2", "--save-outputs", str(path)]) == 0
    return path


def _rewrite(source: Path, target: Path, meta=None, change=None) -> Path:
    """A copy of a golden file with its meta edited (`meta(dict)`) and arrays changed (`change`)."""
    with np.load(source) as data:
        arrays = {key: data[key] for key in data.files}
    stored = json.loads(str(arrays["meta"]))
    if meta:
        meta(stored)
    arrays["meta"] = np.array(json.dumps(stored))
    for key, delta in (change or {}).items():  # "out1_0", or "layer:RUNNER:LAYER"
        if key.startswith("layer:"):
            _, runner, layer = key.split(":")
            key = f"layer{list(stored['layers']).index(runner)}_{stored['layers'][runner].index(layer)}"
        arrays[key] = arrays[key] + np.float32(delta)
    np.savez(target, **arrays)
    return target


def test_the_golden_file_holds_inputs_outputs_layers_and_versions(golden):
    from edgetrunc.parity.golden import load_golden

    found = load_golden(golden)
    assert set(found.outputs) == {"keras", "tlunet_fp32.tflite", "tlunet_int8.onnx"}
    assert found.x.shape == (6, 256, 256, 1)
    assert all(v.shape == (6, 2) for runner in found.outputs.values() for v in runner.values())
    assert set(found.layers) == {"keras", "tlunet_fp32.tflite", "tlunet_int8.onnx"}
    assert len(found.layers["keras"]["group1_truncation"]) == 2
    assert "group2_tanh" in found.layers["tlunet_fp32.tflite"] and "group2_tanh" in found.layers["tlunet_int8.onnx"]
    assert {"tensorflow-cpu", "onnxruntime", "ai-edge-litert", "tf2onnx"} <= set(found.meta["versions"])
    assert found.meta["model"] == {"name": "tlunet", "input_shape": [256, 256, 1]}
    assert len(found.meta["runners"]["tlunet_fp32.tflite"]["sha256"]) == 64


def test_a_golden_file_is_never_replaced_without_force(golden, cli):
    before = golden.read_bytes()
    code, out, err = cli("parity", MODEL, FP32, "--samples", "2", "--no-probes", "--save-outputs", golden)
    assert code == 2 and err.strip().endswith("golden file exists; pass --force to replace it")
    assert len(err.strip().splitlines()) == 1 and golden.read_bytes() == before
    code, _, err = cli("parity", MODEL, FP32, "--samples", "2", "--no-probes", "--save-outputs", MODEL)
    assert code == 2 and MODEL.read_bytes()[:2] == b"PK"


@pytest.mark.slow
def test_todays_outputs_match_the_golden_ones(golden, cli):
    code, out, err = cli("parity", MODEL, FP32, INT8_ONNX, "--load-outputs", golden, "--no-probes",
                         "--per-layer", "--layer-samples", "2")
    assert code == 0, out + err
    assert "golden outputs: keras unchanged, tlunet_fp32.tflite unchanged, tlunet_int8.onnx unchanged" in out
    code, out, err = cli("parity", MODEL, "--load-outputs", golden, "--no-probes")
    assert code == 0 and "golden outputs: keras unchanged" in out, out + err


def test_moved_outputs_fail_naming_the_version_that_changed(golden, cli, tmp_path):
    def older_tensorflow(meta):
        meta["versions"]["tensorflow-cpu"] = "2.0.0"

    moved = _rewrite(golden, tmp_path / "moved.npz", older_tensorflow, {"out1_0": 0.25})
    code, out, err = cli("parity", MODEL, FP32, INT8_ONNX, "--load-outputs", moved, "--no-probes")
    assert code == 1, out + err
    line = next(line for line in out.splitlines() if "FAIL golden" in line)
    assert line.startswith("  FAIL golden tlunet_fp32.tflite: outputs moved from the golden outputs (")
    assert "changed since the golden file: tensorflow-cpu 2.0.0 -> " in line
    assert "golden outputs: keras unchanged, tlunet_fp32.tflite MOVED, tlunet_int8.onnx unchanged" in out
    with pytest.raises(AssertionError, match=r"golden tlunet_fp32.tflite: outputs moved .*tensorflow-cpu 2.0.0 -> "):
        assert_parity(MODEL, [FP32, INT8_ONNX], golden=moved, probes=False)


def test_a_moved_layer_is_named_for_keras_and_for_an_artifact(golden, cli, tmp_path):
    moved = _rewrite(golden, tmp_path / "layer.npz", change={"layer:keras:group2_conv": 1.0,
                                                             "layer:tlunet_fp32.tflite:group2_tanh": 1.0})
    code, out, _ = cli("parity", MODEL, FP32, "--load-outputs", moved, "--no-probes", "--per-layer",
                       "--layer-samples", "2")
    assert code == 1
    assert "FAIL golden keras: outputs moved from the golden outputs (layer group2_conv moved); " \
           "no toolchain version or artifact changed since the golden file" in out
    assert "FAIL golden tlunet_fp32.tflite: outputs moved from the golden outputs (layer group2_tanh moved)" in out


def test_golden_outputs_in_a_test_pass_and_bad_golden_files_are_one_line(golden, tmp_path, cli):
    report = assert_parity(MODEL, FP32, golden=golden, probes=False)
    assert report.passed and [g.runner for g in report.golden] == ["keras", "tlunet_fp32.tflite"]
    other = _rewrite(golden, tmp_path / "other.npz", lambda meta: meta["model"].update(name="yenet"))
    with pytest.raises(AssertionError) as failure:
        assert_parity(MODEL, FP32, golden=other, probes=False)
    assert "golden outputs of model 'yenet' [256, 256, 1]; this model is 'tlunet'" in str(failure.value)
    assert "\n" not in str(failure.value)
    code, _, err = cli("parity", MODEL, FP32, "--load-outputs", other, "--no-probes")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "golden outputs of model 'yenet'" in err
    from edgetrunc.runtime.recorded import save_inputs

    save_inputs(tmp_path / "inputs.npz", np.zeros((2, 256, 256, 1), np.float32))
    with pytest.raises(AssertionError, match=r"^\S+inputs.npz: not a golden outputs file; expected one "
                       r"written by parity --save-outputs$"):
        assert_parity(MODEL, FP32, golden=tmp_path / "inputs.npz", probes=False)
    with pytest.raises(AssertionError, match="no golden outputs for tlunet_fp16.tflite"):
        assert_parity(MODEL, MODELS / "tlunet_fp16.tflite", golden=golden, probes=False)


def test_assert_parity_judges_outputs_recorded_on_a_device(tmp_path):
    from edgetrunc.runtime.recorded import record_outputs, save_inputs

    rng = np.random.default_rng(0)
    save_inputs(tmp_path / "inputs.npz", rng.integers(0, 256, (3, 256, 256, 1)).astype(np.float32))
    record_outputs(FP32, tmp_path / "inputs.npz", tmp_path / "device.npz")
    report = assert_parity(MODEL, tmp_path / "device.npz", inputs=str(tmp_path / "inputs.npz"), probes=False)
    assert report.artifacts[0].metadata["backend"].startswith("recorded:")


TINY_TEST = '''
import pytest

@pytest.mark.parity_artifacts("tiny.keras", tflite=["fp32"], onnx=["fp32"])
def test_each(parity_model, parity_artifact, converted_artifacts):
    converted = converted_artifacts(parity_model, tflite=["fp32"], onnx=["fp32"])
    assert parity_artifact in converted.paths and parity_model.name == "tiny.keras"
    print("CACHE", converted.folder)
'''


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny Truncation model, built before `pytester` snapshots sys.modules."""
    import keras

    from edgetrunc.layers import Truncation

    inputs = keras.Input((32, 32, 1))
    x = Truncation(2.0, name="tlu")(keras.layers.Conv2D(2, 3, padding="same", name="conv")(inputs))
    path = tmp_path_factory.mktemp("tiny") / "tiny.keras"
    keras.Model(inputs, keras.layers.Dense(2, name="head")(keras.layers.Flatten()(x)), name="tiny").save(path)
    return path


@pytest.mark.slow
def test_the_marker_converts_a_model_once_and_the_cache_outlives_the_session(tiny_model, pytester):
    (pytester.path / "tiny.keras").write_bytes(tiny_model.read_bytes())
    pytester.makepyfile(test_tiny=TINY_TEST)
    first = pytester.runpytest_subprocess("-p", "edgetrunc.testing.plugin", "-q", "-s")
    first.assert_outcomes(passed=2)
    assert "test_each[tiny_fp32.tflite]" in "\n".join(pytester.runpytest_subprocess(
        "-p", "edgetrunc.testing.plugin", "--collect-only", "-q").outlines)
    folder = Path(next(line for line in first.outlines if line.startswith("CACHE")).split(" ", 1)[1])
    assert folder.parent.name == "edgetrunc-artifacts" and ".pytest_cache" in folder.parts
    stamp = (folder / "manifest.json").stat().st_mtime_ns
    pytester.runpytest_subprocess("-p", "edgetrunc.testing.plugin", "-q").assert_outcomes(passed=2)
    assert (folder / "manifest.json").stat().st_mtime_ns == stamp
