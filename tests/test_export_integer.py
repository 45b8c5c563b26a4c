"""Full-integer TFLite (`int8-full`): int8 input and output, no float tensor, exact pixel input,
exactly stored fixed filters, target-aware pass lists, refusal of what has no int8 kernel."""

import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from edgetrunc.errors import InputError  # noqa: E402
from edgetrunc.export import convert, export_tflite, find_truncations, inspect_tflite  # noqa: E402
from edgetrunc.export import tflite_ops  # noqa: E402
from edgetrunc.export.tflite import graph as tg  # noqa: E402
from edgetrunc.export.tflite.integer import float_tensors  # noqa: E402
from edgetrunc.layers import Truncation  # noqa: E402
from edgetrunc.models._filters import exact_steps, high_pass_bank  # noqa: E402

SIZE = 32  # the side of the `model` and `calibration` fixtures (conftest)


@pytest.fixture(scope="module")
def full(model, calibration):
    """The full-integer artifact of integer-only targets (no CPU packing)."""
    applied = []
    content = export_tflite(model, "int8-full", calibration=calibration, applied=applied,
                            target="ethos-u")
    return content, applied


def _graph(content):
    return tg.Graph(tg.read_model(content))


def test_every_tensor_is_integer_and_the_inspector_proves_it(model, full):
    content, applied = full
    graph = _graph(content)
    assert float_tensors(graph) == []
    report = inspect_tflite(content, find_truncations(model), "int8-full")
    assert report["integer"]["float_tensors"] == 0
    assert "float32" not in report["integer"]["tensor_types"]
    assert report["truncations"][0]["mapped_to"].endswith("int8 saturation")
    ops = tflite_ops(content)
    assert not {"DEQUANTIZE", "MINIMUM", "MAXIMUM", "SPACE_TO_DEPTH"} & set(ops)
    assert {"pin_pixel_input", "exact_filter_ranges", "exact_filter_weights"} <= set(applied)


def test_pixels_map_to_the_int8_input_without_loss(model, full):
    report = inspect_tflite(full[0], find_truncations(model), "int8-full")
    (inp,), (out,) = report["inputs"], report["outputs"]
    assert (inp["dtype"], inp["scale"], inp["zero_point"]) == ("int8", 1.0, -128)
    assert report["integer"]["output"].startswith("stego probability (SOFTMAX")  # post-training
    assert out["dtype"] == "int8"
    pixels = np.arange(256, dtype=np.float64)
    stored = np.round(pixels / inp["scale"]) + inp["zero_point"]
    assert stored.min() == -128 and stored.max() == 127
    assert np.array_equal((stored - inp["zero_point"]) * inp["scale"], pixels)


def test_the_kv_filter_is_stored_as_exact_integers(full):
    graph = _graph(full[0])
    kernel, _, _ = high_pass_bank("kv")
    (front,) = [op for op in graph.g.operators
                if "front_end" in graph.tensor_name(int(op.outputs[0]))]
    weights = graph.g.tensors[int(front.inputs[1])]
    stored = np.frombuffer(bytes(bytearray(graph.model.buffers[weights.buffer].data)), np.int8)
    assert np.allclose(weights.quantization.scale, 1 / 12)
    assert np.array_equal(stored.reshape(5, 5), np.round(kernel[:, :, 0, 0] * 12))
    out = graph.g.tensors[int(front.outputs[0])].quantization
    assert np.isclose(out.scale[0], 1 / 12) and out.zeroPoint[0] == 0


def test_an_exact_filter_feeding_the_truncation_directly_is_stored_exactly():
    """Ye-Net's pattern: the 30 SRM filters feed the truncation, whose int8 saturation renames
    their output tensor; their weights are still stored as exact integers of their steps."""
    from edgetrunc import models

    yenet = models.create("yenet", input_shape=(SIZE, SIZE, 1), width=0.25)
    pixels = np.random.default_rng(0).uniform(0, 255, (4, SIZE, SIZE, 1))
    graph = _graph(export_tflite(yenet, "int8-full", calibration=pixels, target="ethos-u"))
    kernel = yenet.get_layer("srm").get_weights()[0]  # [5, 5, 1, 30]
    (front,) = [op for op in graph.g.operators if int(op.inputs[0]) in set(graph.g.inputs)]
    weights = graph.g.tensors[int(front.inputs[1])]  # [30, 5, 5, 1]
    stored = np.frombuffer(bytes(bytearray(graph.model.buffers[weights.buffer].data)), np.int8)
    scale = np.asarray(weights.quantization.scale)
    assert np.allclose(scale, exact_steps(kernel, 3))
    restored = stored.reshape(30, 5, 5, 1) * scale[:, None, None, None]
    assert np.allclose(restored.transpose(1, 2, 3, 0), kernel, rtol=0, atol=1e-6)


