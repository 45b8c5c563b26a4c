"""Every registered model: builds, runs a 256x256 batch, no NaN, save/load round trip."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from edgetrunc import models  # noqa: E402
from edgetrunc.layers import Truncation  # noqa: E402


@pytest.mark.parametrize("name", models.list_models())
def test_registered_model_builds_runs_and_round_trips(name, tmp_path):
    model = models.create(name, seed=0)
    x = np.random.default_rng(0).integers(0, 256, (2, 256, 256, 1)).astype(np.float32)
    y = model.predict(x, verbose=0)
    assert y.shape[0] == 2
    assert not np.isnan(y).any()
    assert any(isinstance(layer, Truncation) for layer in model.layers)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), y, rtol=1e-6, atol=1e-6)


def test_seed_block_is_the_question_verbatim():
    model = models.create("seed_block")
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["InputLayer", "Conv2D", "Truncation", "Activation", "AveragePooling2D",
                     "BatchNormalization"]
    conv = model.layers[1]
    assert conv.filters == 8 and conv.kernel_size == (5, 5) and conv.padding == "same"
    assert conv.use_bias is False and conv.strides == (1, 1)
    assert model.output_shape == (None, 126, 126, 8)


def test_tlunet_front_end_is_fixed_zero_dc_high_pass():
    model = models.create("tlunet")
    front = model.get_layer("front_end")
    assert not front.trainable
    (kernel,) = front.get_weights()
    assert abs(kernel.sum()) < 1e-6
    assert model.output_shape == (None, 2)
    assert model.get_layer("group1_truncation").bounds == (-3.0, 3.0)


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'nope'; expected one of"):
        models.create("nope")


def _tflite_ops(model):
    from ai_edge_litert.interpreter import Interpreter

    content = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    return [op["op_name"] for op in Interpreter(model_content=content)._get_ops_details()]


@pytest.mark.parametrize("name", ["seed_block", "tlunet"])
def test_tflite_inventory_has_only_min_max_for_truncation(name):
    ops = _tflite_ops(models.create(name, seed=0))
    assert ops.count("MINIMUM") == 1 and ops.count("MAXIMUM") == 1
    forbidden = {"IDENTITY_N", "SUB", "ADD", "SELECT", "SELECT_V2", "CUSTOM", "DELEGATE"}
    assert not forbidden & set(ops)
    assert not [op for op in ops if op.startswith("Flex")]


def test_flops_of_the_seed_block_from_its_layer_shapes():
    from edgetrunc.models.flops import count_flops

    rows = {r["layer"]: r for r in count_flops(models.create("seed_block", seed=0))}
    conv = next(r for r in rows.values() if r["kind"] == "Conv2D")
    assert conv["macs"] == 256 * 256 * 8 * 5 * 5 and conv["flops"] == 2 * conv["macs"]  # no bias
    assert [r["flops"] for r in rows.values() if r["kind"] == "Truncation"] == [256 * 256 * 8]
    assert [r["flops"] for r in rows.values() if r["kind"] == "BatchNormalization"] == [2 * 126 * 126 * 8]
    assert sum(r["flops"] for r in rows.values()) == 30_692_192


def test_tlunet_has_about_72_million_multiply_adds():
    from edgetrunc.models.flops import count_flops

    macs = sum(r["macs"] for r in count_flops(models.create("tlunet", seed=0)))
    assert 70e6 < macs < 74e6


def test_flops_of_a_residual_merge_count_one_per_added_element():
    import keras

    from edgetrunc.models.flops import count_flops

    inputs = keras.Input((8, 8, 2))
    conv = keras.layers.Conv2D(2, 3, padding="same", use_bias=False, name="conv")(inputs)
    merged = keras.layers.Add(name="add")([inputs, conv])
    rows = {r["layer"]: r for r in count_flops(keras.Model(inputs, merged))}
    assert rows["add"]["flops"] == 8 * 8 * 2
    assert rows["conv"]["macs"] == 8 * 8 * 2 * 3 * 3 * 2
