"""The TensorFlow-free runtime: runners, tiled scoring and `edgetrunc infer`."""

import json

import numpy as np
import pytest

from edgetrunc.cli import main
from edgetrunc.errors import InputError
from edgetrunc.runtime import (ONNXRunner, TFLiteRunner, open_runner, probability_from_outputs,
                               score_images)
from runtime_artifacts import write_test_images


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_test_images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def batch():
    return np.random.default_rng(0).uniform(0, 255, (3, 256, 256, 1)).astype(np.float32)


def _only(outputs):
    assert len(outputs) == 1
    return next(iter(outputs.values()))


# runners -------------------------------------------------------------------

def test_open_runner_picks_the_backend_and_reads_metadata(block):
    cases = {"fp32": (TFLiteRunner, "fp32"), "fp16": (TFLiteRunner, "fp16"),
             "int8": (TFLiteRunner, "int8"), "onnx": (ONNXRunner, "fp32")}
    for key, (kind, precision) in cases.items():
        runner = open_runner(block[key], threads=1)
        meta = runner.metadata()
        assert isinstance(runner, kind), key
        assert meta.precision == precision, key
        assert meta.inputs[0].shape == (None, 256, 256, 1), key
        assert meta.layout == "NHWC"
        assert runner.input_size() == (256, 256)
    int8 = open_runner(block["int8"]).metadata()
    assert int8.inputs[0].dtype == "int8" and int8.inputs[0].scale > 0
    assert int8.outputs[0].zero_point is not None
    fp32 = open_runner(block["fp32"]).metadata()
    assert fp32.ops["MINIMUM"] == 1 and fp32.ops["MAXIMUM"] == 1
    assert fp32.xnnpack is True and fp32.delegate_partitions >= 1


def test_every_backend_matches_keras_on_the_seed_block(block, batch):
    expected = np.asarray(block["keras"](batch, training=False))
    for key, atol in (("fp32", 1e-4), ("onnx", 1e-4), ("onnx_nchw", 1e-4), ("fp16", 0.05)):
        got = _only(open_runner(block[key], threads=1).infer(batch))
        assert got.dtype == np.float32 and got.shape == expected.shape, key
        np.testing.assert_allclose(got, expected, atol=atol, err_msg=key)
    builtin = TFLiteRunner(block["fp32"], use_xnnpack=False)
    np.testing.assert_allclose(_only(builtin.infer(batch)), expected, atol=1e-4)
    assert builtin.metadata().delegate_partitions == 0


def test_int8_quantizes_inputs_and_dequantizes_outputs(block, batch):
    runner = open_runner(block["int8"])
    got = _only(runner.infer(batch))
    expected = np.asarray(block["keras"](batch, training=False))
    scale = runner.metadata().outputs[0].scale
    assert got.dtype == np.float32
    assert np.abs(got - expected).mean() < 4 * scale
    assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] > 0.99


def test_batched_inference_equals_one_at_a_time(block, batch):
    for key in ("fp32", "int8", "onnx_nchw"):
        runner = open_runner(block[key])
        together = _only(runner.infer(batch))
        alone = np.concatenate([_only(runner.infer(batch[i:i + 1])) for i in range(len(batch))])
        np.testing.assert_allclose(together, alone, atol=1e-5, err_msg=key)
        again = _only(runner.infer(batch[:2]))
        np.testing.assert_allclose(again, together[:2], atol=1e-5, err_msg=key)


def test_a_fixed_batch_model_runs_in_steps(batch):
    import keras

    from runtime_artifacts import tflite_bytes

    inputs = keras.Input((256, 256, 1), batch_size=1)
    x = keras.layers.Conv2D(2, 3, padding="same")(inputs)
    x = keras.ops.reshape(x, (1, -1))[:, :8]
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))
    runner = TFLiteRunner(tflite_bytes(model))
    assert runner.metadata().inputs[0].shape == (1, 256, 256, 1)
    together = _only(runner.infer(batch))
    assert together.shape == (3, 2)
    expected = np.concatenate([np.asarray(model(batch[i:i + 1])) for i in range(len(batch))])
    np.testing.assert_allclose(together, expected, atol=1e-5)


