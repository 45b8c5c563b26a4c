"""A model with several inputs and outputs, end to end from the command line: convert ->
parity (random inputs per input, an `.npz` keyed by input name, per layer) -> run -> bench,
and infer's one-line refusal; the feeds the runners take and the one-line errors of a bad
feed (an input missing, unknown or of the wrong shape, naming the input).

The model (`two_input_keras`, `scripts/make_custom_models.py`) takes `pixels` [16, 16, 1]
then `aux` [8] (not in alphabetical order) and returns `score` [2] then `embedding` [3]; the
TFLite converter stores its outputs in the other order, so a wrong pairing fails on shapes.
"""

import json

import numpy as np
import pytest

from error_lines import assert_one_line_error

pytest.importorskip("keras")

INPUTS = ["pixels", "aux"]
OUTPUTS = ["score", "embedding"]


@pytest.fixture(scope="module")
def fp32_artifacts(two_input_keras, tmp_path_factory):
    """`(manifest, [fp32 .tflite, fp32 .onnx])` of the two-input model."""
    from edgetrunc.export import convert

    out = tmp_path_factory.mktemp("multi_fp32")
    manifest = convert(two_input_keras, out, tflite=["fp32"], onnx=["fp32"], speed=False)
    return manifest, [out / "two_input_fp32.tflite", out / "two_input_fp32.onnx"]


def _feed(count=3, seed=1):
    rng = np.random.default_rng(seed)
    return {"pixels": rng.uniform(0, 255, (count, 16, 16, 1)).astype(np.float32),
            "aux": rng.uniform(0, 255, (count, 8)).astype(np.float32)}


def test_manifest_records_inputs_and_outputs_in_keras_order(fp32_artifacts):
    manifest, _ = fp32_artifacts
    source = manifest["source"]
    assert [(i["name"], i["shape"]) for i in source["inputs"]] == [
        ("pixels", [None, 16, 16, 1]), ("aux", [None, 8])]
    assert [(o["name"], o["shape"]) for o in source["outputs"]] == [
        ("score", [None, 2]), ("embedding", [None, 3])]
    for entry in manifest["artifacts"]:
        assert len(entry["inputs"]) == 2 and len(entry["outputs"]) == 2


def test_runners_take_a_dict_a_list_or_named_inputs_and_give_keras_order(two_input_keras,
                                                                        fp32_artifacts):
    from edgetrunc.keras.runner import KerasRunner
    from edgetrunc.runtime import open_runner
    from edgetrunc.runtime.feeds import NamedInputs

    feed = _feed()
    keras_outputs = KerasRunner(two_input_keras).infer(feed)
    assert list(keras_outputs) == OUTPUTS
    for path in fp32_artifacts[1]:
        with open_runner(path) as runner:
            assert runner.input_names() == INPUTS
            for given in (feed, [feed["pixels"], feed["aux"]], NamedInputs(feed)):
                got = list(runner.infer(given).values())
                assert [g.shape for g in got] == [(3, 2), (3, 3)], path
                for want, have in zip(keras_outputs.values(), got):
                    np.testing.assert_allclose(have, want, atol=1e-4)


def test_int8_onnx_keeps_the_dense_heads_float(two_input_keras, fp32_artifacts, tmp_path):
    """After the truncations there are only Dense heads and a softmax, none of the int8 op
    types: the int8 ONNX quantizes the truncated tensors only (an empty type list would have
    onnxruntime quantize every op, its fused QLinearSoftmax moving `score` by 0.18)."""
    import onnx
    import onnxruntime as ort

    from edgetrunc.export import convert

    convert(two_input_keras, tmp_path, tflite=[], onnx=["int8"], speed=False, evaluate=False)
    path = tmp_path / "two_input_int8.onnx"
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert ops.count("QuantizeLinear") == 2 and "QLinearMatMul" not in ops
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    reference = ort.InferenceSession(str(fp32_artifacts[1][1]), providers=["CPUExecutionProvider"])
    feed = _feed(16)
    score, embedding = session.run(OUTPUTS, feed)
    want = reference.run(OUTPUTS, feed)
    # one int8 step of the truncated tensors: 6/255 (pixels), 4/255 (aux)
    assert np.abs(score - want[0]).max() < 0.01
    assert np.abs(embedding - want[1]).max() < 0.05


