"""Quantization-aware training in keras.ops: fake-quant layers, their placement, and the
full-integer artifact computing what the fine-tuned Keras model simulated."""

import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from edgetrunc.export import export_tflite, inspect_tflite  # noqa: E402
from edgetrunc.keras.fake_quant import FakeQuant, QuantizedConv2D, fake_quant_weights  # noqa: E402
from edgetrunc.keras.load import load_keras_model  # noqa: E402
from edgetrunc.keras.qat import calibrate_ranges, export_ready, fake_quant_plan  # noqa: E402
from edgetrunc.keras.qat import quantization_aware  # noqa: E402
from edgetrunc.keras.activation import output_activation  # noqa: E402
from edgetrunc.keras.qat import logit_weights, quantize_model  # noqa: E402
from edgetrunc.models import create  # noqa: E402
from edgetrunc.runtime.tflite_runner import TFLiteRunner  # noqa: E402
from edgetrunc.train.qat import fine_tune_qat  # noqa: E402

SIZE = 32


@pytest.fixture(scope="module")
def pixels():
    return np.random.default_rng(0).integers(0, 256, (16, SIZE, SIZE, 1)).astype(np.float32)


def test_fake_quant_rounds_to_the_int8_grid_and_round_trips():
    layer = FakeQuant((-3.0, 3.0), name="fq")
    x = np.linspace(-5, 5, 101, dtype=np.float32)[None]
    y = np.asarray(layer(x))
    step = 6.0 / 255
    assert np.allclose(np.round(y / step), y / step, atol=1e-3)
    assert y.min() >= -3.02 and y.max() <= 3.02
    clone = FakeQuant.from_config(layer.get_config())
    assert clone.fixed == [-3.0, 3.0]
    with pytest.raises(ValueError, match="fixed must be"):
        FakeQuant((1.0, -1.0))


def test_weights_are_quantized_per_output_channel():
    kernel = np.random.default_rng(1).normal(size=(3, 3, 2, 4)).astype(np.float32)
    quantized = np.asarray(fake_quant_weights(kernel, -1))
    step = np.abs(kernel).max(axis=(0, 1, 2)) / 127
    assert np.allclose(np.round(quantized / step), quantized / step, atol=1e-3)
    assert np.allclose(np.abs(quantized).max(axis=(0, 1, 2)), np.abs(kernel).max(axis=(0, 1, 2)))


def test_fake_quant_goes_where_the_converter_writes_int8_tensors():
    plan = fake_quant_plan(create("tlunet", input_shape=(SIZE, SIZE, 1), seed=0))
    assert np.allclose(plan["front_end"], (-128 / 12, 127 / 12))  # the exact KV residual
    assert plan["group1_truncation"] == (-3.0, 3.0)
    assert plan["group1_tanh"] == (-1.0, 127 / 128)
    assert plan["classifier"] == "tracked"  # the stego logit, the artifact's int8 output
    assert plan["group2_bn"] == plan["group3_relu"] == "tracked"
    assert plan["gap"] == "tracked"  # the converter's MEAN gets a range of its own
    for fused in ("group1_conv", "group1_pool", "group2_conv", "group3_bn", "group2_pool"):
        assert fused not in plan


