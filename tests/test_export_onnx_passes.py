"""The ONNX rewrites for speed: the one-channel chain over 2x2 blocks (SpaceToDepth ->
Conv ... -> DepthToSpace), the Clip and activation moved ahead of its unpacking, and the
VALID pool with its batch normalization as convolutions over the packed values give the
literal graph's results; `literal=True` leaves them out; per-layer parity reads the packed
tensors."""

import numpy as np
import pytest

pytest.importorskip("tf2onnx")
pytest.importorskip("onnxruntime")

from edgetrunc.export import export_onnx  # noqa: E402
from edgetrunc.models import create  # noqa: E402
from edgetrunc.runtime.onnx_runner import ONNXRunner  # noqa: E402

SHAPE = (32, 64, 1)


@pytest.fixture(scope="module")
def wide_tlunet():
    return create("tlunet", input_shape=SHAPE, seed=2)


def _inputs(count=3):
    return np.random.default_rng(1).uniform(0, 255, (count, *SHAPE)).astype(np.float32)


def _types(proto):
    return [n.op_type for n in proto.graph.node]


def test_packed_onnx_graph_matches_the_literal_one(wide_tlunet):
    literal_passes, packed_passes = [], []
    literal = export_onnx(wide_tlunet, "fp32", literal=True, applied=literal_passes)
    packed = export_onnx(wide_tlunet, "fp32", applied=packed_passes)
    assert packed_passes[-3:] == ["pack_front_end", "activations_before_unpack",
                                  "pools_as_convolutions"]
    assert not {"pack_front_end", "pools_as_convolutions"} & set(literal_passes)
    types = _types(packed)
    # the one-output front end stays as it is (`PACK_MIN_OUTPUTS`); the seed block is packed
    # and the truncation, the tanh and the pool read its packed values
    assert types[:7] == ["Reshape", "Conv", "SpaceToDepth", "Conv", "Clip", "Tanh", "Conv"]
    assert "DepthToSpace" not in types and types.count("AveragePool") == 3  # SAME pools stay
    assert "SpaceToDepth" not in _types(literal)
    x = _inputs()
    a = ONNXRunner(literal.SerializeToString(), threads=1).infer(x)
    b = ONNXRunner(packed.SerializeToString(), threads=1).infer(x)
    np.testing.assert_allclose(next(iter(b.values())), next(iter(a.values())), atol=1e-5)


def test_onnx_per_layer_parity_reads_the_packed_tensors(wide_tlunet, tmp_path):
    from edgetrunc.keras.runner import KerasRunner
    from edgetrunc.parity.per_layer import compare_artifact_layers

    path = tmp_path / "packed.onnx"
    path.write_bytes(export_onnx(wide_tlunet, "fp32").SerializeToString())
    layers, first = compare_artifact_layers(KerasRunner(wide_tlunet), path, "onnx", "fp32",
                                            _inputs())
    assert first is None
    by_name = {layer.layer: layer for layer in layers}
    for name in ("front_end", "group1_conv", "group1_truncation", "group1_tanh", "group1_bn"):
        assert by_name[name].status == "compared", by_name[name]
    assert by_name["group1_truncation"].layout == "space-to-depth 2 NCHW"
    assert by_name["group1_pool"].status == "fused"


def test_onnx_int8_is_rewritten_before_quantization(wide_tlunet):
    """int8 (QDQ): the layout rewrites run on the float graph before the quantizer, so the
    VALID pools are convolutions (no QLinearAveragePool for them, onnxruntime's slow int8
    pool) and the packed front end stays float; `literal` keeps the one-to-one graph."""
    calibration = np.random.default_rng(2).uniform(0, 255, (8, *SHAPE)).astype(np.float32)
    applied = []
    types = _types(export_onnx(wide_tlunet, "int8", calibration=calibration, applied=applied))
    assert "SpaceToDepth" in types and types.count("AveragePool") < 4
    assert {"pack_front_end", "pools_as_convolutions"} <= set(applied)
    literal = _types(export_onnx(wide_tlunet, "int8", calibration=calibration, literal=True))
    assert "SpaceToDepth" not in literal and literal.count("AveragePool") == 4


def test_a_free_input_size_stays_literal():
    free = create("tlunet", input_shape=(None, None, 1), seed=2)
    applied = []
    types = _types(export_onnx(free, "fp32", applied=applied))
    assert "SpaceToDepth" not in types and "pack_front_end" not in applied


def _seed_pool_model(channels: int):
    import keras

    from edgetrunc import Truncation

    keras.utils.set_random_seed(channels)
    inputs = keras.Input((24, 20, 1))
    x = keras.layers.Conv2D(channels, 5, padding="same", name="seed")(inputs)
    x = Truncation(2.0, name="clip")(x)
    x = keras.layers.Activation("tanh", name="act")(x)
    x = keras.layers.AveragePooling2D(5, strides=2, name="pool")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="head")(x))


@pytest.mark.parametrize("channels, packed", [(8, True), (16, False)])
def test_onnx_packs_only_where_nothing_unpacks(channels, packed):
    """Packed only when the pool then reads the packed values (at most 8 channels): with 16,
    the unpacking would stay (a DepthToSpace moving single floats), so nothing is packed; the
    pool and its batch norm become one depthwise Conv either way."""
    model = _seed_pool_model(channels)
    applied = []
    proto = export_onnx(model, "fp32", applied=applied)
    types = _types(proto)
    assert ("SpaceToDepth" in types) == packed and "DepthToSpace" not in types
    assert ("pack_front_end" in applied) == packed and "AveragePool" not in types
    x = np.random.default_rng(5).uniform(0, 255, (2, 24, 20, 1)).astype(np.float32)
    literal = export_onnx(model, "fp32", literal=True)
    np.testing.assert_allclose(
        next(iter(ONNXRunner(proto.SerializeToString(), threads=1).infer(x).values())),
        next(iter(ONNXRunner(literal.SerializeToString(), threads=1).infer(x).values())),
        rtol=1e-4, atol=1e-6)
