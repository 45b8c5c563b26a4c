"""The shipped artifacts in models/ are those of models/tlunet.keras and pass the inspector."""

import hashlib
import json
from pathlib import Path

import pytest

MODELS = Path(__file__).resolve().parent.parent / "models"
SOURCE = MODELS / "tlunet.keras"
MANIFEST = MODELS / "manifest.json"
EXPECTED = ["tlunet_fp32.tflite", "tlunet_fp16.tflite", "tlunet_int8.tflite",
            "tlunet_fp32.onnx", "tlunet_int8.onnx"]

pytestmark = pytest.mark.skipif(not SOURCE.exists(), reason="models/tlunet.keras not shipped")


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def manifest():
    assert MANIFEST.exists(), "models/manifest.json missing: run `make convert`"
    return json.loads(MANIFEST.read_text())


def test_artifacts_are_not_stale(manifest):
    assert manifest["source"]["sha256"] == _sha256(SOURCE), (
        "models/ artifacts were converted from another tlunet.keras: run `make convert`")
    assert [a["path"] for a in manifest["artifacts"]] == EXPECTED
    for artifact in manifest["artifacts"]:
        path = MODELS / artifact["path"]
        assert path.exists(), f"{path} missing"
        assert artifact["sha256"] == _sha256(path), f"{path} differs from the manifest"


def test_artifacts_pass_the_inspector(manifest):
    pytest.importorskip("tensorflow")
    pytest.importorskip("onnx")
    from edgetrunc.export import inspect_onnx, inspect_tflite

    for artifact in manifest["artifacts"]:
        truncations = [{k: t[k] for k in ("layer", "lower", "upper")}
                       for t in artifact["truncations"]]
        inspect = inspect_tflite if artifact["format"] == "tflite" else inspect_onnx
        report = inspect(MODELS / artifact["path"], truncations, artifact["precision"])
        assert report["truncations"] == artifact["truncations"]
        assert report["ops"] == artifact["ops"]


def test_int8_artifacts_met_the_quantization_targets(manifest):
    for artifact in manifest["artifacts"]:
        if artifact["precision"] != "int8":
            continue
        evaluation = artifact["quantization"]["evaluation"]
        assert evaluation["decision_agreement"] >= 0.98, artifact["path"]
        assert abs(evaluation["accuracy_delta"]) <= 0.01 + 1e-9, artifact["path"]