def test_exact_steps_finds_the_largest_step_per_channel():
    kv, _, _ = high_pass_bank("kv")
    assert np.allclose(exact_steps(kv, 3), [1 / 12])
    srm = np.stack([np.array([[-1, 2, -1], [2, -4, 2], [-1, 2, -1]]) / 4,
                    np.array([[0, 0, 0], [1, -2, 1], [0, 0, 0]]) / 2], axis=-1)[:, :, None, :]
    assert np.allclose(exact_steps(srm, 3), [1 / 4, 1 / 2])
    trained = np.random.default_rng(0).normal(size=(5, 5, 1, 4))
    assert exact_steps(trained, 3) is None


def test_the_srm30_bank_is_thirty_distinct_exact_high_pass_filters():
    kernel, numerators, denominators = high_pass_bank("srm30")
    assert kernel.shape == (5, 5, 1, 30)
    assert len({numerators[..., i].tobytes() for i in range(30)}) == 30
    assert np.all(numerators.sum(axis=(0, 1, 2)) == 0)  # no DC: a residual of the pixels
    assert sorted(set(np.asarray(denominators).tolist())) == [1, 2, 3, 4, 12]
    steps = exact_steps(kernel, 3)  # each filter's int8 weights exact with its own step
    assert steps is not None and np.all(np.abs(kernel).max(axis=(0, 1, 2)) / steps <= 127)


@keras.saving.register_keras_serializable(package="edgetrunc_tests")
class Wave(keras.layers.Layer):
    """sin(x): TFLite has no int8 SIN kernel."""

    def call(self, x):
        return keras.ops.sin(x)


def _sine_model():
    inputs = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = Truncation(3.0, name="trunc")(x)
    x = Wave(name="wave")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))


def test_an_op_without_int8_kernel_is_named_in_one_line():
    calibration = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 1))
    with pytest.raises(InputError) as info:
        export_tflite(_sine_model(), "int8-full", calibration=calibration)
    message = str(info.value)
    assert "\n" not in message and message.startswith("layer 'wave': SIN has no int8 kernel")


@pytest.mark.slow
def test_target_drops_the_cpu_packing(model, calibration):
    cpu = export_tflite(model, "fp32")
    npu = export_tflite(model, "fp32", target="ethos-u")
    assert "SPACE_TO_DEPTH" in tflite_ops(cpu) and "SPACE_TO_DEPTH" not in tflite_ops(npu)
    with pytest.raises(InputError, match="target"):
        export_tflite(model, "fp32", target="gpu")


def test_the_cpu_target_packs_the_int8_front_end_bit_exactly(model, calibration, full):
    """`--target cpu` runs the int8 one-channel convolutions over 2x2 blocks (the same
    integer sums and requantization): every int8 output equals the unpacked artifact's."""
    from edgetrunc.runtime.tflite_runner import TFLiteRunner

    applied = []
    cpu = export_tflite(model, "int8-full", calibration=calibration, applied=applied)
    assert "pack_front_end" in applied and "pack_front_end" not in full[1]
    assert {"SPACE_TO_DEPTH", "DEPTH_TO_SPACE"} <= set(tflite_ops(cpu))
    assert float_tensors(_graph(cpu)) == []
    pixels = np.round(calibration[:4])
    for xnnpack in (True, False):  # XNNPACK and the built-in kernels
        runners = [TFLiteRunner(content, threads=1, use_xnnpack=xnnpack, preserve_all_tensors=True)
                   for content in (cpu, full[0])]
        packed, plain = (runner.infer(pixels) and runner.intermediates() for runner in runners)
        same = [name for name, value in plain.items()
                if name in packed and packed[name].shape == value.shape]
        assert any("group1_pool" in name for name in same) and "tlunet_1/gap_1/Mean" in same
        for name in same:  # every tensor both have, from the first pool to the output
            assert np.array_equal(packed[name], plain[name]), name


