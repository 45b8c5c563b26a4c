"""Export: op inventory of every truncation mapping, numeric parity, truncation-aware int8."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("tf2onnx")
ort = pytest.importorskip("onnxruntime")

from edgetrunc import Truncation  # noqa: E402
from edgetrunc.errors import InputError  # noqa: E402
from edgetrunc.export import (  # noqa: E402
    export_onnx,
    export_tflite,
    find_truncations,
    inspect_onnx,
    inspect_tflite,
    onnx_ops,
    tflite_ops,
)
from edgetrunc.models import create  # noqa: E402


def _chain(shape, blocks, name):
    """Conv -> Truncation blocks; `blocks` is a list of Truncation kwargs."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input(shape, name="input")
    x = inputs
    for i, kwargs in enumerate(blocks):
        x = keras.layers.Conv2D(4, 3, padding="same", name=f"conv{i}")(x)
        x = Truncation(name=f"tlu{i}", **kwargs)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, activation="softmax")(x)
    return keras.Model(inputs, outputs, name=name)


def _learned_threshold_model():
    model = _chain((16, 16, 1), [{"threshold": 2.0, "learn_threshold": True}], "learned")
    layer = model.get_layer("tlu0")
    layer.trainable_weights[0].assign(1.7)  # what training leaves behind
    return model


MODELS = {
    "seed_block": lambda: create("seed_block", input_shape=(32, 32, 1), seed=0),
    "tlunet": lambda: create("tlunet", input_shape=(32, 32, 1), seed=0),
    "two_thresholds": lambda: _chain((16, 16, 1), [{"threshold": 3.0}, {"threshold": 0.5}], "two"),
    "asymmetric": lambda: _chain((16, 16, 1), [{"lower": -1.0, "upper": 2.0}], "asym"),
    "t_equals_1": lambda: _chain((16, 16, 1), [{"threshold": 1.0}], "t1"),
    "learned": _learned_threshold_model,
}
EXPECTED_BOUNDS = {
    "seed_block": [(-3, 3)], "tlunet": [(-3, 3)], "two_thresholds": [(-3, 3), (-0.5, 0.5)],
    "asymmetric": [(-1, 2)], "t_equals_1": [(-1, 1)], "learned": [(-1.7, 1.7)],
}


def _bounds(truncations):
    return [v for t in truncations for v in (t["lower"], t["upper"])]


def _flat(pairs):
    return [v for pair in pairs for v in pair]


@pytest.fixture(scope="module")
def exported():
    """Each model with its fp32 / fp16 TFLite and fp32 ONNX export (converted once)."""
    out = {}
    for name, build in MODELS.items():
        model = build()
        out[name] = {
            "model": model,
            "fp32": export_tflite(model, "fp32"),
            "fp16": export_tflite(model, "fp16", literal=True),
            "fp16-packed": export_tflite(model, "fp16"),
            "onnx": export_onnx(model, "fp32"),
        }
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_find_truncations_reports_bounds_in_force(exported, name):
    found = find_truncations(exported[name]["model"])
    assert _bounds(found) == pytest.approx(_flat(EXPECTED_BOUNDS[name]))


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("name", list(MODELS))
def test_tflite_truncation_is_exactly_minimum_and_maximum(exported, name, precision):
    entry = exported[name]
    truncations = find_truncations(entry["model"])
    report = inspect_tflite(entry[precision], truncations, precision)
    ops = tflite_ops(entry[precision])
    assert not [op for op in ops if op.startswith("CUSTOM") or "Flex" in op]
    fused = [t for t in report["truncations"] if t["mapped_to"] != "MAXIMUM+MINIMUM"]
    pairs = len(truncations) - len(fused)
    assert ops.get("MAXIMUM", 0) == pairs and ops.get("MINIMUM", 0) == pairs
    for t in fused:  # only where a builtin activation has exactly these bounds
        assert (t["lower"], t["upper"]) in {(-1.0, 1.0), (0.0, 6.0), (0.0, 1.0)}
        assert t["mapped_to"].endswith(("RELU_N1_TO_1", "RELU6", "RELU_0_TO_1"))
    assert _bounds(report["truncations"]) == pytest.approx(_flat(EXPECTED_BOUNDS[name]))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_onnx_truncation_is_one_clip_with_scalar_bounds(exported, name):
    import onnx

    proto = exported[name]["onnx"]
    truncations = find_truncations(exported[name]["model"])
    report = inspect_onnx(proto, truncations, "fp32")
    ops = onnx_ops(proto)
    assert ops.get("Clip", 0) == len(truncations)
    assert "Min" not in ops and "Max" not in ops
    onnx.checker.check_model(proto, full_check=True)
    initializers = {i.name: i for i in proto.graph.initializer}
    for t in report["truncations"]:
        (clip,) = [n for n in proto.graph.node if n.name == f"{t['layer']}/Clip"]
        for bound, value in zip(clip.input[1:], (t["lower"], t["upper"])):
            array = onnx.numpy_helper.to_array(initializers[bound])
            assert array.shape == () and array == np.float32(value)
    assert [i.name for i in proto.graph.input] == ["input"]


