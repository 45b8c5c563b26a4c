"""edgetrunc.testing: parity as assertions in a user's test suite, the pytest plugin, golden outputs.

The user's test file is the one docs/TESTING.md shows, read from it: it passes against the
shipped model and fails with a readable message against a tampered artifact.
"""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgetrunc.testing import assert_parity, assert_truncations_exported

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
MODEL = MODELS / "tlunet.keras"
FP32 = MODELS / "tlunet_fp32.tflite"
FAST = {"samples": 4, "probes": False}


def _doc_example() -> str:
    text = (ROOT / "docs" / "TESTING.md").read_text()
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def _tampered_fp32() -> bytes:
    from test_parity import tamper_tflite

    return tamper_tflite(FP32.read_bytes())


@pytest.fixture(scope="module")
def tampered_fp32():
    """Made before `pytester` snapshots sys.modules (TensorFlow must not be imported twice)."""
    return _tampered_fp32()


def _user_project(pytester):
    shutil.copytree(MODELS, pytester.path / "models")
    pytester.makepyfile(test_user=_doc_example())
    return pytester.path / "models"


def test_the_documented_example_is_about_ten_lines():
    code = [line for line in _doc_example().splitlines() if line.strip()]
    assert len(code) <= 12 and "assert_parity" in _doc_example()


@pytest.mark.slow
def test_the_users_test_file_passes_on_the_shipped_model_and_fails_on_a_tampered_one(tampered_fp32, pytester):
    models = _user_project(pytester)
    passing = pytester.runpytest_subprocess("-p", "edgetrunc.testing.plugin", "-q")
    passing.assert_outcomes(passed=5)
    (models / "tlunet_fp32.tflite").write_bytes(tampered_fp32)
    html = pytester.path / "html"
    failing = pytester.runpytest_subprocess("-p", "edgetrunc.testing.plugin", "-q", "-k", "fp32",
                                           "--parity-html", str(html))
    failing.assert_outcomes(passed=1, failed=1)
    out = failing.stdout.str()
    assert "parity failed: 1 of 1 artifact(s) against tlunet.keras on 16 inputs (mix)" in out
    assert re.search(r"tlunet_fp32\.tflite \(tflite fp32\): \d+ of \d+ output elements outside", out)
    assert re.search(r"worst sample: \S+ \(#\d+\), max abs error [\d.e+-]+ \(atol 0.0001, rtol 0.001\)", out)
    pages = list(html.glob("*.html"))
    assert len(pages) == 1 and "tlunet_fp32.tflite" in pages[0].name
    assert "FAIL" in pages[0].read_text()


def test_assert_parity_returns_the_report_for_paths_bytes_and_a_model_in_memory():
    from edgetrunc.keras.load import load_keras_model

    report = assert_parity(MODEL, FP32, **FAST)
    assert report.passed and report.artifacts[0].comparison.max_abs_error < 1e-4
    report = assert_parity(load_keras_model(MODEL), [FP32.read_bytes(), MODELS / "tlunet_fp32.onnx"], **FAST)
    assert [a.format for a in report.artifacts] == ["tflite", "onnx"] and report.passed


def test_a_tampered_artifact_fails_naming_sample_tolerance_and_first_divergent_layer():
    with pytest.raises(AssertionError) as failure:
        assert_parity(MODEL, _tampered_fp32(), samples=4, probes=False, per_layer=True)
    lines = str(failure.value).splitlines()
    assert lines[0] == "parity failed: 1 of 1 artifact(s) against tlunet.keras on 4 inputs (mix)"
    assert lines[1].startswith("  artifact0.tflite (tflite fp32): ")
    assert re.match(r"  worst sample: \S+ \(#[0-3]\), max abs error [\d.e+-]+ \(atol 0.0001, rtol 0.001\)",
                    lines[2])
    assert re.match(r"  worst layer: \w+ \(normalized error [\d.e+-]+, bound 0.01\)", lines[3])
    assert lines[4] == "  first divergent layer: group2_conv"


def test_tolerances_override_the_precision_defaults_as_on_the_command_line():
    from edgetrunc.parity.compare import DEFAULT_TOLERANCES

    report = assert_parity(MODEL, FP32, atol=0.5, **FAST)
    tolerance = report.artifacts[0].tolerance
    assert tolerance["atol"] == 0.5 and tolerance["rtol"] == DEFAULT_TOLERANCES["fp32"].rtol


@pytest.mark.parametrize("case", ["missing", "wrong_shape", "no_artifact"])
def test_bad_input_is_a_one_line_assertion(case, tmp_path):
    from edgetrunc.runtime.recorded import save_inputs

    options = dict(FAST)
    artifacts = [FP32]
    if case == "missing":
        artifacts, expected = [tmp_path / "gone.tflite"], "gone.tflite: no such .tflite file"
    elif case == "wrong_shape":
        save_inputs(tmp_path / "small.npz", np.zeros((2, 128, 128, 1), np.float32))
        options["inputs"], expected = str(tmp_path / "small.npz"), "inputs are [128, 128, 1]"
    else:
        artifacts, expected = [], "expected one or more"
    with pytest.raises(AssertionError) as failure:
        assert_parity(MODEL, artifacts, **options)
    assert expected in str(failure.value) and "\n" not in str(failure.value)


def test_truncation_check_fails_on_changed_op_counts_and_without_metadata(tmp_path):
    with pytest.raises(AssertionError, match=r"op counts differ from the expected ones: MINIMUM 2 -> 1"):
        assert_truncations_exported(FP32, ops={**json.loads((MODELS / "manifest.json").read_text())
                                                ["artifacts"][0]["ops"], "MINIMUM": 2})
    from edgetrunc.export.tflite.exporter import export_tflite
    from edgetrunc.keras.load import load_keras_model

    bare = export_tflite(load_keras_model(MODEL), "fp32")  # no edgetrunc metadata embedded
    with pytest.raises(AssertionError, match="no truncation to check"):
        assert_truncations_exported(bare)
    assert assert_truncations_exported(bare, model=MODEL)["truncations"][0]["mapped_to"]


def test_the_plugin_loads_without_tensorflow_or_numpy():
    code = ("import sys, edgetrunc.testing.plugin; "
            "print(sorted(m for m in ('tensorflow', 'numpy', 'keras') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                            timeout=60)
    assert result.stdout.strip() == "[]", result.stderr


def test_the_entry_point_names_the_plugin_module():
    text = (ROOT / "pyproject.toml").read_text()
    assert '[project.entry-points.pytest11]\n"edgetrunc.testing.plugin" = "edgetrunc.testing.plugin"' in text
