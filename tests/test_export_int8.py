"""Truncation-aware int8: the clip becomes int8 saturation (TFLite) or a Clip quantized to
exactly [lower, upper] (ONNX QDQ); the truncated tensor keeps ~255 levels."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("tf2onnx")
ort = pytest.importorskip("onnxruntime")

from edgetrunc.export import export_onnx, export_tflite, find_truncations, inspect_onnx  # noqa: E402
from edgetrunc.export import inspect_tflite, tflite_ops  # noqa: E402
from edgetrunc.export.blocks import space_to_depth_kernel  # noqa: E402
from edgetrunc.models import create  # noqa: E402
from edgetrunc.runtime.layer_names import SATURATION_MARK  # noqa: E402

SIZE = 32  # the side of the `model` and `calibration` fixtures (conftest)


@pytest.fixture(scope="module")
def tflite_int8(model, calibration):
    return {
        "aware": export_tflite(model, "int8", calibration=calibration),
        "stock": export_tflite(model, "int8", calibration=calibration, int8_mode="stock"),
        "int8_io": export_tflite(model, "int8", calibration=calibration, int8_io=True),
    }


@pytest.fixture(scope="module")
def onnx_int8(model, calibration):
    return {
        "aware": export_onnx(model, "int8", calibration=calibration),
        "stock": export_onnx(model, "int8", calibration=calibration, int8_mode="stock"),
    }


def test_tflite_int8_removes_minimum_and_maximum(model, tflite_int8):
    truncations = find_truncations(model)
    ops = tflite_ops(tflite_int8["aware"])
    assert "MINIMUM" not in ops and "MAXIMUM" not in ops
    report = inspect_tflite(tflite_int8["aware"], truncations, "int8")
    assert report["truncations"][0]["mapped_to"] == "QUANTIZE int8 saturation"
    assert report["inputs"][0]["dtype"] == "float32"
    stock_ops = tflite_ops(tflite_int8["stock"])
    assert stock_ops["MINIMUM"] == 1 and stock_ops["MAXIMUM"] == 1


def test_tflite_int8_io_quantizes_input_exactly_for_pixels(model, tflite_int8):
    report = inspect_tflite(tflite_int8["int8_io"], find_truncations(model), "int8")
    (inp,) = report["inputs"]
    assert inp["dtype"] == "int8"
    assert inp["scale"] == pytest.approx(1.0, abs=1e-3)  # pixel values 0..255 kept exact


def _tflite_truncated_levels(content, x):
    from edgetrunc.runtime.tflite_runner import TFLiteRunner

    runner = TFLiteRunner(content, preserve_all_tensors=True)
    runner.infer(x)
    (detail,) = [d for d in runner.tensor_details() if SATURATION_MARK in d["name"]]
    values = runner.get_tensor(detail["index"], dequantize=True)
    return values


def test_tflite_int8_saturation_is_the_clip_with_255_levels(tflite_int8, calibration):
    values = _tflite_truncated_levels(tflite_int8["aware"], calibration[:4])
    step = 6 / 255
    assert values.min() >= -3 - step and values.max() <= 3 + step
    assert values.min() < -2.9 and values.max() > 2.9  # the conv output saturates both ways
    assert len(np.unique(values)) >= 200


def _onnx_truncated_levels(proto, x):
    """Values the first Tanh reads: the truncated tensor as the int8 model sees it."""
    import onnx

    model = onnx.ModelProto.FromString(proto.SerializeToString())
    tanh = next(n for n in model.graph.node if n.op_type == "Tanh")
    model.graph.output.append(onnx.helper.make_tensor_value_info(
        tanh.input[0], onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString())
    return session.run([tanh.input[0]], {"input": x})[0]


def _plain_quantize_static(proto, x, tmp_path):
    """onnxruntime's static quantization of the compute ops only (Conv, MatMul, Tanh): the Clip
    then reads the conv output quantized on its raw calibrated range."""
    import onnx
    from onnxruntime.quantization import QuantFormat, quantize_static

    class Reader:
        def __init__(self):
            self.items = iter([{"input": x[i:i + 1]} for i in range(len(x))])

        def get_next(self):
            return next(self.items, None)

    out = tmp_path / "plain_int8.onnx"
    quantize_static(proto, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    op_types_to_quantize=["Conv", "MatMul", "Tanh"])
    return onnx.load(str(out))


def test_onnx_int8_clip_keeps_255_levels_where_default_calibration_keeps_few(
        model, onnx_int8, calibration, tmp_path):
    proto = onnx_int8["aware"]
    truncations = find_truncations(model)
    report = inspect_onnx(proto, truncations, "int8")
    assert report["truncations"][0]["mapped_to"].startswith("Clip (QDQ int8")
    after = _onnx_truncated_levels(proto, calibration[:4])
    plain = _plain_quantize_static(export_onnx(model, "fp32"), calibration, tmp_path)
    before = _onnx_truncated_levels(plain, calibration[:4])
    assert len(np.unique(after)) >= 200
    assert len(np.unique(before)) <= 8  # the conv output's raw range: steps of several units
    assert after.min() >= -3 - 6 / 255 and after.max() <= 3 + 6 / 255


def test_onnx_stock_int8_folds_the_clip_into_calibrated_quantization(model, onnx_int8):
    report = inspect_onnx(onnx_int8["stock"], find_truncations(model), "int8")
    assert report["truncations"][0]["mapped_to"].startswith(("folded", "Clip"))


def test_front_end_before_the_truncation_stays_float(model, tflite_int8, onnx_int8):
    from edgetrunc.export.tflite.graph import Graph, read_model

    graph = Graph(read_model(tflite_int8["aware"]))
    convs = [op for op in graph.g.operators if graph.op_name(op) == "CONV_2D"]
    kinds = [int(graph.g.tensors[int(op.inputs[1])].type) for op in convs]
    assert kinds[:2] == [0, 0]  # FLOAT32 weights for the KV filter and the seed-block conv
    assert all(k == 9 for k in kinds[2:])  # INT8 after the truncation
    from edgetrunc.models import high_pass_bank

    kernel, _, _ = high_pass_bank("kv")
    packed = graph.constant(int(convs[0].inputs[1])).reshape(4, 3, 3, 4)  # 2x2 blocks
    taps = set(np.round(packed[packed != 0] * 12).astype(int).tolist())
    assert taps == set(np.round(kernel[kernel != 0] * 12).astype(int).tolist())
    np.testing.assert_array_equal(  # exact fp32 taps
        packed, space_to_depth_kernel(kernel.transpose(3, 0, 1, 2).astype(np.float32)))
    proto = onnx_int8["aware"]
    initializers = {i.name for i in proto.graph.initializer}
    conv_weights = [n.input[1] for n in proto.graph.node if n.op_type == "Conv"]
    assert [w in initializers for w in conv_weights] == [True, True] + [False] * (len(conv_weights) - 2)
    assert all(w.endswith("DequantizeLinear_Output") for w in conv_weights[2:])


def test_int8_without_xnnpack_splits_is_one_partition(tflite_int8):
    from ai_edge_litert.interpreter import Interpreter

    def partitions(content):
        interpreter = Interpreter(model_content=content, num_threads=1)
        interpreter.allocate_tensors()
        return sum(op["op_name"] == "DELEGATE" for op in interpreter._get_ops_details())

    assert partitions(tflite_int8["aware"]) == 1
    assert partitions(tflite_int8["stock"]) > 1


def test_packed_front_end_matches_the_plain_one():
    """The space-to-depth rewrite of the chain of one-channel convolutions (on by default)
    changes no result; `literal=True` leaves it out. The seed block's VALID pool reads the
    packed values, so nothing unpacks them."""
    from edgetrunc.parity._layer_stats import view_in_layout
    from edgetrunc.runtime.tflite_runner import TFLiteRunner

    model = create("tlunet", input_shape=(32, 64, 1), seed=2)
    plain = export_tflite(model, "fp32", literal=True)
    applied = []
    packed = export_tflite(model, "fp32", applied=applied)
    assert applied == ["pack_front_end", "activations_before_unpack", "pools_as_convolutions"]
    ops = tflite_ops(packed)
    assert ops["SPACE_TO_DEPTH"] == 1 and "DEPTH_TO_SPACE" not in ops  # one chain, not unpacked
    assert "SPACE_TO_DEPTH" not in tflite_ops(plain)
    x = np.random.default_rng(1).uniform(0, 255, (3, 32, 64, 1)).astype(np.float32)
    a = TFLiteRunner(plain, preserve_all_tensors=True)
    b = TFLiteRunner(packed, preserve_all_tensors=True)
    np.testing.assert_allclose(next(iter(b.infer(x).values())), next(iter(a.infer(x).values())),
                               atol=1e-5)
    name = next(d["name"] for d in a.tensor_details() if "group1_conv" in d["name"]
                and len(d["shape"]) == 4 and d["shape"][-1] == 8)
    expected = a.get_tensor_by_name(name)
    got = b.get_tensor_by_name(name)
    assert got.shape == (3, 16, 32, 32)  # packed in place: [N, H/2, W/2, 4 * 8]
    np.testing.assert_allclose(view_in_layout(got, expected.shape, "space-to-depth 2"), expected,
                               rtol=1e-5, atol=1e-3)


def test_int8_valid_pool_and_batch_norm_are_one_convolution_over_the_packed_values(
        model, tflite_int8):
    """The seed block's VALID 5x5 pool and its batch normalization become one int8 convolution
    over the packed 2x2 blocks (nothing unpacks them) whose taps are the normalization's
    scale / 25, stored per output channel as +-127, and exact zeros."""
    from edgetrunc.export.tflite.graph import Graph, read_model

    ops = tflite_ops(tflite_int8["aware"])
    assert "MUL" not in ops and "DEPTH_TO_SPACE" not in ops and "DEPTHWISE_CONV_2D" not in ops
    graph = Graph(read_model(tflite_int8["aware"]))
    order = [graph.op_name(op) for op in graph.g.operators]
    # the saturating QUANTIZE (the truncation) and the int8 TANH run on the packed values
    assert order[:6] == ["SPACE_TO_DEPTH", "CONV_2D", "CONV_2D", "QUANTIZE", "TANH", "CONV_2D"]
    op = graph.g.operators[5]
    assert graph.producer[int(op.inputs[0])] == 4  # reads the packed TANH
    weights = graph.g.tensors[int(op.inputs[1])]
    assert list(weights.shape) == [8, 3, 3, 32]  # [C, ceil(5 / 2), ceil(5 / 2), 2 * 2 * C]
    raw = np.frombuffer(bytes(bytearray(graph.model.buffers[weights.buffer].data)), np.int8)
    assert set(np.abs(raw).tolist()) == {0, 127} and np.count_nonzero(raw) == 8 * 25
    bn = model.get_layer("group1_bn")
    gamma, beta, mean, variance = (np.asarray(w) for w in bn.get_weights())
    scale = gamma / np.sqrt(variance + bn.epsilon)
    np.testing.assert_allclose(np.asarray(weights.quantization.scale), np.abs(scale) / 25 / 127,
                               rtol=1e-5)
    assert "group1_bn" in graph.tensor_name(int(op.outputs[0]))
    literal = tflite_ops(export_tflite(model, "int8", literal=True,
                                      calibration=np.zeros((2, SIZE, SIZE, 1), np.float32)))
    assert literal["AVERAGE_POOL_2D"] == ops.get("AVERAGE_POOL_2D", 0) + 1


def _two_truncations():
    from edgetrunc import Truncation

    keras.utils.set_random_seed(4)
    inputs = keras.Input((16, 16, 1), name="input")
    x = keras.layers.Conv2D(4, 3, padding="same", name="c1")(inputs)
    x = Truncation(3.0, name="t1")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", name="c2")(x)
    x = Truncation(lower=-0.5, upper=1.0, name="t2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))


def test_every_truncation_maps_to_saturation_in_int8():
    model = _two_truncations()
    x = np.random.default_rng(0).uniform(0, 255, (16, 16, 16, 1)).astype(np.float32)
    truncations = find_truncations(model)
    tflite = export_tflite(model, "int8", calibration=x)
    assert "MINIMUM" not in tflite_ops(tflite) and "MAXIMUM" not in tflite_ops(tflite)
    mapped = [t["mapped_to"] for t in inspect_tflite(tflite, truncations, "int8")["truncations"]]
    assert mapped == ["QUANTIZE int8 saturation", "CONV_2D int8 saturation"]
    onnx_report = inspect_onnx(export_onnx(model, "int8", calibration=x), truncations, "int8")
    assert [t["mapped_to"] for t in onnx_report["truncations"]] == [
        "Clip (QDQ int8, range [lower, upper])",
        "folded into the producer's int8 output (range [lower, upper])"]


def test_stacked_truncations_saturate_once_to_their_intersection():
    """Truncations back to back (legacy models stack clips) become one int8 saturation."""
    from edgetrunc import Truncation
    from edgetrunc.runtime.tflite_runner import TFLiteRunner

    inputs = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = Truncation(3.0, name="wide")(x)
    x = Truncation(2.0, name="narrow")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))
    x = np.random.default_rng(0).uniform(0, 255, (16, 16, 16, 1)).astype(np.float32)
    tflite = export_tflite(model, "int8", calibration=x)
    assert "MINIMUM" not in tflite_ops(tflite) and "MAXIMUM" not in tflite_ops(tflite)
    mapped = [t["mapped_to"] for t in inspect_tflite(tflite, find_truncations(model), "int8")["truncations"]]
    assert mapped == ["QUANTIZE int8 saturation (stacked: wide + narrow)"] * 2
    # inspect_tflite checked the saturation range: [-2, 2], the intersection, to half a step
    got = next(iter(TFLiteRunner(tflite).infer(x).values()))
    np.testing.assert_allclose(got, np.asarray(model(x)), atol=0.02)


def test_single_truncation_probe_model_converts_like_the_main_one():
    """A model that is one Truncation (the parity probes) exports in every precision."""
    from edgetrunc import Truncation
    from edgetrunc.runtime.tflite_runner import TFLiteRunner

    inputs = keras.Input((4, 4, 1))
    model = keras.Model(inputs, Truncation(3.0, name="tlu")(inputs))
    calibration = np.random.default_rng(0).normal(0, 5, (8, 4, 4, 1)).astype(np.float32)
    probe = np.array([3, -3, 4, -4, 0, 1e30, -1e30, np.inf] * 2, np.float32).reshape(1, 4, 4, 1)
    expected = np.clip(probe, -3, 3)
    content = export_tflite(model, "int8", calibration=calibration)
    assert tflite_ops(content) == {"DEQUANTIZE": 1, "QUANTIZE": 1}
    out = next(iter(TFLiteRunner(content).infer(probe).values()))
    np.testing.assert_allclose(out, expected, atol=6 / 255 / 2 + 1e-6)
    proto = export_onnx(model, "int8", calibration=calibration)
    out = ort.InferenceSession(proto.SerializeToString()).run(None, {"input": probe})[0]
    np.testing.assert_allclose(out, expected, atol=6 / 255 / 2 + 1e-6)


def test_fused_clip_activations_stay_fused_in_int8():
    """T = 1 and [0, 6] truncations after a convolution become RELU_N1_TO_1 / RELU6."""
    from edgetrunc import Truncation

    keras.utils.set_random_seed(5)
    inputs = keras.Input((16, 16, 1), name="input")
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = Truncation(1.0, name="t1")(x)
    x = keras.layers.Conv2D(4, 3, padding="same")(x)
    x = Truncation(lower=0.0, upper=6.0, name="t2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))
    calibration = np.random.default_rng(0).uniform(0, 255, (8, 16, 16, 1)).astype(np.float32)
    content = export_tflite(model, "int8", calibration=calibration)
    report = inspect_tflite(content, find_truncations(model), "int8")
    assert [t["mapped_to"] for t in report["truncations"]] == [
        "CONV_2D+RELU_N1_TO_1 (float)", "CONV_2D+RELU6 (int8)"]
    assert "MINIMUM" not in report["ops"] and "MAXIMUM" not in report["ops"]


@pytest.mark.parametrize("variant", ["aware", "int8_io"])
def test_rewritten_int8_keeps_output_name_and_signature(model, tflite_int8, variant):
    from ai_edge_litert.interpreter import Interpreter

    from edgetrunc.export.tflite.graph import Graph, read_model

    content = tflite_int8[variant]
    graph = Graph(read_model(content))
    (output,) = graph.g.outputs
    assert not graph.tensor_name(int(output)).endswith(("/float", "/dequantized"))
    runner = Interpreter(model_content=content).get_signature_runner()
    x = np.random.default_rng(0).uniform(0, 255, (1, SIZE, SIZE, 1)).astype(np.float32)
    feed = x if variant == "aware" else (x - 128).astype(np.int8)
    (result,) = runner(input=feed).values()
    assert result.shape == (1, 2)


def _concatenated(same_bounds: bool, pooled=False):
    """A truncation feeding a Concatenate beside a second branch: another Truncation(3) when
    `same_bounds`, else an unclipped convolution (a wider range); through a max pool on
    each branch when `pooled`."""
    from edgetrunc import Truncation

    keras.utils.set_random_seed(6)
    inputs = keras.Input((16, 16, 1), name="input")
    a = Truncation(3.0, name="tlu")(keras.layers.Conv2D(2, 3, padding="same")(inputs))
    b = keras.layers.Conv2D(2, 3, padding="same", name="side")(inputs)
    if same_bounds:
        b = Truncation(3.0, name="tlu_side")(b)
    if pooled:
        a, b = keras.layers.MaxPooling2D()(a), keras.layers.MaxPooling2D()(b)
    x = keras.layers.Concatenate(name="join")([a, b])
    x = keras.layers.Conv2D(2, 3, padding="same")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))


def test_truncation_feeding_a_wider_concatenation_is_refused_in_int8(tmp_path, cli):
    """An int8 CONCATENATION's inputs take its scale: the clip bounds +-3 round to other
    steps of the wider range, so the int8 graph would not clip at 3: one line, nothing written."""
    from error_lines import assert_one_line_error

    path = tmp_path / "joined.keras"
    _concatenated(same_bounds=False).save(path)
    out = tmp_path / "out"
    code, _, err = cli("convert", path, "--out", out, "--tflite", "int8", "--onnx", "",
                       "--no-speed")
    assert_one_line_error(code, err, "tlu: int8 TFLite cannot keep this truncation",
                          "concatenation", "bounds [-3, 3] become")
    assert not out.exists() or not any(out.iterdir())


def test_truncation_reaching_a_concatenation_through_a_pool_is_refused_in_int8():
    """The concatenation's scale is carried back through the max pool (one scale in and
    out) to the truncation: the same refusal, naming the concatenation."""
    from edgetrunc.errors import InputError

    x = np.random.default_rng(0).uniform(0, 255, (8, 16, 16, 1)).astype(np.float32)
    with pytest.raises(InputError, match=r"^tlu: int8 TFLite cannot keep this truncation: it "
                                         r"feeds the concatenation \S*join\S*, .* bounds \[-3, 3\]"):
        export_tflite(_concatenated(same_bounds=False, pooled=True), "int8", calibration=x)


def test_truncations_with_the_concatenation_range_saturate_in_int8():
    """Both inputs of the Concatenate are Truncation(3): its range is exactly [-3, 3] and each
    truncation is the int8 saturation (the inspector checks the range to half a step)."""
    from edgetrunc.runtime.tflite_runner import TFLiteRunner

    model = _concatenated(same_bounds=True)
    x = np.random.default_rng(0).uniform(0, 255, (8, 16, 16, 1)).astype(np.float32)
    tflite = export_tflite(model, "int8", calibration=x)
    mapped = inspect_tflite(tflite, find_truncations(model), "int8")["truncations"]
    assert [t["mapped_to"] for t in mapped] == ["QUANTIZE int8 saturation"] * 2
    got = next(iter(TFLiteRunner(tflite).infer(x).values()))
    np.testing.assert_allclose(got, np.asarray(model(x)), atol=0.05)
