"""`edgetrunc train`: a one-epoch smoke run writing model + record, and bad inputs (exit 2)."""

import json

import numpy as np
import pytest
from PIL import Image

from edgetrunc.cli import main
from edgetrunc.train import parse_curriculum, parse_model_args, record_path, reestimate_batchnorm
from edgetrunc.errors import InputError

QUICK = ["--epochs", "1", "--max-tiles", "4", "--batch-size", "2", "--max-eval-pairs", "4",
         "--eval-stride", "256"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "tiny.keras"
    code = main(["-q", "train", *QUICK, "--curriculum", "1.0,0.4", "--stage-epochs", "1",
                 "--out", str(out)])
    return code, out


@pytest.mark.slow
def test_smoke_run_writes_model_and_record(trained):
    code, out = trained
    assert code == 0 and out.is_file()
    record = json.loads(record_path(out).read_text())
    assert record["model_file"] == "tiny.keras" and len(record["model_sha256"]) == 64
    assert record["seed"] == 0 and record["config"]["payload"] == 0.4
    assert record["config"]["curriculum"] == [1.0, 0.4]
    assert {"tensorflow", "keras", "numpy", "edgetrunc"} <= set(record["versions"])
    split = record["data"]["split"]
    assert not set(split["train"]) & set(split["test"]) and not set(split["val"]) & set(split["test"])
    assert record["data"]["train_tiles"] == 4
    assert len(record["epochs"]) == 1 and record["epochs"][0]["payload"] == 1.0
    test = record["test"]
    assert set(test["per_source"]) == set(split["test"])
    for key in ("accuracy", "auc", "p_e", "p_e_photo_mean", "confusion"):
        assert key in test
    assert 0 <= test["p_e"] <= 0.5 and record["images_per_second"] > 0
    assert record["batchnorm_reestimation"]["done"]
    assert not list(out.parent.glob(".*"))  # no temporary or checkpoint file left


@pytest.mark.slow
def test_trained_model_loads_and_predicts(trained):
    import keras

    import edgetrunc.layers  # noqa: F401

    model = keras.saving.load_model(trained[1], compile=False)
    probs = np.asarray(model(np.zeros((2, 256, 256, 1), np.float32), training=False))
    assert probs.shape == (2, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)


@pytest.mark.slow
def test_refuses_to_overwrite_without_force(trained, capsys):
    code, out = trained
    before = out.read_bytes()
    assert main(["train", *QUICK, "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert out.read_bytes() == before


@pytest.mark.parametrize("make_dir, message", [
    (lambda d: None, "empty folder"),
    (lambda d: Image.fromarray(np.zeros((64, 64), np.uint8)).save(d / "tiny.png"),
     "tiny.png (64x64 pixels"),
])
def test_bad_cover_folder_exits_2(tmp_path, capsys, make_dir, message):
    covers = tmp_path / "covers"
    covers.mkdir()
    make_dir(covers)
    out = tmp_path / "m.keras"
    assert main(["train", *QUICK, "--covers", str(covers), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith("edgetrunc train: error:")
    assert not out.exists() and not record_path(out).exists()


def test_missing_cover_folder_and_too_few_photos(tmp_path, capsys):
    assert main(["train", "--covers", str(tmp_path / "nope"), "--out", str(tmp_path / "m.keras")]) == 2
    assert "no such cover folder" in capsys.readouterr().err
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (256, 256), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    assert main(["train", *QUICK, "--covers", str(tmp_path), "--out", str(tmp_path / "m.keras")]) == 2
    assert "at least 3 cover images" in capsys.readouterr().err


@pytest.mark.parametrize("payload", ["0", "1.5", "-0.2", "abc"])
def test_payload_out_of_range_exits_2(tmp_path, payload, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--payload", payload, "--out", str(tmp_path / "m.keras")])
    assert exit_info.value.code == 2
    assert "payload" in capsys.readouterr().err or "number" in capsys.readouterr().err


def test_unwritable_output_exits_2(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert main(["train", *QUICK, "--out", str(blocker / "m.keras")]) == 2
    assert "cannot create output folder" in capsys.readouterr().err
    assert main(["train", *QUICK, "--out", str(tmp_path / "m.h5")]) == 2
    assert ".keras" in capsys.readouterr().err


def test_option_parsing():
    assert parse_curriculum("1.0,0.7", 0.4) == [1.0, 0.7, 0.4]
    assert parse_curriculum(None, 0.4) == [0.4]
    with pytest.raises(InputError, match="go down"):
        parse_curriculum("0.4,1.0", 0.4)
    with pytest.raises(InputError, match="outside"):
        parse_curriculum("2.0,0.4", 0.4)
    assert parse_model_args(["front_end=srm6", "width=2"]) == {"front_end": "srm6", "width": 2}
    assert parse_model_args(["input_shape=128,128,1"]) == {"input_shape": (128, 128, 1)}
    with pytest.raises(InputError, match="KEY=VALUE"):
        parse_model_args(["width"])


def test_unknown_model_argument_exits_2(tmp_path, capsys):
    out = tmp_path / "m.keras"
    assert main(["train", *QUICK, "--model-arg", "front_end=nope", "--out", str(out)]) == 2
    assert "front_end" in capsys.readouterr().err and not out.exists()


def test_batchnorm_reestimation_sets_the_batch_average():
    import keras

    inputs = keras.Input((4,))
    bn = keras.layers.BatchNormalization(momentum=0.9)
    model = keras.Model(inputs, bn(inputs))
    rng = np.random.default_rng(0)
    batches = [(rng.normal(3.0, 2.0, (64, 4)).astype(np.float32), None) for _ in range(5)]
    assert reestimate_batchnorm(model, batches) == 5
    expected = np.mean([b[0].mean(0) for b in batches], axis=0)
    np.testing.assert_allclose(np.asarray(bn.moving_mean), expected, rtol=1e-5)
    assert bn.momentum == 0.9


def test_selection_score_breaks_ties_by_auc():
    from edgetrunc.train import selection_score

    def report(p_e_photo, p_e, aucs):
        return {"p_e_photo_mean": p_e_photo, "p_e": p_e,
                "per_source": {f"p{i}": {"auc": a} for i, a in enumerate(aucs)}}

    assert selection_score(report(0.2, 0.1, [0.5])) < selection_score(report(0.25, 0.0, [1.0]))
    assert selection_score(report(0.25, 0.04, [1.0, 0.7])) < selection_score(report(0.25, 0.04, [1.0, 0.6]))
