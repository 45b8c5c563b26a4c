"""Geometry from the model (tile size, channels) and any single output, end to end on tiny models."""

import json

import numpy as np
import pytest
from PIL import Image

keras = pytest.importorskip("keras")
pytest.importorskip("tf2onnx")

from edgetrunc import Truncation  # noqa: E402
from edgetrunc.cli import main  # noqa: E402
from edgetrunc.data import embedded_covers, load_pairs, pair_batches, training_tiles  # noqa: E402
from edgetrunc.data.geometry import ImageGeometry, image_geometry  # noqa: E402
from edgetrunc.errors import InputError  # noqa: E402
from edgetrunc.export import convert  # noqa: E402
from edgetrunc.parity import check_parity  # noqa: E402

ALL = ["fp32.tflite", "fp16.tflite", "int8.tflite", "fp32.onnx", "int8.onnx"]


def _model(shape, head="softmax", name="net"):
    """Conv -> Truncation -> pool -> dense, with `head`: softmax [N, 2], sigmoid [N, 1],
    logits [N, 2] or tensor [N, 5] (no detector)."""
    keras.utils.set_random_seed(7)
    inputs = keras.Input(shape, name="input")
    x = keras.layers.Conv2D(2, 3, strides=2, padding="same", use_bias=False, name="conv",
                            kernel_initializer=keras.initializers.RandomNormal(0, 0.3))(inputs)
    x = Truncation(3.0, name="tlu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(2, name="hidden")(x)
    units, activation = {"softmax": (2, "softmax"), "sigmoid": (1, "sigmoid"),
                         "logits": (2, None), "tensor": (5, None)}[head]
    outputs = keras.layers.Dense(units, activation=activation, name="head")(x)
    return keras.Model(inputs, outputs, name=name)


def _save(model, folder, name):
    path = folder / f"{name}.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("geometry_models")
    return {"big": _save(_model((512, 512, 1), name="big"), folder, "big"),
            "rgb": _save(_model((64, 64, 3), name="rgb"), folder, "rgb"),
            "small": _save(_model((128, 128, 1), name="small"), folder, "small"),
            "sigmoid": _save(_model((64, 64, 1), "sigmoid", "sig"), folder, "sig"),
            "tensor": _save(_model((64, 64, 1), "tensor", "vec"), folder, "vec")}


def _artifacts(manifest, out):
    return {a["path"].split("_", 1)[1]: out / a["path"] for a in manifest["artifacts"]}


@pytest.fixture(scope="module")
def converted_models(models, tmp_path_factory):
    """Every precision of the 512x512x1, 64x64x3, sigmoid and no-detector models."""
    result = {}
    for name in ("big", "rgb", "sigmoid", "tensor"):
        out = tmp_path_factory.mktemp(f"out_{name}")
        manifest = convert(models[name], out)
        result[name] = (manifest, _artifacts(manifest, out))
    return result


# geometry and the data layer ---------------------------------------------------------------

def test_image_geometry_reads_the_model_input(models):
    assert image_geometry(keras.models.load_model(models["big"])) == ImageGeometry(512, 1)
    assert image_geometry(keras.models.load_model(models["rgb"])) == ImageGeometry(64, 3)
    free = keras.Model(*(lambda i: (i, keras.layers.Conv2D(1, 3)(i)))(keras.Input((None, None, 1))))
    assert image_geometry(free) == ImageGeometry(256, 1)
    for shape in ((16,), (32, 64, 1), (32, 32, 4)):
        inputs = keras.Input(shape)
        assert image_geometry(keras.Model(inputs, keras.layers.Dense(2)(inputs))) is None


def test_rgb_pairs_and_training_tiles_take_the_model_geometry():
    pairs = load_pairs("embedded", split="test", max_pairs=3, tile=64, channels=3)
    assert pairs.x.shape == (6, 64, 64, 3)
    changed = pairs.x[1::2] != pairs.x[0::2]
    assert all(changed[..., c].any() for c in range(3))  # LSB matching in every channel
    covers = embedded_covers(["astronaut", "camera"], channels=3)
    astronaut, camera = covers
    assert astronaut.pixels.shape == (512, 512, 3) and (astronaut.pixels[..., 0] != astronaut.pixels[..., 2]).any()
    assert camera.pixels.shape == (512, 512, 3)  # a gray photo: three equal channels
    assert (camera.pixels[..., 0] == camera.pixels[..., 2]).all()
    tiles = training_tiles(covers, max_tiles=4, tile=128)
    x, y = next(pair_batches(tiles, 0.4, 2))
    assert tiles.tiles.shape == (4, 128, 128, 3) and x.shape == (4, 128, 128, 3)


def test_photos_smaller_than_the_tile_are_skipped_then_refused(capsys):
    covers = embedded_covers(min_size=1024)
    assert [c.name for c in covers] == ["retina"]
    assert "skipped 15 photo(s) smaller than the 1024x1024 model input" in capsys.readouterr().err
    with pytest.raises(InputError, match="no photo is at least 2048x2048"):
        embedded_covers(min_size=2048)


# convert: every precision at the model's geometry --------------------------------------------

@pytest.mark.slow
def test_convert_512_and_rgb_models_every_precision(converted_models):
    for name, shape in (("big", [512, 512, 1]), ("rgb", [64, 64, 3])):
        manifest, artifacts = converted_models[name]
        assert sorted(artifacts) == sorted(ALL)
        for entry in manifest["artifacts"]:
            if entry["precision"] == "int8":
                assert entry["quantization"]["calibration"]["samples"] > 0
                assert entry["quantization"]["evaluation"]["samples"] > 0


def test_convert_with_a_calibration_folder(models, tmp_path, capsys):
    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(rng.integers(0, 256, (80, 96, 3), np.uint8)).save(folder / "color.png")
    Image.fromarray(rng.integers(0, 256, (70, 70), np.uint8)).save(folder / "gray.png")
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), np.uint8)).save(folder / "small.png")
    manifest = convert(models["rgb"], tmp_path / "out", tflite=("int8",), onnx=(),
                       calibration=str(folder))
    calibration = manifest["artifacts"][0]["quantization"]["calibration"]
    assert set(calibration["photos"]) <= {"color", "gray"} and calibration["samples"] > 0
    assert "small.png (40x40 pixels)" in capsys.readouterr().err
    big = tmp_path / "big_photos"
    big.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (512, 512), np.uint8)).save(big / f"{i}.png")
    manifest = convert(models["big"], tmp_path / "out_big", tflite=("int8",), onnx=(),
                       calibration=str(big))
    assert manifest["artifacts"][0]["quantization"]["calibration"]["samples"] > 0
    code = main(["-q", "convert", str(models["big"]), "--out", str(tmp_path / "none"),
                 "--tflite", "int8", "--onnx", "", "--calibration", str(folder)])
    err = capsys.readouterr().err
    assert code == 2 and "at least 512x512" in err and "Traceback" not in err