@pytest.mark.slow
def test_inspector_names_the_layer_when_bounds_are_wrong(exported):
    entry = exported["two_thresholds"]
    wrong = [dict(t) for t in find_truncations(entry["model"])]
    wrong[1]["upper"] = 0.75
    with pytest.raises(InputError, match="tlu1"):
        inspect_tflite(entry["fp32"], wrong, "fp32")
    with pytest.raises(InputError, match="tlu1"):
        inspect_onnx(entry["onnx"], wrong, "fp32")


def _photo_batch(size=256, n=3):
    from edgetrunc.data.dataset import load_pairs

    x = load_pairs(split="test", max_pairs=n, seed=0).x[:, :size, :size]
    noise = np.random.default_rng(0).uniform(0, 255, (2, size, size, 1)).astype(np.float32)
    return np.concatenate([x, noise])


@pytest.fixture(scope="module")
def full_size():
    """seed_block and tlunet on 256x256 with a trained-looking scale of weights."""
    models = {"seed_block": create("seed_block", seed=0), "tlunet": create("tlunet", seed=0)}
    return {name: (m, export_tflite(m, "fp32"), export_onnx(m, "fp32")) for name, m in models.items()}


@pytest.mark.parametrize("name", ["seed_block", "tlunet"])
def test_fp32_artifacts_match_keras_on_256x256(full_size, name):
    from edgetrunc.runtime.tflite_runner import TFLiteRunner

    model, tflite, proto = full_size[name]
    x = _photo_batch()
    reference = model.predict(x, verbose=0)
    tflite_out = next(iter(TFLiteRunner(tflite).infer(x).values()))
    onnx_out = ort.InferenceSession(proto.SerializeToString()).run(None, {"input": x})[0]
    assert np.abs(tflite_out - reference).max() <= 1e-4
    assert np.abs(onnx_out - reference).max() <= 1e-5


def test_onnx_nchw_input_and_opset_range(full_size):
    model = create("seed_block", input_shape=(16, 16, 1), seed=0)
    proto = export_onnx(model, "fp32", opset=13, nchw=True)
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim[1:]]
    assert dims == [1, 16, 16]
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {13}
    x = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 1)).astype(np.float32)
    y = ort.InferenceSession(proto.SerializeToString()).run(
        None, {"input": x.transpose(0, 3, 1, 2)})[0]
    np.testing.assert_allclose(y, model.predict(x, verbose=0), atol=1e-5)
    for bad in (12, 22, "17"):
        with pytest.raises(InputError, match="opset"):
            export_onnx(model, "fp32", opset=bad)


