"""Foreign models end to end from the command line: migrate -> convert (every precision) ->
parity --per-layer -> infer, one per pattern that public steganalysis code writes.

The patterns and their builders are in `scripts/make_foreign_models.py` (the benchmark builds
them at their real sizes); here they are small. tf.keras 2 files are committed (small):
a named Lambda `TLU(x, tlu_threshold=3)` with a kernel initializer function
(`fixtures/foreign/yenet.h5`) and, from `fixtures/legacy`, activation-function truncations
with SeparableConv2D on RGB input, an unregistered constraint with a custom clip class, a
class storing a learned threshold. Keras 3 models are built here: a deep residual net and a
one-unit sigmoid head.

Models that need the user's own code (`scripts/make_custom_models.py`, the custom-objects files
under fixtures/custom): a GBRAS-like Keras 2.3-era `.hdf5` with the soft truncation `Tanh3`
kept as it is, a custom layer holding an SRM filter bank, a stored learned threshold in a
Keras 3 `.keras` and in a tf.keras 2 SavedModel, and an ABS Lambda beside a truncation;
convert and parity get the same `--custom-objects` as migrate. The two-input pattern of
that script (two inputs, two outputs) goes through parity, run and infer's refusal.
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
OBJECTS = FIXTURES / "custom"
CUSTOM = {  # name: (tf.keras 2 fixture or Keras 3 pattern, migrate options, later options)
    "gbras_custom_activation": ("foreign/gbras.hdf5",
                                ["--custom-objects", OBJECTS / "gbras_objects.py"],
                                ["--custom-objects", OBJECTS / "gbras_objects.py"]),
    "srm_filter_bank": ("custom:srmbank",
                        ["--trust-lambda", "--custom-objects", OBJECTS / "srm_objects.py"],
                        ["--custom-objects", OBJECTS / "srm_objects.py"]),
    "stored_threshold_keras3": ("custom:learned", ["--truncation-class", "LearnedTLU"], []),
    "stored_threshold_savedmodel": ("foreign/learned_savedmodel",
                                    ["--truncation-class", "LearnedTLU"], []),
    "abs_beside_truncation": ("custom:xunet_abs", ["--trust-lambda"], []),
}
# 3 tanh(x) right after an unnormalized 30-filter front end magnifies fp16 rounding where it
# is steep: per-layer parity names that layer for fp16 (the outputs still pass)
FP16_DIVERGES = {"gbras_custom_activation"}
CASES = {  # name: (tf.keras 2 fixture or Keras 3 pattern, migrate options)
    "named_lambda_initializer": ("foreign/yenet.h5", ["--trust-lambda"]),
    "rgb_activation_separable": ("legacy/activation_tlu.h5", ["--truncation-class", "tlu=3"]),
    "constraint_clip_class": ("legacy/constraint_clip.h5", ["--truncation-class", "HardClip"]),
    "stored_threshold": ("legacy/learned_tlu.h5", ["--truncation-class", "LearnedTLU"]),
    "deep_residual": ("keras3:residual", ["--trust-lambda"]),
    "sigmoid_head": ("keras3:sigmoid", ["--truncation-class", "HardTLU"]),
}


def _builders(script="make_foreign_models"):
    spec = importlib.util.spec_from_file_location(script, ROOT / "scripts" / f"{script}.py")
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
    if spec.startswith("custom:"):
        name = spec.split(":", 1)[1]
        path = folder / f"{name}_source.keras"
        _builders("make_custom_models").build_keras3(name).save(path)
        return path
    if not spec.startswith("keras3:"):
        return FIXTURES / spec
    name = spec.split(":", 1)[1]
    path = folder / f"{name}_source.keras"
    _builders().build_keras3(name, small=True).save(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES) + [
    pytest.param(case, marks=pytest.mark.slow) for case in sorted(CUSTOM)])
def test_foreign_model_end_to_end(case, tmp_path, cli, photo):
    spec, options, later = CUSTOM[case] if case in CUSTOM else (*CASES[case], [])
    model = tmp_path / f"{case}.keras"
    code, _, err = cli("migrate", _source(spec, tmp_path), "--out", model, *options)
    assert code == 0, err

    out = tmp_path / "artifacts"
    code, stdout, err = cli("convert", model, "--out", out, "--json", *later)
    assert code == 0, err
    manifest = json.loads(stdout)
    artifacts = [out / f"{case}_{suffix}" for suffix in ARTIFACTS]
    assert sorted(a["path"] for a in manifest["artifacts"]) == sorted(a.name for a in artifacts)
    assert all(a.is_file() for a in artifacts)

    report_path = tmp_path / "parity.json"
    code, stdout, err = cli("parity", model, *artifacts, "--samples", "4", "--per-layer",
                            "--layer-samples", "2", "--no-probes", "--json", report_path, *later)
    assert code in (0, 1), err
    report = json.loads(report_path.read_text())
    for artifact in report["artifacts"]:
        statuses = {layer["layer"]: layer["status"] for layer in artifact["layers"]}
        assert "unmapped" not in statuses.values(), (artifact["path"], statuses)
        assert sum(s == "compared" for s in statuses.values()) >= 2, statuses
        if artifact["precision"] in ("fp32", "fp16"):
            assert artifact["passed"], (artifact["path"], artifact["failures"])
            if artifact["precision"] == "fp32" or case not in FP16_DIVERGES:
                assert artifact["first_divergent_layer"] is None, artifact["path"]
        assert artifact["layers"][-1]["shape"][0] == 2  # --layer-samples

    for artifact in (artifacts[0], artifacts[4]):
        code, stdout, err = cli("infer", artifact, photo, "--json")
        assert code == 0, err
        scores = json.loads(stdout)
        assert scores, stdout


@pytest.mark.slow
def test_two_input_model_end_to_end(tmp_path, cli, photo):
    """The two-input pattern (`scripts/make_custom_models.py two_input`: `pixels` and `aux`
    in, `score` and `embedding` out, a Truncation on each branch): migrate finds nothing to
    rewrite, convert writes every artifact, parity feeds each input by name and passes every
    artifact on both outputs (per layer too), run reads the saved inputs and its outputs pass
    parity, and infer refuses in one line."""
    from error_lines import assert_one_line_error

    source = _source("custom:two_input", tmp_path)
    code, stdout, err = cli("migrate", source, "--out", tmp_path / "migrated.keras")
    assert code == 0, err
    assert "nothing to migrate" in stdout + err and not (tmp_path / "migrated.keras").exists()

    out = tmp_path / "artifacts"
    code, stdout, err = cli("convert", source, "--out", out, "--json")
    assert code == 0, err
    artifacts = [out / a["path"] for a in json.loads(stdout)["artifacts"]]
    assert sorted(a.name for a in artifacts) == sorted(f"two_input_source_{s}" for s in ARTIFACTS)

    report_path, inputs = tmp_path / "parity.json", tmp_path / "inputs.npz"
    code, _, err = cli("parity", source, *artifacts, "--samples", "4", "--per-layer",
                       "--layer-samples", "2", "--no-probes", "--save-inputs", inputs,
                       "--json", report_path)
    assert code == 0, err
    for artifact in json.loads(report_path.read_text())["artifacts"]:
        assert artifact["passed"], (artifact["path"], artifact["failures"])
        assert [o["name"] for o in artifact["outputs"]] == ["score", "embedding"]
        statuses = {layer["layer"]: layer["status"] for layer in artifact["layers"]}
        assert statuses["tlu_image"] == statuses["tlu_aux"] == "compared", statuses

    int8 = next(a for a in artifacts if a.name.endswith("int8.tflite"))
    recorded = tmp_path / "outputs.npz"
    code, _, err = cli("run", int8, inputs, "--out", recorded)
    assert code == 0, err
    code, _, err = cli("parity", source, recorded, "--inputs", inputs, "--no-probes")
    assert code == 0, err
    code, stdout, err = cli("infer", int8, photo, "--json")
    assert not stdout
    assert_one_line_error(code, err, "2 inputs (pixels, aux)")