@pytest.mark.parametrize("feed, message", [
    (lambda f: {"pixels": f["pixels"]}, r"missing input\(s\) aux"),
    (lambda f: {**f, "extra": f["aux"]}, r"unknown input\(s\) extra"),
    (lambda f: {**f, "aux": f["aux"][:, :5]}, r"input aux has shape \[3, 5\]; expected \[N, 8\]"),
    (lambda f: [f["pixels"]], r"expected 2 inputs \(pixels, aux\); got 1 arrays"),
])
def test_bad_feed_is_one_line_naming_the_input(fp32_artifacts, feed, message):
    from edgetrunc.errors import InputError
    from edgetrunc.runtime import open_runner

    with open_runner(fp32_artifacts[1][0]) as runner:
        with pytest.raises(InputError, match=message):
            runner.infer(feed(_feed()))


def test_command_line_end_to_end(two_input_keras, fp32_artifacts, tmp_path, cli):
    artifacts = fp32_artifacts[1]
    report_path, saved = tmp_path / "parity.json", tmp_path / "inputs.npz"
    code, _, err = cli("parity", two_input_keras, *artifacts, "--samples", "6",
                       "--save-inputs", saved, "--json", report_path)
    assert code == 0, err
    report = json.loads(report_path.read_text())
    assert report["inputs"]["kind"] == "random"
    assert report["inputs"]["shape"] == {"pixels": [16, 16, 1], "aux": [8]}
    for artifact in report["artifacts"]:
        assert [o["name"] for o in artifact["outputs"]] == OUTPUTS
        assert [o["shape"] for o in artifact["outputs"]] == [[2], [3]]
        assert all(o["elements_failed"] == 0 for o in artifact["outputs"])
    assert {p["layer"] for p in report["probes"]} == {"tlu_image", "tlu_aux"}
    with np.load(saved) as data:
        assert data["pixels"].shape == (6, 16, 16, 1) and data["aux"].shape == (6, 8)

    html = tmp_path / "parity.html"
    code, stdout, err = cli("parity", two_input_keras, *artifacts, "--inputs", saved,
                            "--per-layer", "--layer-samples", "2", "--no-probes", "--html", html)
    assert code == 0, err
    assert "per output:" in stdout and "embedding" in stdout
    assert "<h2>Per output</h2>" in html.read_text()
    for layer in ("tlu_image", "tlu_aux", "score", "embedding"):
        assert layer in stdout.split("per layer:")[1]

    recorded = tmp_path / "outputs.npz"
    code, stdout, err = cli("run", artifacts[0], saved, "--out", recorded)
    assert code == 0, err
    assert stdout.count("  output ") == 2
    code, _, err = cli("parity", two_input_keras, recorded, "--inputs", saved, "--no-probes")
    assert code == 0, err

    code, stdout, err = cli("bench", *artifacts, "--runs", "2", "--warmup", "0", "--json")
    assert code == 0, err
    for result in json.loads(stdout)["results"]:
        assert result["inputs"] == {"pixels": [1, 16, 16, 1], "aux": [1, 8]}
        assert [shape for shape in result["outputs"].values()] == [[1, 2], [1, 3]]

    image = tmp_path / "image.png"
    from PIL import Image

    Image.fromarray(np.zeros((16, 16), np.uint8)).save(image)
    code, stdout, err = cli("infer", artifacts[1], image)
    assert not stdout
    assert_one_line_error(code, err, "2 inputs (pixels, aux)")
    assert "edgetrunc run" in err


