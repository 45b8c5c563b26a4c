"""`convert` / `edgetrunc convert`: manifest, embedded metadata, --force, bad input (exit 2)."""

import hashlib
import json
import zipfile

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("tf2onnx")

from edgetrunc import Truncation, __version__  # noqa: E402
from edgetrunc.cli import main  # noqa: E402
from edgetrunc.export import read_onnx_metadata, read_tflite_metadata  # noqa: E402

ARTIFACTS = ["tiny_fp32.tflite", "tiny_fp16.tflite", "tiny_int8.tflite", "tiny_fp32.onnx",
             "tiny_int8.onnx"]


def _tiny_detector():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((32, 32, 1), name="input")
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = Truncation(2.0, name="tlu")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="classifier")(x)
    return keras.Model(inputs, outputs, name="tiny")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "tiny.keras"
    _tiny_detector().save(path)
    return path


@pytest.fixture(scope="module")
def converted(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    code = main(["-q", "convert", str(source), "--out", str(out)])
    assert code == 0
    return out


@pytest.mark.slow
def test_manifest_describes_every_artifact(converted, source):
    manifest = json.loads((converted / "manifest.json").read_text())
    source_sha = hashlib.sha256(source.read_bytes()).hexdigest()
    assert manifest["source"]["sha256"] == source_sha
    assert (converted / manifest["source"]["path"]).resolve() == source.resolve()
    assert [a["path"] for a in manifest["artifacts"]] == ARTIFACTS
    for a in manifest["artifacts"]:
        data = (converted / a["path"]).read_bytes()
        assert a["sha256"] == hashlib.sha256(data).hexdigest() and a["bytes"] == len(data)
        assert a["format"] == a["path"].rsplit(".", 1)[1]
        assert a["precision"] == a["path"].split("_")[1].split(".")[0]
        assert set(a) >= {"ops", "truncations", "inputs", "outputs", "quantization"}
        (t,) = a["truncations"]
        assert (t["layer"], t["lower"], t["upper"]) == ("tlu", -2.0, 2.0) and t["mapped_to"]
    by_path = {a["path"]: a for a in manifest["artifacts"]}
    assert by_path["tiny_fp32.tflite"]["quantization"] is None
    assert by_path["tiny_int8.tflite"]["truncations"][0]["mapped_to"].endswith("int8 saturation")
    assert "MINIMUM" not in by_path["tiny_int8.tflite"]["ops"]
    assert by_path["tiny_fp32.onnx"]["ops"]["Clip"] == 1
    assert by_path["tiny_fp32.onnx"]["inputs"][0]["name"] == "input"
    for name in ("tiny_int8.tflite", "tiny_int8.onnx"):
        evaluation = by_path[name]["quantization"]["evaluation"]
        assert 0 <= evaluation["decision_agreement"] <= 1 and evaluation["samples"] > 100
    assert manifest["versions"]["edgetrunc"] == __version__


@pytest.mark.slow
def test_thresholds_source_hash_and_version_are_embedded(converted, source):
    source_sha = hashlib.sha256(source.read_bytes()).hexdigest()
    meta = read_tflite_metadata(converted / "tiny_int8.tflite")
    assert meta["source_sha256"] == source_sha and meta["edgetrunc_version"] == __version__
    assert meta["truncations"] == [{"layer": "tlu", "lower": -2.0, "upper": 2.0}]
    props = read_onnx_metadata(converted / "tiny_fp32.onnx")
    assert props["source_sha256"] == source_sha
    assert props["truncations"][0]["upper"] == 2.0


@pytest.mark.slow
def test_both_formats_embed_the_same_metadata_keys(converted):
    from edgetrunc.runtime.metadata import KEYS, read_metadata

    for name in ARTIFACTS:
        meta = read_metadata(converted / name)
        assert sorted(meta) == sorted(KEYS), name
        assert (meta["format"], meta["precision"]) == (name.rsplit(".", 1)[1],
                                                       name.split("_")[1].split(".")[0])


@pytest.mark.slow
def test_existing_outputs_need_force(converted, source, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in converted.iterdir()}
    assert main(["-q", "convert", str(source), "--out", str(converted), "--tflite", "fp32",
                 "--onnx", ""]) == 2
    assert "--force" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in converted.iterdir()} == before