def test_onnx_nchw_model_is_detected_and_fed_nhwc(block, batch):
    runner = open_runner(block["onnx_nchw"])
    assert runner.metadata().layout == "NCHW"
    assert runner.metadata().inputs[0].shape == (None, 1, 256, 256)
    np.testing.assert_allclose(_only(runner.infer(batch)),
                               _only(open_runner(block["onnx"]).infer(batch)), atol=1e-5)


def test_onnx_runner_without_thread_spinning_gives_the_same_outputs(block, batch):
    quiet = ONNXRunner(block["onnx"], threads=2, spin=False)
    assert quiet.metadata().spin is False
    np.testing.assert_array_equal(_only(quiet.infer(batch)),
                                  _only(ONNXRunner(block["onnx"], threads=2).infer(batch)))


def test_runners_keep_every_intermediate_tensor_when_asked(block, batch):
    from edgetrunc.runtime import open_with_intermediates

    expected = np.asarray(block["keras"](batch, training=False))
    for key in ("fp32", "int8", "onnx"):
        runner = open_with_intermediates(block[key])
        outputs = runner.infer(batch)
        assert list(outputs) == [t.name for t in runner.metadata().outputs], key
        tensors = runner.intermediate_tensors()
        assert len(tensors) > len(outputs), key
        assert [t.order for t in tensors] == sorted(t.order for t in tensors), key
        kept = runner.intermediates()
        assert list(kept) == [t.name for t in tensors] and all(v.dtype == np.float32 for v in kept.values())
        (last,) = [t for t in tensors if t.output_index == 0]
        np.testing.assert_allclose(last.value, _only(outputs), atol=1e-6, err_msg=key)
        np.testing.assert_allclose(last.value, expected, atol=0.1, err_msg=key)
    plain = open_runner(block["fp32"])
    plain.infer(batch)
    with pytest.raises(InputError, match="preserve_all_tensors=True"):
        plain.intermediates()


def test_score_batch_takes_any_runner(detector, batch):
    from edgetrunc.runtime import run_batched, score_batch

    runner = open_runner(detector["onnx"])
    together = score_batch(runner, batch, batch_size=2)
    assert together.shape == (3,) and together.dtype == np.float32
    np.testing.assert_allclose(together, probability_from_outputs(runner.infer(batch)), atol=1e-6)
    raw = score_batch(runner, batch, batch_size=2, clip=False)
    assert raw.dtype == np.float64
    np.testing.assert_allclose(raw, together, atol=1e-6)
    outputs = run_batched(runner, batch, batch_size=2)
    np.testing.assert_array_equal(_only(outputs), _only(runner.infer(batch)))


def test_runners_load_from_bytes(block, batch):
    from_bytes = TFLiteRunner(block["fp32"].read_bytes())
    np.testing.assert_array_equal(_only(from_bytes.infer(batch)),
                                  _only(TFLiteRunner(block["fp32"]).infer(batch)))
    onnx_bytes = ONNXRunner(block["onnx"].read_bytes())
    assert onnx_bytes.metadata().precision == "fp32"


def test_intermediate_tensors_are_readable(block, batch):
    runner = TFLiteRunner(block["fp32"], preserve_all_tensors=True)
    runner.infer(batch)
    names = {d["name"]: d["index"] for d in runner.tensor_details()}
    truncated = [name for name in names if "truncation" in name]
    assert truncated, sorted(names)
    values = runner.get_tensor_by_name(truncated[-1])
    assert values.shape == (3, 256, 256, 8)
    assert values.min() >= -3.0 and values.max() <= 3.0 and np.abs(values).max() == 3.0


