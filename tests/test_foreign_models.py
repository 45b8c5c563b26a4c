"""Foreign models end to end from the command line: migrate -> convert (every precision) ->
parity --per-layer -> infer, one per pattern that public steganalysis code writes.

The patterns and their builders are in `scripts/make_foreign_models.py` (the benchmark builds
them at their real sizes); here they are small. tf.keras 2 files are committed (small):
a named Lambda `TLU(x, tlu_threshold=3)` with a kernel initializer function
(`fixtures/foreign/yenet.h5`) and, from `fixtures/legacy`, activation-function truncations
with SeparableConv2D on RGB input, an unregistered constraint with a custom clip class, a
class storing a learned threshold. Keras 3 models are built here: a deep residual net and a
one-unit sigmoid head.
"""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"
ARTIFACTS = ("fp32.tflite", "fp16.tflite", "int8.tflite", "fp32.onnx", "int8.onnx")
CASES = {  # name: (tf.keras 2 fixture or Keras 3 pattern, migrate options)
    "named_lambda_initializer": ("foreign/yenet.h5", ["--trust-lambda"]),
    "rgb_activation_separable": ("legacy/activation_tlu.h5", ["--truncation-class", "tlu=3"]),
    "constraint_clip_class": ("legacy/constraint_clip.h5", ["--truncation-class", "HardClip"]),
    "stored_threshold": ("legacy/learned_tlu.h5", ["--truncation-class", "LearnedTLU"]),
    "deep_residual": ("keras3:residual", ["--trust-lambda"]),
    "sigmoid_head": ("keras3:sigmoid", ["--truncation-class", "HardTLU"]),
}


def _builders():
    spec = importlib.util.spec_from_file_location("make_foreign_models",
                                                  ROOT / "scripts" / "make_foreign_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A 300x260 textured gray photo (PNG) for infer."""
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:260, 0:300]
    pixels = 128 + 60 * np.sin(x / 9.0) * np.cos(y / 13.0) + rng.normal(0, 8, (260, 300))
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
    return path


def _source(spec: str, folder: Path) -> Path:
    if not spec.startswith("keras3:"):
        return FIXTURES / spec
    name = spec.split(":", 1)[1]
    path = folder / f"{name}_source.keras"
    _builders().build_keras3(name, small=True).save(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_foreign_model_end_to_end(case, tmp_path, cli, photo):
    spec, options = CASES[case]
    model = tmp_path / f"{case}.keras"
    code, _, err = cli("migrate", _source(spec, tmp_path), "--out", model, *options)
    assert code == 0, err

    out = tmp_path / "artifacts"
    code, stdout, err = cli("convert", model, "--out", out, "--json")
    assert code == 0, err
    manifest = json.loads(stdout)
    artifacts = [out / f"{case}_{suffix}" for suffix in ARTIFACTS]
    assert sorted(a["path"] for a in manifest["artifacts"]) == sorted(a.name for a in artifacts)
    assert all(a.is_file() for a in artifacts)

    report_path = tmp_path / "parity.json"
    code, stdout, err = cli("parity", model, *artifacts, "--samples", "4", "--per-layer",
                            "--layer-samples", "2", "--no-probes", "--json", report_path)
    assert code in (0, 1), err
    report = json.loads(report_path.read_text())
    for artifact in report["artifacts"]:
        statuses = {layer["layer"]: layer["status"] for layer in artifact["layers"]}
        assert "unmapped" not in statuses.values(), (artifact["path"], statuses)
        assert sum(s == "compared" for s in statuses.values()) >= 2, statuses
        if artifact["precision"] in ("fp32", "fp16"):
            assert artifact["passed"], (artifact["path"], artifact["failures"])
            assert artifact["first_divergent_layer"] is None, artifact["path"]
        assert artifact["layers"][-1]["shape"][0] == 2  # --layer-samples

    for artifact in (artifacts[0], artifacts[4]):
        code, stdout, err = cli("infer", artifact, photo, "--json")
        assert code == 0, err
        scores = json.loads(stdout)
        assert scores, stdout