def test_unknown_precision_is_an_input_error():
    model = _chain((8, 8, 1), [{"threshold": 1.0}], "tiny")
    with pytest.raises(InputError, match="precision"):
        export_tflite(model, "int4")
    with pytest.raises(InputError, match="precision"):
        export_onnx(model, "fp16")
    with pytest.raises(InputError, match="calibration"):
        export_tflite(model, "int8")


def test_layer_without_builtin_op_is_named():
    import tensorflow as tf

    class Bessel(keras.layers.Layer):
        def call(self, x):
            return tf.math.special.bessel_i0e(x)

    inputs = keras.Input((8, 8, 1))
    x = Truncation(1.0)(inputs)
    model = keras.Model(inputs, Bessel(name="bessel")(x))
    with pytest.raises(InputError, match=r"layer 'bessel'.*BesselI0e"):
        export_tflite(model, "fp32")


@pytest.mark.slow
def test_packed_fp16_front_end_keeps_the_float32_weights(exported):
    """Packing re-lays the front end's kernel over 2x2 blocks of pixels: the same float32
    values (and exact zeros), nothing rounded to fp16."""
    from edgetrunc.export.tflite.graph import Graph, read_model
    from edgetrunc.models import high_pass_bank

    graph = Graph(read_model(exported["tlunet"]["fp16-packed"]))
    convs = [op for op in graph.g.operators if graph.op_name(op) == "CONV_2D"]
    index = int(convs[0].inputs[1])
    assert int(graph.g.tensors[index].type) == 0 and graph.producer.get(index) is None  # float32
    front = graph.constant(index).astype(np.float32)
    kernel, _, _ = high_pass_bank("kv")
    kernel = kernel.astype(np.float32)
    assert set(np.unique(front[front != 0])) == set(np.unique(kernel[kernel != 0]))
    assert np.count_nonzero(front) == 4 * np.count_nonzero(kernel)  # one copy per pixel of a block


@pytest.mark.slow
def test_fp16_keeps_the_front_end_and_bounds_exact(exported):
    """fp16 rounding of the KV filter's 1/12 steps leaves a DC gain that swamps a +-1 stego
    residual; the front end before the first truncation keeps its fp32 weights."""
    from edgetrunc.export.tflite.graph import Graph, read_model
    from edgetrunc.models import high_pass_bank

    graph = Graph(read_model(exported["tlunet"]["fp16"]))
    convs = [op for op in graph.g.operators if graph.op_name(op) == "CONV_2D"]
    front = graph.g.tensors[int(convs[0].inputs[1])]
    assert int(front.type) == 0 and graph.producer.get(int(convs[0].inputs[1])) is None
    kernel, _, _ = high_pass_bank("kv")
    np.testing.assert_array_equal(graph.constant(int(convs[0].inputs[1])).reshape(5, 5),
                                  kernel[:, :, 0, 0])
    later = int(convs[2].inputs[1])
    assert graph.op_name(graph.g.operators[graph.producer[later]]) == "DEQUANTIZE"  # fp16 weights


@pytest.mark.slow
def test_same_model_gives_the_same_bytes(exported):
    model = exported["two_thresholds"]["model"]
    assert export_onnx(model, "fp32").SerializeToString() == exported["two_thresholds"][
        "onnx"].SerializeToString()
    assert export_tflite(model, "fp32") == exported["two_thresholds"]["fp32"]


@pytest.mark.parametrize("opset", [19, 21])
def test_opsets_beyond_tf2onnx_are_version_converted(opset):
    model = create("seed_block", input_shape=(16, 16, 1), seed=0)
    proto = export_onnx(model, "fp32", opset=opset)
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {opset}
    assert onnx_ops(proto)["Clip"] == 1
    x = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 1)).astype(np.float32)
    y = ort.InferenceSession(proto.SerializeToString()).run(None, {"input": x})[0]
    np.testing.assert_allclose(y, model.predict(x, verbose=0), atol=1e-5)
    if opset == 21:
        with pytest.raises(InputError, match="opset"):
            export_onnx(model, "int8", opset=opset, calibration=x)