def test_convert_warns_on_nearly_constant_outputs(tmp_path, capsys):
    inputs = keras.Input((32, 32, 1))
    x = keras.layers.GlobalAveragePooling2D()(Truncation(2.0)(inputs))
    # a constant stego probability of 0.12, away from the 0.5 threshold: one at exactly 0.5
    # decides by the int8 softmax's last bit, which differs between CPUs
    outputs = keras.layers.Dense(2, activation="softmax", kernel_initializer="zeros",
                                 bias_initializer=keras.initializers.Constant([1.0, -1.0]))(x)
    path = _save(keras.Model(inputs, outputs), tmp_path, "flat")
    manifest = convert(path, tmp_path / "out", tflite=("int8",), onnx=())
    assert manifest["artifacts"][0]["quantization"]["evaluation"]["decision_agreement"] == 1.0
    assert "nearly constant" in capsys.readouterr().err


# any single output ---------------------------------------------------------------------------

@pytest.mark.slow
def test_sigmoid_and_tensor_outputs_convert(converted_models):
    manifest, _ = converted_models["sigmoid"]
    int8 = [a for a in manifest["artifacts"] if a["precision"] == "int8"]
    assert int8 and all("evaluation" in a["quantization"] for a in int8)
    manifest, _ = converted_models["tensor"]
    int8 = [a for a in manifest["artifacts"] if a["precision"] == "int8"]
    assert int8 and not any("evaluation" in a["quantization"] for a in int8)  # no detector


