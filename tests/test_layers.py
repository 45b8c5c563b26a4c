"""The Truncation layer: round trip, exact forward, gradients, PACT threshold, errors, TFLite ops."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from edgetrunc import Truncation  # noqa: E402
from edgetrunc.layers import truncate  # noqa: E402

EDGE_VALUES = np.array([np.nan, np.inf, -np.inf, 3e7, -3e7, 2.5, -3, 3], dtype=np.float32)
EDGE_EXPECTED = np.array([np.nan, 3, -3, 3, -3, 2.5, -3, 3], dtype=np.float32)


def _tflite_ops(model):
    from ai_edge_litert.interpreter import Interpreter

    content = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    return [op["op_name"] for op in Interpreter(model_content=content)._get_ops_details()]


def test_round_trip_config_serialize_and_save(tmp_path):
    layer = Truncation(2.0, gradient="clip", name="tlu")
    config = layer.get_config()
    assert config["threshold"] == 2.0 and config["gradient"] == "clip"
    clone = Truncation.from_config(config)
    assert clone.bounds == (-2.0, 2.0) and clone.gradient == "clip"
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, Truncation) and restored.bounds == (-2.0, 2.0)

    inputs = keras.Input((4,))
    outputs = Truncation(lower=-1.0, upper=2.0)(inputs)
    model = keras.Model(inputs, outputs)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = np.array([[-5, -0.5, 1.5, 9]], dtype=np.float32)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), [[-1, -0.5, 1.5, 2]])


def test_forward_is_exact_clip_on_edge_values():
    y = np.asarray(Truncation(3.0)(EDGE_VALUES))
    np.testing.assert_array_equal(y, EDGE_EXPECTED)  # NaN positions compared as equal
    assert y.dtype == np.float32
    assert np.all(np.abs(y[~np.isnan(y)]) <= 3.0)


def test_forward_bit_exact_on_random_values():
    x = np.random.default_rng(0).normal(scale=5, size=10000).astype(np.float32)
    y = np.asarray(Truncation(3.0)(x))
    assert np.array_equal(y.view(np.uint32), np.clip(x, -3, 3).view(np.uint32))


def test_asymmetric_bounds():
    y = np.asarray(Truncation(lower=-1.0, upper=2.0)(np.array([-4, -1, 0.5, 2, 7], np.float32)))
    np.testing.assert_array_equal(y, [-1, -1, 0.5, 2, 2])


def test_keeps_float16_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        inputs = keras.Input((4,))
        outputs = Truncation(3.0)(keras.layers.Dense(4)(inputs))
        assert outputs.dtype == "float16"
        model = keras.Model(inputs, outputs)
        y = model(np.ones((1, 4), np.float32))
        assert np.all(np.abs(np.asarray(y, np.float32)) <= 3)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    y16 = Truncation(3.0, dtype="float16")(np.array([5.0, -0.5], np.float16))
    assert y16.dtype == "float16"


def _grad(layer, x):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(y * tf.range(1, x.shape[0] + 1, dtype=x.dtype))
    return tape.gradient(loss, x).numpy()


def test_gradient_ste_is_identity():
    x = np.array([-5, -3, -1, 0, 3, 4], np.float32)
    np.testing.assert_array_equal(_grad(Truncation(3.0), x), [1, 2, 3, 4, 5, 6])


def test_gradient_clip_is_masked_closed_interval():
    x = np.array([-5, -3, -1, 0, 3, 4], np.float32)
    np.testing.assert_array_equal(_grad(Truncation(3.0, gradient="clip"), x), [0, 2, 3, 4, 5, 0])


def test_learned_threshold_pact_gradient():
    layer = Truncation(2.0, learn_threshold=True)
    x = tf.constant([-5.0, -2.5, -1.0, 0.5, 2.0, 3.0, 4.0])
    upstream = tf.constant([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(y * upstream)
    np.testing.assert_array_equal(y.numpy(), [-2, -2, -1, 0.5, 2, 2, 2])
    (t_var,) = layer.trainable_weights
    # x > T: 3.0 and 4.0 -> 6 + 7; x < -T: -5 and -2.5 -> 1 + 2.
    assert float(tape.gradient(loss, t_var)) == pytest.approx((6 + 7) - (1 + 2))
    np.testing.assert_array_equal(tape.gradient(loss, x).numpy(), upstream.numpy())
    clip_layer = Truncation(2.0, learn_threshold=True, gradient="clip")
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(clip_layer(x) * upstream)
    np.testing.assert_array_equal(tape.gradient(loss, x).numpy(), [0, 0, 3, 4, 5, 0, 0])


def test_learned_threshold_trains_stays_positive_and_exports_constant(tmp_path):
    inputs = keras.Input((8,))
    outputs = Truncation(1.0, learn_threshold=True, name="tlu")(inputs)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(10.0), loss="mse")
    x = np.linspace(-4, 4, 64, dtype=np.float32).reshape(8, 8)
    model.fit(x, np.clip(x, -0.0, 0.0), epochs=5, verbose=0)
    t = model.get_layer("tlu").bounds[1]
    assert t == pytest.approx(1e-6, rel=1e-4)  # driven to zero, held by the constraint
    path = tmp_path / "learned.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert loaded.get_layer("tlu").bounds == pytest.approx((-t, t))
    assert sorted(set(_tflite_ops(loaded))) == ["MAXIMUM", "MINIMUM"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"threshold": 0}, "threshold must be a finite number > 0. Received: threshold=0.0"),
        ({"threshold": -1}, "Received: threshold=-1.0"),
        ({"threshold": float("nan")}, "Received: threshold=nan"),
        ({"threshold": "big"}, "threshold must be a number. Received: threshold='big'"),
        ({"lower": 2.0, "upper": 1.0}, "lower must be < upper. Received: lower=2.0, upper=1.0"),
        ({"lower": 1.0, "upper": 1.0}, "lower must be < upper"),
        ({"lower": -1.0}, "lower and upper must be given together"),
        ({"gradient": "relu"}, "Received: gradient='relu'"),
        ({"lower": -1.0, "upper": 2.0, "learn_threshold": True}, "needs symmetric bounds"),
    ],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Truncation(**kwargs)


def test_works_in_sequential_and_subclassed_models():
    seq = keras.Sequential([keras.Input((3,)), Truncation(1.0)])
    np.testing.assert_array_equal(seq(np.array([[-2, 0, 2]], np.float32)), [[-1, 0, 1]])

    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.tlu = Truncation(0.5)

        def call(self, x):
            return self.tlu(x) * 2

    np.testing.assert_array_equal(Net()(np.array([[-2, 0.25, 2]], np.float32)), [[-1, 0.5, 1]])


def test_truncate_function_matches_numpy_clip():
    x = np.array([-9, 0, 9], np.float32)
    np.testing.assert_array_equal(np.asarray(truncate(x, -1.0, 1.0)), [-1, 0, 1])


@pytest.mark.parametrize("gradient", ["ste", "clip"])
def test_tflite_inventory_is_one_minimum_and_one_maximum(gradient):
    inputs = keras.Input((16, 16, 1))
    outputs = Truncation(3.0, gradient=gradient)(inputs)
    ops = _tflite_ops(keras.Model(inputs, outputs))
    assert sorted(ops) == ["MAXIMUM", "MINIMUM"]


# ----------------------------------------------------------------------------- one-sided clips


def test_one_sided_bounds_clip_one_side_only():
    inf = float("inf")
    x = np.array([np.nan, np.inf, -np.inf, 3e38, -3e38, 2.5, 8, 9], np.float32)
    below = np.asarray(Truncation(lower=-inf, upper=8.0)(x))
    np.testing.assert_array_equal(below, np.array([np.nan, 8, -np.inf, 8, -3e38, 2.5, 8, 8],
                                                  np.float32))
    above = np.asarray(Truncation(lower=-1.0, upper=inf)(x))
    np.testing.assert_array_equal(above, np.array([np.nan, np.inf, -1, 3e38, -1, 2.5, 8, 9],
                                                  np.float32))


def test_one_sided_round_trip_and_gradient(tmp_path):
    layer = Truncation(lower=-float("inf"), upper=8.0, gradient="clip", name="dct_trunc")
    config = layer.get_config()
    assert (config["lower"], config["upper"], config["threshold"]) == (-np.inf, 8.0, None)
    assert Truncation.from_config(config).bounds == (-np.inf, 8.0)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, layer(inputs))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    assert loaded.get_layer("dct_trunc").bounds == (-np.inf, 8.0)
    np.testing.assert_array_equal(_grad(layer, np.array([-1e30, 0.0, 8.0, 9.0], np.float32)),
                                  [1, 2, 3, 0])


@pytest.mark.parametrize("kwargs, message", [
    ({"lower": float("inf"), "upper": 3.0}, "lower must be finite or -inf. Received: lower=inf"),
    ({"lower": -1.0, "upper": -float("inf")}, "upper must be finite or inf. Received: upper=-inf"),
    ({"lower": -float("inf"), "upper": float("inf")}, "cannot both be infinite"),
    ({"lower": float("nan"), "upper": 1.0}, "lower must be a number, not NaN"),
    ({"lower": "-inf"}, "one of them may be infinite"),
    ({"lower": float("inf")}, "lower must be finite or -inf. Received: lower=inf"),
    ({"upper": -float("inf")}, "upper must be finite or inf. Received: upper=-inf"),
])
def test_impossible_one_sided_bounds(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        Truncation(**kwargs)
    assert len(str(info.value).splitlines()) == 1


@pytest.mark.parametrize("bounds, ops", [((-np.inf, 8.0), ["MINIMUM"]),
                                         ((-1.0, np.inf), ["MAXIMUM"])])
def test_one_sided_tflite_inventory_is_one_op(bounds, ops):
    inputs = keras.Input((16, 16, 1))
    outputs = Truncation(lower=bounds[0], upper=bounds[1])(inputs)
    assert _tflite_ops(keras.Model(inputs, outputs)) == ops
