"""Parity on the device: parity --save-inputs, `edgetrunc run` without TensorFlow, parity on the
recorded outputs (edgetrunc.runtime.recorded)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from edgetrunc.cli import main
from runtime_artifacts import ROOT

MODELS = ROOT / "models"


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """Inputs saved by parity, then int8 TFLite outputs recorded in a process without TensorFlow."""
    folder = tmp_path_factory.mktemp("device")
    inputs, outputs = folder / "inputs.npz", folder / "int8_outputs.npz"
    assert main(["-q", "parity", str(MODELS / "tlunet.keras"), str(MODELS / "tlunet_int8.tflite"),
                 "--samples", "9", "--no-probes", "--save-inputs", str(inputs)]) == 0
    fake = folder / "blocked"
    for name in ("tensorflow", "keras"):
        (fake / name).mkdir(parents=True)
        (fake / name / "__init__.py").write_text(f"raise ImportError('{name} is blocked')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake), str(ROOT)]))
    result = subprocess.run([sys.executable, "-m", "edgetrunc", "-q", "run", str(MODELS / "tlunet_int8.tflite"),
                             str(inputs), "--out", str(outputs), "--json"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    return {"inputs": inputs, "outputs": outputs, "record": json.loads(result.stdout), "folder": folder}


def test_saved_inputs_are_the_parity_inputs(recording):
    from edgetrunc.parity.inputs import parity_inputs

    with np.load(recording["inputs"]) as data:
        x, labels, names = data["x"], data["labels"], list(data["names"])
    expected = parity_inputs("mix", 9, 0)
    np.testing.assert_array_equal(x, expected.x)
    np.testing.assert_array_equal(labels, expected.labels)
    assert names == expected.names


def test_run_records_outputs_with_the_artifact_and_the_machine(recording):
    from edgetrunc._io import sha256_file

    record = recording["record"]
    assert record["artifact_sha256"] == sha256_file(MODELS / "tlunet_int8.tflite")
    assert (record["format"], record["precision"], record["samples"]) == ("tflite", "int8", 9)
    assert record["inputs_sha256"] == sha256_file(recording["inputs"]) and record["platform"]
    with np.load(recording["outputs"]) as data:
        outputs = [key for key in data.files if key.startswith("output:")]
        assert len(outputs) == 1 and data[outputs[0]].shape == (9, 2)


def test_parity_on_recorded_outputs_passes_and_says_where_they_come_from(recording, cli, tmp_path):
    report_path = tmp_path / "parity.json"
    code, out, err = cli("parity", MODELS / "tlunet.keras", recording["outputs"],
                         "--inputs", recording["inputs"], "--per-layer", "--json", report_path)
    assert code == 0, out + err
    report = json.loads(report_path.read_text())
    artifact = report["artifacts"][0]
    assert (artifact["format"], artifact["precision"], artifact["passed"]) == ("tflite", "int8", True)
    assert artifact["decision_agreement"] == 1.0 and artifact["layers"] == []
    assert artifact["runtime"]["backend"].startswith("recorded: ")
    assert artifact["samples_per_second"] == recording["record"]["samples_per_second"]
    assert report["samples"] == 9 and report["inputs"]["kind"] == str(recording["inputs"])
    assert any("no per-layer comparison" in w for w in report["warnings"])


def test_tampered_recording_fails(recording, cli, tmp_path):
    with np.load(recording["outputs"]) as data:
        arrays = {key: data[key] for key in data.files}
    key = next(k for k in arrays if k.startswith("output:"))
    arrays[key] = arrays[key][:, ::-1].copy()  # cover and stego swapped
    tampered = tmp_path / "tampered.npz"
    np.savez(tampered, **arrays)
    code, out, _ = cli("parity", MODELS / "tlunet.keras", tampered, "--inputs", recording["inputs"],
                       "--no-probes")
    assert code == 1 and "parity FAILED" in out


def test_recording_of_other_inputs_is_refused(recording, cli):
    code, _, err = cli("parity", MODELS / "tlunet.keras", recording["outputs"], "--samples", "4",
                       "--inputs", "random", "--no-probes")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "were not recorded" in lines[0] and "--inputs" in lines[0]


@pytest.mark.parametrize("case", ["nan", "no_x", "not_npz", "wrong_rank"])
def test_bad_inputs_file_exits_2_and_writes_nothing(case, cli, tmp_path):
    bad = tmp_path / "inputs.npz"
    if case == "nan":
        x = np.zeros((2, 256, 256, 1), np.float32)
        x[1, 3, 4, 0] = np.nan
        np.savez(bad, x=x)
    elif case == "no_x":
        np.savez(bad, y=np.zeros(3))
    elif case == "not_npz":
        bad.write_text("x\n")
    else:
        np.savez(bad, x=np.zeros((256, 256), np.float32))
    out = tmp_path / "outputs.npz"
    code, _, err = cli("run", MODELS / "tlunet_fp32.tflite", bad, "--out", out)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and str(bad) in lines[0], err
    assert not out.exists()


def test_save_inputs_never_overwrites_the_model(cli, tmp_path):
    model = tmp_path / "tlunet.keras"
    model.write_bytes((MODELS / "tlunet.keras").read_bytes())
    code, _, err = cli("parity", model, MODELS / "tlunet_fp32.tflite", "--save-inputs", model)
    assert code == 2 and "refusing to overwrite an input" in err
    assert model.read_bytes() == (MODELS / "tlunet.keras").read_bytes()