@pytest.mark.parametrize("arrays, named", [
    (lambda f: {"pixels": f["pixels"]}, "missing input(s) aux"),
    (lambda f: {**f, "aux": f["aux"][:, :4]}, "input aux has shape [3, 4]; expected [N, 8]"),
    (lambda f: {**f, "other": f["aux"]}, "unknown input(s) other"),
])
def test_parity_inputs_npz_errors_name_the_input(two_input_keras, fp32_artifacts, tmp_path, cli,
                                                 arrays, named):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays(_feed()))
    code, stdout, err = cli("parity", two_input_keras, fp32_artifacts[1][0], "--inputs", path,
                            "--no-probes")
    assert not stdout
    assert_one_line_error(code, err, named)


def test_photo_inputs_are_refused_for_several_inputs(two_input_keras, fp32_artifacts, cli):
    code, _, err = cli("parity", two_input_keras, fp32_artifacts[1][0], "--inputs", "covers")
    assert_one_line_error(code, err, "the model has 2 inputs (pixels, aux)")


@pytest.mark.slow
def test_every_precision_converts_and_passes_parity(two_input_keras, tmp_path, cli):
    out = tmp_path / "all"
    code, stdout, err = cli("convert", two_input_keras, "--out", out, "--json")
    assert code == 0, err
    manifest = json.loads(stdout)
    paths = [out / a["path"] for a in manifest["artifacts"]]
    assert sorted(p.name for p in paths) == sorted(
        f"two_input_{s}" for s in ("fp32.tflite", "fp16.tflite", "int8.tflite", "fp32.onnx",
                                   "int8.onnx"))
    int8 = [a for a in manifest["artifacts"] if a["precision"] == "int8"]
    assert all(a["quantization"]["calibration"]["samples"] > 0 for a in int8)
    report_path = tmp_path / "parity.json"
    code, _, err = cli("parity", two_input_keras, *paths, "--samples", "8", "--per-layer",
                       "--layer-samples", "2", "--json", report_path)
    assert code in (0, 1), err
    report = json.loads(report_path.read_text())
    for artifact in report["artifacts"]:
        assert [o["name"] for o in artifact["outputs"]] == OUTPUTS
        assert {layer["layer"] for layer in artifact["layers"]} >= {"tlu_image", "tlu_aux"}
        assert artifact["passed"], (artifact["path"], artifact["failures"])


@pytest.mark.slow
def test_int8_full_takes_every_input_and_output_in_int8(two_input_keras, tmp_path, cli):
    """`--tflite int8-full` with several inputs: each input and output is int8 (calibrated
    input by input), the runner quantizes each float input with its own parameters and gives
    the outputs in Keras order, and the artifact passes parity."""
    out = tmp_path / "full"
    code, stdout, err = cli("convert", two_input_keras, "--out", out, "--tflite", "int8-full",
                            "--onnx", "", "--no-speed", "--json")
    assert code == 0, err
    (entry,) = [a for a in json.loads(stdout)["artifacts"] if a["precision"] == "int8-full"]
    assert [(i["name"], i["dtype"]) for i in entry["inputs"]] == [
        ("serving_default_pixels:0", "int8"), ("serving_default_aux:0", "int8")]
    assert {o["dtype"] for o in entry["outputs"]} == {"int8"}
    saved, report_path = tmp_path / "inputs.npz", tmp_path / "parity.json"
    code, _, err = cli("parity", two_input_keras, out / entry["path"], "--samples", "8",
                       "--no-probes", "--save-inputs", saved, "--json", report_path)
    assert code == 0, err
    (artifact,) = json.loads(report_path.read_text())["artifacts"]
    assert [o["name"] for o in artifact["outputs"]] == OUTPUTS and artifact["passed"]
    recorded = tmp_path / "outputs.npz"
    code, _, err = cli("run", out / entry["path"], saved, "--out", recorded)
    assert code == 0, err
    code, _, err = cli("parity", two_input_keras, recorded, "--inputs", saved, "--no-probes")
    assert code == 0, err