def test_input_shape_is_validated(block):
    runner = open_runner(block["fp32"])
    with pytest.raises(InputError, match=r"expected input \[N, 256, 256, 1\]"):
        runner.infer(np.zeros((1, 128, 128, 1), np.float32))
    with pytest.raises(InputError, match="expected a batch"):
        runner.infer(np.zeros((256, 256), np.float32))


def test_bad_artifacts_are_one_line_input_errors(tmp_path, block):
    corrupt_tflite = tmp_path / "corrupt.tflite"
    corrupt_tflite.write_bytes(block["fp32"].read_bytes()[:2000])
    corrupt_onnx = tmp_path / "corrupt.onnx"
    corrupt_onnx.write_bytes(b"\x08\x07not a protobuf at all" * 10)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    keras_file = tmp_path / "model.keras"
    keras_file.write_bytes(b"PK")
    cases = {tmp_path / "missing.tflite": "no such .tflite file", corrupt_tflite: "not a valid TFLite model",
             corrupt_onnx: "not a valid ONNX model", empty: "empty file",
             keras_file: "expected a .tflite or .onnx", tmp_path: "unsupported model file"}
    for path, reason in cases.items():
        with pytest.raises(InputError) as exc:
            open_runner(path)
        assert reason in str(exc.value) and "\n" not in str(exc.value), path
        assert str(path) in str(exc.value)


# scoring ---------------------------------------------------------------------

def test_stego_probability_from_softmax_logits_and_sigmoid():
    softmax = {"out": np.array([[0.9, 0.1], [0.2, 0.8]], np.float32)}
    np.testing.assert_allclose(probability_from_outputs(softmax), [0.1, 0.8], atol=1e-6)
    logits = {"out": np.array([[0.0, np.log(3.0)]], np.float32)}
    np.testing.assert_allclose(probability_from_outputs(logits), [0.75], atol=1e-6)
    np.testing.assert_allclose(probability_from_outputs({"out": np.array([[0.3]])}), [0.3])
    with pytest.raises(InputError, match=r"expected a detector output \[N, 2\]"):
        probability_from_outputs({"out": np.zeros((1, 126, 126, 8))}, "block.tflite")


def test_score_images_tiles_without_resizing(detector, images):
    runner = open_runner(detector["tflite"])
    square, wide, tile = score_images(runner, [images["square512.png"], images["wide600x300.png"],
                                               images["tile256.pgm"]])
    assert [(t["x"], t["y"]) for t in square.tiles] == [(0, 0), (256, 0), (0, 256), (256, 256)]
    assert [(t["x"], t["y"]) for t in wide.tiles] == [(0, 0), (256, 0)]
    assert wide.dropped_border == (88, 44) and square.dropped_border == (0, 0)
    assert len(tile.tiles) == 1
    for score in (square, wide, tile):
        mean = np.mean([t["stego_probability"] for t in score.tiles])
        assert score.stego_probability == pytest.approx(mean, abs=1e-6)
        assert score.decision == ("stego" if score.stego_probability >= 0.5 else "cover")
    from PIL import Image

    pixels = np.asarray(Image.open(images["square512.png"]), np.float32)
    top_right = pixels[0:256, 256:512][None, :, :, None]
    expected = probability_from_outputs(runner.infer(top_right))[0]
    assert square.tiles[1]["stego_probability"] == pytest.approx(float(expected), abs=1e-6)


def test_score_images_reports_bad_files_and_continues(detector, images):
    runner = open_runner(detector["onnx"])
    errors = {}
    paths = [images[name] for name in ("small100.png", "deep16.png", "frames.tiff", "notes.txt",
                                       "tile256.pgm")]
    scores = score_images(runner, paths, on_error=lambda path, exc: errors.update({path: str(exc)}))
    assert [s.image for s in scores] == [str(images["tile256.pgm"])]
    assert "100x100 pixels; expected at least 256x256" in errors[images["small100.png"]]
    assert "16-bit" in errors[images["deep16.png"]]
    assert "multi-frame" in errors[images["frames.tiff"]]
    assert "not an image" in errors[images["notes.txt"]]
    with pytest.raises(InputError, match="small100.png"):
        score_images(runner, [images["small100.png"]])