@pytest.mark.slow
def test_convert_records_full_integer_and_target(model, tmp_path):
    source = tmp_path / "tiny.keras"
    model.save(source)
    result = convert(source, tmp_path / "out", tflite=["int8-full"], onnx=[], target="ethos-u")
    (entry,) = result["artifacts"]
    assert entry["path"] == "tiny_int8-full.tflite" and entry["target"] == "ethos-u"
    assert entry["quantization"]["mode"] == "full-integer"
    assert entry["integer"]["float_tensors"] == 0
    assert "evaluation" in entry["quantization"]
    written = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert written["artifacts"][0]["target"] == "ethos-u"


def test_a_model_that_cannot_be_full_integer_leaves_no_file(tmp_path):
    source = tmp_path / "wave.keras"
    _sine_model().save(source)
    with pytest.raises(InputError, match="wave"):
        convert(source, tmp_path / "out", tflite=["int8-full"], onnx=[], evaluate=False,
                calibration="embedded")
    out = tmp_path / "out"
    assert not out.exists() or not [*out.glob("*.tflite"), *out.glob("manifest.json")]


def test_vela_places_every_operator_on_the_npu(full, tmp_path):
    pytest.importorskip("ethosu.vela")
    from edgetrunc.export.vela import vela_report

    path = tmp_path / "full.tflite"
    path.write_bytes(full[0])
    report = vela_report(path, "ethos-u55-256")
    assert report["cpu_operators"] == 0 and report["npu_percent"] == 100.0
    assert report["npu_operators"] > 0 and report["inference_ms"] > 0 and report["sram_kib"] > 0


def test_tflite_micro_runs_it_within_one_step_of_litert(full, calibration, tmp_path):
    pytest.importorskip("tflite_micro")
    from edgetrunc.runtime.micro import micro_check

    path = tmp_path / "full.tflite"
    path.write_bytes(full[0])
    report = micro_check(path, calibration[:4])
    assert report["runs"] and report["samples"] == 4
    assert report["max_step_difference"] <= 1
    assert report["arena_bytes"] > SIZE * SIZE * 8  # the widest activation is int8 32x32x8


def test_tflite_micro_refuses_a_float_input_in_one_line(model, tmp_path):
    pytest.importorskip("tflite_micro")
    from edgetrunc.runtime.micro import micro_check

    path = tmp_path / "fp32.tflite"
    path.write_bytes(export_tflite(model, "fp32", target="micro"))
    with pytest.raises(InputError, match="full-integer"):
        micro_check(path, np.zeros((1, SIZE, SIZE, 1), np.float32))


def test_the_runtime_feeds_pixels_and_reads_probabilities(full, calibration):
    from edgetrunc.runtime.tflite_runner import TFLiteRunner

    runner = TFLiteRunner(full[0])
    (inp,) = runner.metadata().inputs
    assert (inp.dtype, inp.scale, inp.zero_point) == ("int8", 1.0, -128)
    (out,) = runner.infer(calibration[:3]).values()
    assert out.dtype == np.float32 and out.shape == (3, 2)
    assert np.all((out >= 0) & (out <= 1)) and np.allclose(out.sum(axis=1), 1, atol=2 / 256)


def test_targets_command_reports_vela_and_micro(full, tmp_path, cli):
    pytest.importorskip("ethosu.vela")
    pytest.importorskip("tflite_micro")
    path = tmp_path / "full.tflite"
    path.write_bytes(full[0])
    code, out, _ = cli("targets", str(path), "--accelerators", "ethos-u55-256", "--samples", "2", "--json")
    report = json.loads(out)
    assert code == 0 and report["passed"]
    assert report["vela"][0]["cpu_operators"] == 0 and report["micro"]["runs"]


def test_an_integer_model_is_profiled_per_op_from_pixels(full, tmp_path):
    from edgetrunc.runtime.profile import profile_artifact

    path = tmp_path / "full.tflite"
    path.write_bytes(full[0])
    report = profile_artifact(path, runs=2, warmup=1)
    kinds = [row["type"] for row in report["ops"]]
    assert kinds[0] == "CONV_2D" and "TANH" in kinds and report["total_ms"] > 0
    assert len(kinds) == len(_graph(full[0]).g.operators)
