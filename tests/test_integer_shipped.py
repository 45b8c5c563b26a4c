"""The shipped full-integer artifacts: models/integer/ (`--target ethos-u`): current, full-integer,
on the NPU whole, run by TFLite Micro, and agreeing with the quantization-aware Keras model it came
from; models/integer/cpu/ (`--target cpu`, TFLite and ONNX): current, full-integer, packed for the
CPU, and agreeing with the same model."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

FOLDER = Path(__file__).resolve().parents[1] / "models" / "integer"
MANIFEST = FOLDER / "manifest.json"
SOURCE = FOLDER / "tlunet_qat.keras"
ARTIFACT = FOLDER / "tlunet_qat_int8-full.tflite"
CPU_FOLDER = FOLDER / "cpu"

pytestmark = pytest.mark.skipif(not MANIFEST.exists(), reason="models/integer/ not made yet "
                                "(make train-qat convert)")


@pytest.fixture(scope="module")
def entry():
    manifest = json.loads(MANIFEST.read_text())
    assert manifest["source"]["sha256"] == hashlib.sha256(SOURCE.read_bytes()).hexdigest()
    (found,) = manifest["artifacts"]
    return found


def test_the_artifact_is_current_and_full_integer(entry):
    assert entry["path"] == ARTIFACT.name and entry["precision"] == "int8-full"
    assert entry["sha256"] == hashlib.sha256(ARTIFACT.read_bytes()).hexdigest()
    assert entry["target"] == "ethos-u" and entry["integer"]["float_tensors"] == 0
    assert entry["inputs"][0]["dtype"] == "int8" and entry["inputs"][0]["scale"] == 1.0
    assert "SPACE_TO_DEPTH" not in entry["ops"] and "DEQUANTIZE" not in entry["ops"]


def test_it_decides_as_the_quantization_aware_model(entry):
    evaluation = entry["quantization"]["evaluation"]
    # measured 1.000 on 176 held-out tiles (target 0.99, BENCHMARKS.md)
    assert evaluation["decision_agreement"] >= 0.99 and evaluation["samples"] >= 100
    assert entry["outputs"][0]["shape"][-1] == 1 and entry["integer"]["output"].startswith("stego logit")


def test_vela_puts_it_on_the_npu_whole():
    pytest.importorskip("ethosu.vela")
    from edgetrunc.export.vela import vela_report

    report = vela_report(ARTIFACT, "ethos-u55-256")
    assert report["cpu_operators"] == 0 and report["npu_percent"] == 100.0


def test_tflite_micro_runs_it_within_one_step():
    pytest.importorskip("tflite_micro")
    from edgetrunc.runtime.micro import micro_check

    pixels = np.random.default_rng(0).integers(0, 256, (2, 256, 256, 1)).astype(np.float32)
    report = micro_check(ARTIFACT, pixels)
    assert report["runs"] and report["max_step_difference"] <= 1


def test_the_cpu_target_artifacts_are_current_packed_and_agree():
    manifest = json.loads((CPU_FOLDER / "manifest.json").read_text())
    assert manifest["source"]["sha256"] == hashlib.sha256(SOURCE.read_bytes()).hexdigest()
    by_format = {entry["format"]: entry for entry in manifest["artifacts"]}
    assert set(by_format) == {"tflite", "onnx"}
    for entry in by_format.values():
        path = CPU_FOLDER / entry["path"]
        assert entry["precision"] == "int8-full"
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert entry["inputs"][0]["dtype"] == "int8" and entry["inputs"][0]["scale"] == 1.0
        # measured 1.000 on 176 held-out tiles for both (BENCHMARKS.md)
        assert entry["quantization"]["evaluation"]["decision_agreement"] >= 0.99
    tflite = by_format["tflite"]
    assert tflite["target"] == "cpu" and tflite["integer"]["float_tensors"] == 0
    # the cpu target packs the one-channel int8 front end; the NPU one must not
    assert "DEPTH_TO_SPACE" in tflite["ops"] and "DEQUANTIZE" not in tflite["ops"]
