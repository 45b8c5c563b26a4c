"""Full-integer ONNX (`--onnx int8-full`): QDQ with int8 input and output, pixels exact, the
fixed filter stored exactly, every compute op between QuantizeLinear / DequantizeLinear,
refusal of what has no integer form; convert -> parity -> run end to end."""

import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from edgetrunc.errors import InputError  # noqa: E402
from edgetrunc.export import export_onnx, find_truncations  # noqa: E402
from edgetrunc.export.onnx.graph import Graph  # noqa: E402
from edgetrunc.export.onnx.inspect import inspect_onnx  # noqa: E402
from edgetrunc.export.onnx.integer import float_nodes, require_full_integer  # noqa: E402
from edgetrunc.layers import Truncation  # noqa: E402
from edgetrunc.models._filters import high_pass_bank  # noqa: E402
from edgetrunc.runtime.onnx_runner import ONNXRunner  # noqa: E402
# the tiny tlunet, its calibration tiles and the model with a SIN of the TFLite tests
from test_export_integer import SIZE, _sine_model  # noqa: E402


@pytest.fixture(scope="module")
def full(model, calibration):
    applied = []
    proto = export_onnx(model, "int8-full", calibration=calibration, applied=applied)
    return proto, applied


def test_input_and_output_are_int8_and_every_op_sits_between_qdq(model, full):
    proto, applied = full
    report = inspect_onnx(proto, find_truncations(model), "int8-full")
    (inp,), (out,) = report["inputs"], report["outputs"]
    assert (inp["dtype"], inp["scale"], inp["zero_point"]) == ("int8", 1.0, -128)
    assert out["dtype"] == "int8" and out["scale"] > 0
    assert report["integer"]["float_tensors_outside_qdq"] == 0 and float_nodes(proto) == []
    assert {"Conv", "Tanh", "AveragePool"} <= set(report["integer"]["compute_ops_between_qdq"])
    assert report["truncations"][0]["mapped_to"].endswith("range [lower, upper])")
    assert {"pin_pixel_input", "exact_filter_weights", "strip_io_qdq"} <= set(applied)
    graph = Graph(proto)
    assert graph.consumers["input"][0].op_type == "DequantizeLinear"
    assert graph.producer[out["name"]].op_type == "QuantizeLinear"


def test_the_kv_filter_is_stored_as_exact_integers(full):
    graph = Graph(full[0])
    (front,) = [n for n in full[0].graph.node
                if n.op_type == "Conv" and n.name.endswith("front_end_1/convolution")]
    dequant = graph.producer[front.input[1]]
    stored, scale = graph.consts[dequant.input[0]], graph.consts[dequant.input[1]]
    kernel, _, _ = high_pass_bank("kv")
    assert stored.dtype == np.int8 and np.allclose(scale, 1 / 12)
    assert np.array_equal(stored.reshape(5, 5), np.round(kernel[:, :, 0, 0] * 12))
    (quant,) = graph.consumers[front.output[0]]
    assert np.isclose(graph.consts[quant.input[1]], 1 / 12) and graph.consts[quant.input[2]] == 0


def test_a_float_output_is_refused(full):
    broken = onnx.ModelProto.FromString(full[0].SerializeToString())
    broken.graph.output[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    with pytest.raises(InputError, match="output is not int8"):
        require_full_integer(broken)


def test_an_op_without_integer_form_is_named_in_one_line():
    calibration = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 1))
    with pytest.raises(InputError) as info:
        export_onnx(_sine_model(), "int8-full", calibration=calibration)
    message = str(info.value)
    assert "\n" not in message and message.startswith("layer 'wave': Sin has no int8 form")


def test_the_runner_feeds_pixels_and_reads_values_back(full, calibration):
    proto = full[0]
    runner = ONNXRunner(proto.SerializeToString(), threads=1)
    (inp,), (out,) = runner.metadata().inputs, runner.metadata().outputs
    assert (inp.dtype, inp.scale, inp.zero_point) == ("int8", 1.0, -128)
    (value,) = runner.infer(calibration[:3]).values()
    reference = ort.SessionOptions()  # the QDQ graph as written: no fused int8 kernels
    reference.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(proto.SerializeToString(), reference,
                                   providers=["CPUExecutionProvider"])
    pixels = (np.round(calibration[:3]) - 128).astype(np.int8)
    (raw,) = session.run(None, {"input": pixels})
    assert value.dtype == np.float32 and value.shape == (3, 2)
    steps = np.abs(value - (raw.astype(np.float32) - out.zero_point) * np.float32(out.scale)) / out.scale
    assert steps.max() <= 1.01  # the fused int8 kernels round within one step
    assert np.all((value >= 0) & (value <= 1))


def _brightness_detector():
    """A tiny detector whose stego logit is 3 x the mean of clip(p / 32 - 4, -3, 3): decisions
    well away from 0 on photos, so that int8 rounding does not flip them."""
    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Conv2D(1, 1, name="scale")(inputs)
    x = Truncation(3.0, name="trunc")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, keras.layers.Dense(1, name="logit")(x))
    model.get_layer("scale").set_weights([np.full((1, 1, 1, 1), 1 / 32, np.float32),
                                          np.array([-4.0], np.float32)])
    model.get_layer("logit").set_weights([np.full((1, 1), 3.0, np.float32), np.zeros(1, np.float32)])
    return model


