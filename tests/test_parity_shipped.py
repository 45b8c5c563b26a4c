"""The output parity tests of the shipped detector: models/tlunet.keras against every artifact
listed in models/manifest.json, on held-out photos, their stego versions and random images,
written as a user writes them (`edgetrunc.testing` and its pytest plugin)."""

import json
from pathlib import Path

import pytest

from edgetrunc.testing import assert_parity, assert_truncations_exported

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
MODEL = MODELS / "tlunet.keras"
MANIFEST = MODELS / "manifest.json"


def _shipped_artifacts():
    if not MODEL.exists() or not MANIFEST.exists():
        return []
    manifest = json.loads(MANIFEST.read_text())
    return [MODELS / entry["path"] for entry in manifest["artifacts"]]


ARTIFACTS = _shipped_artifacts()
pytestmark = pytest.mark.skipif(
    not ARTIFACTS, reason="models/tlunet.keras and models/manifest.json are not committed yet "
    "(run `edgetrunc convert models/tlunet.keras` after training)")


@pytest.fixture(scope="module")
def report():
    # 150 mixed inputs hold 100 held-out photos: int8 decision agreement resolves to 0.01
    return assert_parity(MODEL, ARTIFACTS, samples=150, inputs="mix", per_layer=True, probes=True)


@pytest.mark.slow
def test_every_shipped_artifact_matches_the_keras_model(report):
    assert report.passed and not report.probe_failures
    assert {a.format for a in report.artifacts} == {"tflite", "onnx"}


@pytest.mark.parity_artifacts(MANIFEST)
def test_every_shipped_artifact_exports_its_truncation_as_builtin_clip_ops(parity_artifact, parity_model):
    found = assert_truncations_exported(parity_artifact)
    assert [t["layer"] for t in found["truncations"]] == ["group1_truncation"]
    assert parity_model == MODEL


@pytest.mark.slow
def test_shipped_reference_is_not_constant(report):
    assert not any("nearly constant" in w for w in report.warnings)


@pytest.mark.slow
def test_every_layer_of_the_shipped_model_is_mapped(report):
    for artifact in report.artifacts:
        statuses = {layer.layer: layer.status for layer in artifact.layers}
        assert "unmapped" not in statuses.values(), (artifact.path, statuses)
        assert statuses.get("group1_truncation") in ("compared", "fused", "folded"), artifact.path


@pytest.mark.slow
def test_fp32_artifacts_have_no_divergent_layer(report):
    for artifact in report.artifacts:
        if artifact.precision == "fp32":
            assert artifact.first_divergent_layer is None, artifact.path
            assert artifact.comparison.max_abs_error < 1e-4, artifact.path