# edgetrunc infer -----------------------------------------------------------

@pytest.mark.parametrize("backend", ["tflite", "onnx"])
def test_infer_json_on_a_512_image_gives_four_tiles(backend, detector, images, capsys):
    code = main(["infer", str(detector[backend]), str(images["square512.png"]), "--json",
                 "--threads", "1"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    (result,) = out["results"]
    assert set(result) == {"image", "stego_probability", "decision", "tiles"}
    assert result["image"] == str(images["square512.png"])
    assert result["decision"] in ("cover", "stego")
    assert 0.0 <= result["stego_probability"] <= 1.0
    assert len(result["tiles"]) == 4
    assert {(t["x"], t["y"]) for t in result["tiles"]} == {(0, 0), (256, 0), (0, 256), (256, 256)}
    assert all(set(t) == {"x", "y", "stego_probability"} for t in result["tiles"])


def test_infer_runs_the_good_images_and_exits_2_for_the_bad(detector, images, capsys):
    bad = ["small100.png", "deep16.png", "frames.tiff", "notes.txt"]
    argv = ["infer", str(detector["tflite"]), str(images["square512.png"]),
            *(str(images[name]) for name in bad), str(images["wide600x300.png"]), "--json"]
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2
    results = json.loads(captured.out)["results"]
    assert [len(r["tiles"]) for r in results] == [4, 2]
    error_lines = [line for line in captured.err.splitlines() if line.startswith("edgetrunc infer: error:")]
    assert len(error_lines) == len(bad)
    for name, line in zip(bad, error_lines):
        assert name in line
    assert "Traceback" not in captured.err
    assert "dropped a border of 88 px (right) and 44 px (bottom)" in captured.err


def test_infer_table_and_bad_artifact(detector, images, tmp_path, capsys):
    assert main(["infer", str(detector["onnx"]), str(images["tile256.pgm"])]) == 0
    table = capsys.readouterr().out
    assert "stego probability" in table and "tile256.pgm" in table
    corrupt = tmp_path / "broken.tflite"
    corrupt.write_bytes(b"TFL3" * 20)
    assert main(["infer", str(corrupt), str(images["tile256.pgm"])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "broken.tflite: not a valid TFLite model" in err


def test_shipped_artifacts_load_with_their_manifest_precision(batch):
    from runtime_artifacts import shipped_artifacts

    shipped = shipped_artifacts()
    if not shipped:
        pytest.skip("no shipped artifacts in models/ yet")
    for (fmt, precision), path in shipped.items():
        runner = open_runner(path, threads=1)
        assert (runner.metadata().format, runner.metadata().precision) == (fmt, precision), path
        probabilities = probability_from_outputs(runner.infer(batch), runner.name)
        assert probabilities.shape == (3,) and np.all((probabilities >= 0) & (probabilities <= 1))


@pytest.mark.parametrize("activation", ["sigmoid", None])
def test_output_activation_is_read_from_the_graph(activation, tmp_path):
    """A one-column detector without a sigmoid gives logits: every backend says so."""
    import keras

    from edgetrunc.export import export_onnx, export_tflite
    from edgetrunc.keras.activation import output_activation
    from edgetrunc.runtime import open_runner

    inputs = keras.Input((16, 16, 1))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1, activation=activation)(x))
    expected = activation or "linear"
    assert output_activation(model) == expected
    (tmp_path / "m.tflite").write_bytes(export_tflite(model, "fp32"))
    (tmp_path / "m.onnx").write_bytes(export_onnx(model, "fp32").SerializeToString())
    for name in ("m.tflite", "m.onnx"):
        runner = open_runner(tmp_path / name)
        assert runner.metadata().output_activation == expected, name
        probability = probability_from_outputs(runner.infer(np.full((2, 16, 16, 1), 0.1, np.float32)), name,
                                        runner.metadata().output_activation)
        assert np.all((probability > 0) & (probability < 1))