def test_convert_parity_and_run_end_to_end(tmp_path, cli):
    source = tmp_path / "tiny.keras"
    _brightness_detector().save(source)
    code, _, _ = cli("convert", source, "--tflite", "", "--onnx", "int8-full")
    (entry,) = json.loads((tmp_path / "manifest.json").read_text())["artifacts"]
    assert code == 0
    assert entry["path"] == "tiny_int8-full.onnx" and entry["precision"] == "int8-full"
    quantization = entry["quantization"]
    assert quantization["mode"] == "full-integer" and quantization["format"] == "QDQ"
    assert quantization["evaluation"]["decision_agreement"] >= 0.98
    assert entry["inputs"][0]["dtype"] == "int8" and entry["outputs"][0]["dtype"] == "int8"
    assert entry["integer"]["float_tensors_outside_qdq"] == 0 and "target" not in entry
    assert entry["integer"]["output"].startswith("stego logit")
    artifact, inputs, outputs = tmp_path / entry["path"], tmp_path / "in.npz", tmp_path / "out.npz"
    code, out, _ = cli("parity", source, artifact, "--samples", "8", "--inputs", "covers",
                       "--json", "-", "--save-inputs", inputs)
    (judged,) = json.loads(out)["artifacts"]
    assert code == 0 and judged["passed"] and judged["precision"] == "int8-full"
    assert judged["tolerance"]["min_decision_agreement"] == 0.98  # judged as int8
    assert judged["decision_agreement"] == 1.0
    code, out, _ = cli("run", artifact, inputs, "--out", outputs, "--json")
    assert code == 0 and outputs.exists()
    code, _, _ = cli("parity", source, outputs, "--inputs", inputs)
    assert code == 0


def test_the_runner_keeps_wide_int8_sums_exact_on_every_x86_cpu():
    """Bright pixels times large positive weights: onnxruntime's u8s8 kernels on x86 without
    VNNI add pairs of products in int16 and saturate unless the runner asks for its
    precise path; the runner's output must be the QDQ graph's."""
    inputs = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(4, 3, use_bias=False, name="bright")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(Truncation(2000.0, name="trunc")(x))
    model = keras.Model(inputs, keras.layers.Dense(1, name="logit")(x))
    rng = np.random.default_rng(1)
    model.get_layer("bright").set_weights([rng.uniform(0.5, 1.0, (3, 3, 1, 4)).astype(np.float32)])
    pixels = rng.uniform(200, 255, (8, 16, 16, 1)).astype(np.float32)
    proto = export_onnx(model, "int8-full", calibration=pixels)
    (value,) = ONNXRunner(proto.SerializeToString(), threads=1).infer(pixels).values()
    reference = ort.SessionOptions()
    reference.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(proto.SerializeToString(), reference,
                                   providers=["CPUExecutionProvider"])
    (raw,) = session.run(None, {"input": (np.round(pixels) - 128).astype(np.int8)})
    out = ONNXRunner(proto.SerializeToString()).metadata().outputs[0]
    expected = (raw.astype(np.float32) - out.zero_point) * np.float32(out.scale)
    assert np.abs(value - expected).max() / out.scale <= 1.01


def test_onnx_and_tflite_full_integer_are_as_close_to_keras():
    """Same scales, same fidelity. The truncation's [-3, 3] has no int8 grid with 0 in the
    middle: onnxruntime rounds the zero point to 0 ([-3.012, 2.988], as Keras's fake
    quantization), the TFLite converter to -1 ([-2.988, 3.012]); the mean of the truncated
    values then lands a few output steps to either side of the float logit."""
    from edgetrunc.export import export_tflite
    from edgetrunc.runtime.tflite_runner import TFLiteRunner

    model = _brightness_detector()
    pixels = np.round(np.random.default_rng(2).uniform(0, 255, (16, SIZE, SIZE, 1))).astype(np.float32)
    onnx_runner = ONNXRunner(export_onnx(model, "int8-full", calibration=pixels).SerializeToString())
    tflite_runner = TFLiteRunner(export_tflite(model, "int8-full", calibration=pixels))
    (onnx_logit,), (tflite_logit,) = (r.infer(pixels).values() for r in (onnx_runner, tflite_runner))
    keras_logit = model.predict(pixels, verbose=0)
    step = onnx_runner.metadata().outputs[0].scale
    assert np.isclose(step, tflite_runner.metadata().outputs[0].scale, rtol=1e-3)
    assert np.abs(onnx_logit - keras_logit).max() <= 5 * step  # measured 4.2 steps
    assert np.abs(tflite_logit - keras_logit).max() <= 5 * step  # measured 4.1 steps


def test_the_float_fusions_before_quantizing_are_exact():
    from edgetrunc.export.onnx.integer_passes import FULL_INTEGER_FLOAT_PASSES
    from edgetrunc.export.onnx.passes import PassContext
    from edgetrunc.export.passes import run_passes

    inputs = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.AveragePooling2D(2)(Truncation(3.0, name="trunc")(x))
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, bias_initializer="ones")(x))
    rng = np.random.default_rng(3)
    model.get_layer("bn").set_weights([rng.uniform(0.5, 2, 4), rng.normal(0, 1, 4),
                                       rng.normal(0, 1, 4), rng.uniform(0.5, 2, 4)])
    plain = export_onnx(model, "fp32", literal=True)
    fused = onnx.ModelProto.FromString(plain.SerializeToString())
    context = PassContext(find_truncations(model))
    run_passes(fused, FULL_INTEGER_FLOAT_PASSES, context)
    assert context.applied == ["pool_affine_as_depthwise", "matmul_add_as_gemm"]
    ops = {n.op_type for n in fused.graph.node}
    assert "AveragePool" not in ops and "MatMul" not in ops and "Gemm" in ops
    onnx.checker.check_model(fused, full_check=True)
    pixels = rng.uniform(0, 255, (4, 16, 16, 1)).astype(np.float32)
    (before,), (after,) = (ort.InferenceSession(m.SerializeToString()).run(None, {"input": pixels})
                           for m in (plain, fused))
    assert np.allclose(before, after, rtol=1e-5, atol=1e-5)