def test_force_replaces_and_table_goes_to_stdout(source, tmp_path, capsys):
    args = ["convert", str(source), "--out", str(tmp_path), "--tflite", "fp32", "--onnx", "fp32"]
    assert main(["-q", *args]) == 0
    capsys.readouterr()
    assert main(["-q", *args, "--force"]) == 0
    captured = capsys.readouterr()
    assert "tiny_fp32.tflite" in captured.out and "MAXIMUM+MINIMUM" in captured.out
    assert captured.err == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "manifest.json", "tiny_fp32.onnx", "tiny_fp32.tflite"]


def _expect_input_error(capsys, argv, fragment):
    code = main(["-q", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("edgetrunc convert: error:") and fragment in err[0]


def test_bad_model_files_exit_2_without_outputs(tmp_path, capsys):
    out = tmp_path / "out"
    text = tmp_path / "notes.keras"
    text.write_text("not a model")
    _expect_input_error(capsys, ["convert", str(text), "--out", str(out)], "not a Keras file")
    empty = tmp_path / "empty.keras"
    empty.write_bytes(b"")
    _expect_input_error(capsys, ["convert", str(empty), "--out", str(out)], "empty file")
    corrupt = tmp_path / "corrupt.keras"
    with zipfile.ZipFile(corrupt, "w") as archive:
        archive.writestr("config.json", "{broken")
    _expect_input_error(capsys, ["convert", str(corrupt), "--out", str(out)], "cannot load")
    h5 = tmp_path / "model.h5"
    h5.write_bytes(b"x")
    _expect_input_error(capsys, ["convert", str(h5), "--out", str(out)], ".keras")
    _expect_input_error(capsys, ["convert", str(tmp_path / "missing.keras")], "no such")
    assert not out.exists() or not any(out.iterdir())


def test_bad_options_exit_2(source, tmp_path, capsys):
    _expect_input_error(capsys, ["convert", str(source), "--out", str(tmp_path), "--opset", "12"],
                        "opset")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _expect_input_error(capsys, ["convert", str(source), "--out", str(blocker / "sub")],
                        "not a folder")
    _expect_input_error(capsys, ["convert", str(source), "--out", str(tmp_path),
                                 "--calibration", str(tmp_path / "nope")], "--calibration")
    with pytest.raises(SystemExit) as exc:
        main(["convert", str(source), "--tflite", "fp8"])
    assert exc.value.code == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@keras.saving.register_keras_serializable(package="edgetrunc_tests")
class BesselLayer(keras.layers.Layer):
    def call(self, x):
        import tensorflow as tf

        return tf.math.special.bessel_i0e(x)


def test_layer_without_builtin_op_exit_2_names_layer_and_op(tmp_path, capsys):
    inputs = keras.Input((8, 8, 1))
    x = Truncation(1.0, name="tlu")(inputs)
    model = keras.Model(inputs, BesselLayer(name="bessel")(x))
    path = tmp_path / "flex.keras"
    model.save(path)
    out = tmp_path / "out"
    _expect_input_error(capsys, ["convert", str(path), "--out", str(out)],
                        "layer 'bessel' uses TensorFlow op(s) BesselI0e with no ")
    assert not out.exists() or not any(out.iterdir())
    _expect_input_error(capsys, ["convert", str(path), "--out", str(out), "--onnx", ""],
                        "layer 'bessel' uses TensorFlow op(s) BesselI0e with no TFLite builtin")
    _expect_input_error(capsys, ["convert", str(path), "--out", str(out), "--tflite", ""],
                        "layer 'bessel' uses TensorFlow op(s) BesselI0e with no ONNX op")
    assert not out.exists() or not any(out.iterdir())


def test_calibration_folder_is_used(source, tmp_path):
    from PIL import Image

    from edgetrunc.export import convert

    covers = tmp_path / "covers"
    covers.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (256, 256), dtype=np.uint8)).save(covers / f"{i}.png")
    manifest = convert(source, tmp_path / "out", tflite=("int8",), onnx=(),
                       calibration=str(covers))
    (artifact,) = manifest["artifacts"]
    calibration = artifact["quantization"]["calibration"]
    assert calibration["photos"] and set(calibration["photos"]) <= {"0", "1", "2"}
    assert calibration["samples"] > 0


