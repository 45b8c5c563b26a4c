"""`edgetrunc evaluate`: the table and the --json schema on a small saved model; bad inputs."""

import json

import numpy as np
import pytest

from edgetrunc.cli import main


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    from edgetrunc.models import create

    path = tmp_path_factory.mktemp("evaluate") / "detector.keras"
    create("tlunet", seed=0).save(path)
    return path


def test_json_schema(model_path, capsys):
    assert main(["-q", "evaluate", str(model_path), "--json", "--max-pairs", "6"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "keras" and report["split"] == "test" and report["payload"] == 0.4
    assert report["pairs"] == 6 and report["samples"] == 12
    for key in ("accuracy", "auc", "p_e", "p_e_photo_mean", "confusion", "per_source", "photos"):
        assert key in report
    assert np.array(report["confusion"]).sum() == 12
    assert set(report["per_source"]) == set(report["photos"])
    for figures in report["per_source"].values():
        assert {"pairs", "accuracy", "auc", "p_e", "error", "jpeg_history", "note"} <= set(figures)
    assert 0 <= report["p_e"] <= 0.5


def test_table(model_path, capsys):
    assert main(["-q", "evaluate", str(model_path), "--max-pairs", "4", "--payload", "1.0"]) == 0
    out = capsys.readouterr().out
    assert "P_E" in out and "confusion" in out and "payload 1.0 bpp" in out


@pytest.mark.parametrize("name, message", [("missing.keras", "no such"), ("model.pt", "expected a model file")])
def test_bad_model_path_exits_2(tmp_path, capsys, name, message):
    path = tmp_path / name
    if name.endswith(".pt"):
        path.write_text("x")
    assert main(["evaluate", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_corrupt_model_exits_2(tmp_path, capsys):
    path = tmp_path / "broken.keras"
    path.write_bytes(b"not a zip file")
    assert main(["evaluate", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot load" in err[0]


def test_tflite_artifact_goes_through_the_runtime(model_path, tmp_path, capsys):
    import keras
    import tensorflow as tf

    import edgetrunc.layers  # noqa: F401
    from edgetrunc._log import stdout_to_stderr

    model = keras.saving.load_model(model_path, compile=False)
    with stdout_to_stderr():
        flatbuffer = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    artifact = tmp_path / "detector.tflite"
    artifact.write_bytes(flatbuffer)
    capsys.readouterr()
    assert main(["-q", "evaluate", str(artifact), "--json", "--max-pairs", "4"]) == 0
    from_tflite = json.loads(capsys.readouterr().out)
    assert main(["-q", "evaluate", str(model_path), "--json", "--max-pairs", "4"]) == 0
    from_keras = json.loads(capsys.readouterr().out)
    assert from_tflite["format"] == "tflite" and from_tflite["pairs"] == 4
    assert from_tflite["confusion"] == from_keras["confusion"]
    assert abs(from_tflite["auc"] - from_keras["auc"]) < 0.05


def test_cover_folder_scores_every_photo(model_path, tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (256, 512), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    assert main(["-q", "evaluate", str(model_path), "--covers", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["split"] == "all" and report["photos"] == ["a", "b"]
    assert report["pairs"] == 6  # stride 128 over 256x512: 3 tiles per photo