@pytest.mark.slow
def test_qat_model_loads_in_safe_mode_and_converts_to_what_it_simulates(pixels, tmp_path):
    model = create("tlunet", input_shape=(SIZE, SIZE, 1), seed=0)
    qat = quantize_model(model, pixels)
    assert isinstance(qat.get_layer("group2_conv"), QuantizedConv2D)
    assert qat.get_layer("front_end").exact_weights
    features = keras.Model(model.inputs, model.get_layer("classifier").input).predict(pixels, verbose=0)
    kernel, bias = logit_weights(model.get_layer("classifier"))
    stego = model.predict(pixels, verbose=0)[:, 1]
    assert np.allclose(1 / (1 + np.exp(-(features @ kernel + bias)[:, 0])), stego, atol=1e-5)
    head = qat.get_layer("classifier").get_weights()  # the clone's output is the stego logit
    assert np.allclose(head[0], kernel) and np.allclose(head[1], bias)
    qat.compile(optimizer=keras.optimizers.Adam(1e-4),
                loss=keras.losses.BinaryCrossentropy(from_logits=True))
    qat.fit(pixels, (np.arange(16) % 2)[:, None].astype(np.float32), epochs=1, batch_size=8, verbose=0)
    calibrate_ranges(qat, pixels)
    qat.save(tmp_path / "qat.keras")
    loaded = load_keras_model(tmp_path / "qat.keras", safe_mode=True)
    assert quantization_aware(loaded) and output_activation(loaded) == "linear"
    simulated = loaded.predict(pixels, verbose=0)[:, 0]  # the stego logit, on its int8 grid
    content = export_tflite(loaded, "int8-full", calibration=pixels)
    assert inspect_tflite(content, [], "int8-full")["integer"]["output"].startswith("stego logit")
    runner = TFLiteRunner(content)
    (out,) = runner.metadata().outputs
    assert out.dtype == "int8" and runner.metadata().output_activation == "linear"
    (artifact,) = runner.infer(pixels).values()
    probability = [1 / (1 + np.exp(-v)) for v in (artifact[:, 0], simulated)]
    steps = np.abs(probability[0] - probability[1]) * 256  # in steps of an int8 softmax output
    assert steps.max() <= 2.0
    clear = np.abs(probability[1] - 0.5) > 2 / 256  # decisions not within the step error
    assert np.array_equal(artifact[clear, 0] >= 0, simulated[clear] >= 0)


def test_init_without_qat_is_refused_in_one_line(cli, tmp_path):
    code, _, err = cli("train", "--init", tmp_path / "m.keras", "--out", tmp_path / "o.keras")
    assert code == 2 and "--init: fine-tuning an existing model is quantization-aware" in err


@pytest.mark.slow
def test_train_qat_fine_tunes_a_model_file(cli, tmp_path):
    source = tmp_path / "tiny.keras"
    create("tlunet", input_shape=(SIZE, SIZE, 1), seed=0).save(source)
    out = tmp_path / "tiny_qat.keras"
    code, text, _ = cli("train", "--qat", "--init", source, "--out", out, "--qat-epochs", "1",
                        "--qat-pairs", "4")
    assert code == 0 and "quantization-aware model" in text and "before fine-tuning" in text
    assert quantization_aware(load_keras_model(out, safe_mode=True))
    held_out = json.loads((tmp_path / "tiny_qat.qat.json").read_text())["held_out"]
    assert 0 <= held_out["decision_agreement_before_fine_tuning"] <= 1


@pytest.mark.slow
def test_a_fine_tuning_that_leaves_the_float_decisions_is_warned_of_in_one_line(tmp_path, capsys):
    """At a learning rate far too high the fine-tuned model decides unlike the float one
    (on this untrained tlunet, 0.82 of the held-out tiles agree before, 0.25 after)."""
    source = tmp_path / "tiny.keras"
    create("tlunet", input_shape=(SIZE, SIZE, 1), seed=0).save(source)
    record = fine_tune_qat(source, tmp_path / "tiny_qat.keras", epochs=1, max_pairs=8, lr=1.0)
    held_out = record["held_out"]
    assert held_out["decision_agreement_with_float"] < min(
        held_out["decision_agreement_before_fine_tuning"], 0.98)
    (line,) = [l for l in capsys.readouterr().err.splitlines() if "lowered" in l]
    assert "try a lower --qat-lr than 1" in line


def test_a_fixed_bank_of_different_steps_computes_exactly_as_the_converter_stores_it():
    model = create("tlunet", input_shape=(SIZE, SIZE, 1), front_end="srm6", seed=0)
    qat = quantize_model(model)
    assert qat.get_layer("front_end").exact_weights  # steps 1/12, 1/4, 1/2 per filter
    assert not qat.get_layer("group1_conv").exact_weights
    assert fake_quant_plan(model)["front_end"] == "tracked"  # no one step: a calibrated range
    plain = export_ready(qat)  # the converter takes no tracked FakeQuant: it calibrates itself
    assert not [layer.name for layer in plain.layers if isinstance(layer, FakeQuant)]