@pytest.mark.slow
@pytest.mark.parametrize("name", ["big", "rgb", "sigmoid", "tensor"])
def test_parity_default_inputs(models, converted_models, name):
    _, artifacts = converted_models[name]
    paths = [artifacts["fp32.tflite"], artifacts["int8.onnx"]]
    report = check_parity(models[name], paths, samples=6, probes=False).to_dict()
    assert report["inputs"]["kind"] == "mix" and report["inputs"]["composition"]["covers"] > 0
    shape = keras.models.load_model(models[name]).inputs[0].shape[1:]
    assert report["inputs"]["shape"] == list(shape)
    fp32 = report["artifacts"][0]
    assert fp32["passed"], fp32
    detector = name != "tensor"
    assert (fp32["decision_agreement"] is not None) == detector
    assert fp32["elements"] == 6 * (5 if name == "tensor" else 2 if name != "sigmoid" else 1)


def test_non_image_model_in_parity_with_random_inputs(tmp_path, capsys):
    inputs = keras.Input((12,), name="features")
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.Dense(4)(inputs))
    path = _save(keras.Model(inputs, outputs), tmp_path, "features")
    out = tmp_path / "out"
    assert main(["-q", "convert", str(path), "--out", str(out)]) == 2  # int8 needs images
    err = capsys.readouterr().err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1 and "1 or 3" in err
    manifest = convert(path, out, tflite=("fp32",), onnx=("fp32",))
    artifacts = [str(out / a["path"]) for a in manifest["artifacts"]]
    assert main(["-q", "parity", str(path), *artifacts, "--inputs", "random", "--samples", "5",
                 "--json", "-", "--no-probes"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and report["inputs"]["shape"] == [12]
    saved, recorded = tmp_path / "inputs.npz", tmp_path / "outputs.npz"
    assert main(["-q", "parity", str(path), artifacts[0], "--inputs", "random", "--samples", "4",
                 "--no-probes", "--save-inputs", str(saved)]) == 0
    assert main(["-q", "run", artifacts[0], str(saved), "--out", str(recorded)]) == 0
    assert main(["-q", "parity", str(path), artifacts[1], str(recorded), "--inputs", str(saved),
                 "--no-probes"]) == 0
    capsys.readouterr()
    assert main(["-q", "parity", str(path), *artifacts, "--samples", "5"]) == 2
    err = capsys.readouterr().err
    assert "--inputs random" in err and "Traceback" not in err


# infer, evaluate at the model's geometry -----------------------------------------------------

def test_infer_reports_the_true_tile_and_border(models, tmp_path, capsys):
    manifest = convert(models["small"], tmp_path, tflite=("fp32",), onnx=())
    artifact = tmp_path / manifest["artifacts"][0]["path"]
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (427, 640), np.uint8)).save(photo)
    capsys.readouterr()
    assert main(["infer", str(artifact), str(photo), "--json"]) == 0
    captured = capsys.readouterr()
    assert len(json.loads(captured.out)["results"][0]["tiles"]) == 15
    assert ("640x427, 15 tiles of 128x128; dropped a border of 0 px (right) and 43 px (bottom)"
            in captured.err)


@pytest.mark.slow
def test_evaluate_an_rgb_model(models, converted_models, capsys):
    for path in (models["rgb"], converted_models["rgb"][1]["fp32.onnx"]):
        assert main(["-q", "evaluate", str(path), "--max-pairs", "3", "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["pairs"] == 3 and report["stride"] == 128