def test_pack_front_end_option_packs_fp32(source, tmp_path, capsys):
    args = ["-q", "convert", str(source), "--out", str(tmp_path), "--tflite", "fp32", "--onnx", ""]
    assert main([*args, "--pack-front-end", "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    (artifact,) = manifest["artifacts"]
    assert artifact["ops"]["SPACE_TO_DEPTH"] == artifact["ops"]["DEPTH_TO_SPACE"] == 1
    assert artifact["ops"]["MAXIMUM"] == 1


def test_rewrites_are_the_default_and_literal_keeps_the_translation(source, tmp_path, capsys):
    """Exact layout rewrites run by default and are listed per artifact; --literal skips them."""
    args = ["-q", "convert", str(source), "--tflite", "fp32,fp16", "--onnx", "fp32", "--json"]
    assert main([*args, "--out", str(tmp_path / "default")]) == 0
    rewritten = {a["path"]: a for a in json.loads(capsys.readouterr().out)["artifacts"]}
    assert main([*args, "--out", str(tmp_path / "literal"), "--literal"]) == 0
    literal = {a["path"]: a for a in json.loads(capsys.readouterr().out)["artifacts"]}
    for name in ("tiny_fp32.tflite", "tiny_fp16.tflite"):
        assert "pack_front_end" in rewritten[name]["passes"]
        assert rewritten[name]["ops"]["SPACE_TO_DEPTH"] == 1
        assert "SPACE_TO_DEPTH" not in literal[name]["ops"]
        assert "pack_front_end" not in literal[name]["passes"]
    assert rewritten["tiny_fp32.onnx"]["passes"] == literal["tiny_fp32.onnx"]["passes"]


@pytest.mark.parametrize("samples, flips, label_flips", [
    (8, 1, 0), (8, 2, 0), (50, 1, 1), (50, 2, 2), (130, 2, 0), (130, 3, 0), (400, 8, 2),
    (400, 9, 0), (400, 4, 5)])
def test_convert_and_parity_judge_int8_agreement_by_the_same_rule(samples, flips, label_flips):
    """The same outputs get the same verdict from convert's manifest and from parity."""
    from edgetrunc.export.evaluation import quality_against_keras
    from edgetrunc.parity.compare import CompareFunc

    rng = np.random.default_rng(samples + flips)
    labels = np.arange(samples) % 2
    keras_p = np.where(labels == 1, 0.9, 0.1) + rng.uniform(-0.05, 0.05, samples)
    keras_p[:label_flips] = 1 - keras_p[:label_flips]  # Keras itself wrong on a few
    int8_p = keras_p.copy()
    flip = np.arange(label_flips, label_flips + flips)
    int8_p[flip] = np.where(keras_p[flip] >= 0.5, 0.49, 0.51)  # small errors, flipped decisions
    convert_verdict = quality_against_keras(keras_p, int8_p, labels)["passed"]
    outputs = {"out": np.stack([1 - keras_p, keras_p], axis=1).astype(np.float32)}
    int8_outputs = {"out": np.stack([1 - int8_p, int8_p], axis=1).astype(np.float32)}
    result = CompareFunc.simple()(outputs, int8_outputs, labels=labels, precision="int8",
                                  reference_probability=keras_p, candidate_probability=int8_p)
    decision_failures = [f for f in result.failures if f.startswith(("decision", "accuracy"))]
    assert convert_verdict == (not decision_failures), (convert_verdict, result.failures)
    # one flip always passes; beyond that, 98 % agreement and an accuracy delta of 1 %
    allowed_flips = max(1, int(0.02 * samples + 1e-9))
    assert convert_verdict == (flips <= allowed_flips
                               and flips / samples <= max(0.01, 1 / samples) + 1e-9)
