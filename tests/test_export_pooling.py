"""VALID average pools and the batch normalization after them as convolutions (TFLite): the
int8 forms give the very bytes of the pooling they replace, the float forms the same values
up to rounding, and per-layer parity still reads every layer."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from edgetrunc.export import export_tflite, tflite_ops  # noqa: E402
from edgetrunc.export.tflite import passes  # noqa: E402
from edgetrunc.export.tflite.graph import Graph, read_model  # noqa: E402
from edgetrunc.export.blocks import window_taps  # noqa: E402
from edgetrunc.parity._layer_stats import view_in_layout  # noqa: E402
from edgetrunc.runtime.tflite_runner import TFLiteRunner  # noqa: E402

SHAPE = (24, 20, 1)


def _model(channels: int, pool: int = 5, stride: int = 2, rgb: bool = False):
    """hpf -> seed (channels) -> truncation -> tanh -> VALID pool -> batch norm -> body."""
    from edgetrunc import Truncation

    keras.utils.set_random_seed(channels + pool + int(np.sum(stride)))
    inputs = keras.Input(SHAPE[:2] + (3 if rgb else 1,))
    x = keras.layers.Conv2D(1, 5, padding="same", name="hpf")(inputs)
    x = keras.layers.Conv2D(channels, 5, padding="same", name="seed")(x)
    x = Truncation(2.0, name="clip")(x)
    x = keras.layers.Activation("tanh", name="act")(x)
    x = keras.layers.AveragePooling2D(pool, strides=stride, padding="valid", name="pool")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", name="body")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="head")(x))
    rng = np.random.default_rng(channels)
    bn = model.get_layer("bn")
    bn.set_weights([rng.uniform(0.5, 2.0, channels) * rng.choice([-1, 1], channels),
                    rng.normal(0, 0.3, channels), rng.normal(0, 0.1, channels),
                    rng.uniform(0.01, 0.05, channels)])
    return model


def _inputs(count=4, shape=SHAPE):
    return np.random.default_rng(7).uniform(0, 255, (count, *shape)).astype(np.float32)


def _calibration():
    return np.random.default_rng(8).uniform(0, 255, (16, *SHAPE)).astype(np.float32)


def _without_pool_pass(monkeypatch, model, precision):
    for name in ("FP32_PASSES", "INT8_QUANTIZED_PASSES"):
        monkeypatch.setattr(passes, name, [p for p in getattr(passes, name)
                                           if p is not passes.pools_as_convolutions])
    return export_tflite(model, precision, calibration=_calibration())


def _order(content):
    graph = Graph(read_model(content))
    return [graph.op_name(op) for op in graph.g.operators]


def test_window_taps_sum_each_pooling_window_over_the_packed_blocks():
    """A depthwise VALID sum over 2x2 blocks with `window_taps`, then the block's 4 partial
    sums added, is the 5x5 stride-2 window sum over pixels."""
    rng = np.random.default_rng(0)
    channels, kh, kw = 3, 5, 3
    x = rng.standard_normal((1, 12, 16, channels))
    packed = x.reshape(1, 6, 2, 8, 2, channels).transpose(0, 1, 3, 2, 4, 5).reshape(1, 6, 8, -1)
    taps = window_taps(kh, kw, 2, channels)
    ch, cw, _ = taps.shape
    out_h, out_w = 6 - ch + 1, 8 - cw + 1
    sums = sum(packed[:, i:i + out_h, j:j + out_w] * taps[i, j] for i in range(ch) for j in range(cw))
    got = sums.reshape(1, out_h, out_w, 4, channels).sum(3)
    expected = np.stack([[x[0, 2 * i:2 * i + kh, 2 * j:2 * j + kw].sum((0, 1))
                          for j in range((16 - kw) // 2 + 1)] for i in range((12 - kh) // 2 + 1)])
    assert got.shape[1:3] == expected.shape[:2]
    np.testing.assert_allclose(got[0], expected, atol=1e-12)


@pytest.mark.parametrize("channels, form", [(4, "packed"), (12, "depthwise")])
def test_int8_pool_convolutions_give_the_same_bytes(monkeypatch, channels, form):
    """int8: the pool and its batch norm become one convolution (over the packed values when
    there are few channels, else a depthwise one); every output byte stays the same."""
    model = _model(channels)
    applied = []
    rewritten = export_tflite(model, "int8", calibration=_calibration(), applied=applied)
    assert applied[-1] == "pools_as_convolutions"
    order = _order(rewritten)
    assert "AVERAGE_POOL_2D" not in order and "MUL" not in order and "ADD" not in order
    if form == "packed":
        assert "DEPTH_TO_SPACE" not in order and "DEPTHWISE_CONV_2D" not in order
    else:
        assert order.count("DEPTHWISE_CONV_2D") == 1 and "DEPTH_TO_SPACE" in order
    reference = _without_pool_pass(monkeypatch, model, "int8")
    assert "AVERAGE_POOL_2D" in _order(reference)
    x = _inputs()
    a = TFLiteRunner(reference, preserve_all_tensors=True)
    b = TFLiteRunner(rewritten, preserve_all_tensors=True)
    np.testing.assert_array_equal(next(iter(b.infer(x).values())), next(iter(a.infer(x).values())))
    shared = _int8_tensors(a) & _int8_tensors(b)
    assert any("body" in name for name in shared)
    for name in shared:  # every int8 tensor both graphs hold, the body convolution's included
        np.testing.assert_array_equal(b.get_tensor_by_name(name), a.get_tensor_by_name(name))


def _int8_tensors(runner) -> set:
    return {d["name"] for d in runner.tensor_details()
            if d["dtype"] == np.int8 and len(d["shape"]) == 4 and d["shape"][0] > 1}


def test_int8_pool_that_does_not_follow_an_unpacking_is_a_diagonal_convolution(monkeypatch):
    """A stride-1 pool reads the unpacked values: a dense convolution with diagonal taps."""
    model = _model(4, pool=3, stride=1)
    rewritten = export_tflite(model, "int8", calibration=_calibration())
    graph = Graph(read_model(rewritten))
    convs = [op for op in graph.g.operators if graph.op_name(op) == "CONV_2D"
             and "bn" in graph.tensor_name(int(op.outputs[0]))]
    (op,) = convs
    raw = graph.constant(int(op.inputs[1]))
    weights = np.asarray(raw).reshape([int(d) for d in graph.g.tensors[int(op.inputs[1])].shape])
    assert weights.shape == (4, 3, 3, 4)
    off_diagonal = weights * (1 - np.eye(4))[:, None, None, :]
    assert not off_diagonal.any() and np.all(np.abs(np.einsum("chwc->chw", weights)) > 0)
    reference = _without_pool_pass(monkeypatch, model, "int8")
    x = _inputs()
    np.testing.assert_array_equal(next(iter(TFLiteRunner(rewritten).infer(x).values())),
                                  next(iter(TFLiteRunner(reference).infer(x).values())))


@pytest.mark.parametrize("channels, expected", [
    (4, ["DEPTHWISE_CONV_2D", "CONV_2D"]),  # window sums over the packed blocks, then 1x1
    (12, ["DEPTH_TO_SPACE", "DEPTHWISE_CONV_2D"]),  # unpacked, one depthwise convolution
])
@pytest.mark.slow
def test_float_pool_and_batch_norm_stay_within_fp32_tolerance(tmp_path, monkeypatch, channels,
                                                              expected):
    from edgetrunc.keras.runner import KerasRunner
    from edgetrunc.parity.per_layer import compare_artifact_layers

    model = _model(channels)
    rewritten = export_tflite(model, "fp32")
    order = _order(rewritten)
    tanh = order.index("TANH")
    assert order[tanh + 1:tanh + 3] == expected
    assert "AVERAGE_POOL_2D" not in order and "MUL" not in order
    if channels <= 8:
        assert "DEPTH_TO_SPACE" not in order
    reference = _without_pool_pass(monkeypatch, model, "fp32")
    x = _inputs()
    np.testing.assert_allclose(next(iter(TFLiteRunner(rewritten).infer(x).values())),
                               next(iter(TFLiteRunner(reference).infer(x).values())),
                               rtol=1e-5, atol=1e-6)
    path = tmp_path / "pooled.tflite"
    path.write_bytes(rewritten)
    layers, first = compare_artifact_layers(KerasRunner(model), path, "tflite", "fp32", x)
    assert first is None
    by_name = {layer.layer: layer for layer in layers}
    for name in ("hpf", "seed", "clip", "act", "bn", "body"):
        assert by_name[name].status == "compared", by_name[name]
    assert by_name["pool"].status == "fused" and by_name["pool"].fused_into == "bn"


@pytest.mark.slow
def test_fp16_pool_rewrite_leaves_no_unread_dequantize():
    """fp16 stores the batch norm's constants as fp16 behind DEQUANTIZE ops; once the pool's
    convolution holds them, those ops go too."""
    model = _model(4)
    graph = Graph(read_model(export_tflite(model, "fp16")))
    outputs = set(int(t) for t in graph.g.outputs)
    for op in graph.g.operators:
        assert any(graph.consumers.get(int(t)) or int(t) in outputs for t in op.outputs), \
            graph.op_name(op)
    assert "AVERAGE_POOL_2D" not in tflite_ops(export_tflite(model, "fp16"))


def test_same_pools_and_literal_exports_keep_the_pooling():
    """A SAME pool (border windows hold fewer pixels) is not rewritten; `literal=True` rewrites
    nothing."""
    from edgetrunc.models import create

    tlunet = tflite_ops(export_tflite(create("tlunet", input_shape=(32, 32, 1), seed=0), "fp32"))
    assert tlunet["AVERAGE_POOL_2D"] == 3  # groups 2-4 pool SAME; group 1's VALID pool went
    literal = tflite_ops(export_tflite(_model(4), "fp32", literal=True))
    assert literal["AVERAGE_POOL_2D"] == 1 and "DEPTHWISE_CONV_2D" not in literal


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_pool_with_unequal_strides_keeps_them(monkeypatch, precision):
    model = _model(4, pool=3, stride=(1, 2))
    rewritten = export_tflite(model, precision, calibration=_calibration())
    assert "AVERAGE_POOL_2D" not in _order(rewritten)
    reference = _without_pool_pass(monkeypatch, model, precision)
    x = _inputs()
    got = next(iter(TFLiteRunner(rewritten).infer(x).values()))
    expected = next(iter(TFLiteRunner(reference).infer(x).values()))
    if precision == "int8":
        np.testing.assert_array_equal(got, expected)
    else:
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
