"""Truncation variants from public code: one-sided clips through export, probes, the Lambda
probe and migrate (fixtures of `scripts/make_variant_fixtures.py`, written by Keras 2); a
threshold under a class's own config key."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("tf2onnx")
pytest.importorskip("onnxruntime")

from edgetrunc import Truncation  # noqa: E402
from edgetrunc.errors import InputError  # noqa: E402
from edgetrunc.export import export_onnx, export_tflite, find_truncations  # noqa: E402
from edgetrunc.export import inspect_onnx, inspect_tflite, tflite_ops  # noqa: E402
from edgetrunc.export.onnx.graph import Graph, load_onnx_proto  # noqa: E402
from edgetrunc.migrate import migrate  # noqa: E402
from edgetrunc.migrate.probe import probe_lambda  # noqa: E402
from edgetrunc.parity.probes import probe_values, run_probes  # noqa: E402
from edgetrunc.runtime import ONNXRunner, TFLiteRunner  # noqa: E402
from edgetrunc.runtime.metadata import onnx_ops  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "variants"
MANIFEST = json.loads((FIXTURES / "MANIFEST.json").read_text())
INF = math.inf


@pytest.fixture(scope="module")
def one_sided():
    """conv -> min(x, 8) -> conv -> max(x, -1) -> pool -> softmax."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(inputs)
    x = Truncation(lower=-INF, upper=8.0, name="dct_trunc")(x)
    x = keras.layers.Conv2D(4, 3, padding="same")(x)
    x = Truncation(lower=-1.0, upper=INF, name="floor")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))


@pytest.fixture(scope="module")
def calibration():
    return np.random.default_rng(0).uniform(0, 25, (8, 16, 16, 1)).astype(np.float32)


def _keras(model, x):
    return np.asarray(model(x))


def test_tflite_one_sided_is_one_op_each_and_matches_keras(one_sided, calibration):
    truncations = find_truncations(one_sided)
    content = export_tflite(one_sided, "fp32")
    ops = tflite_ops(content)
    assert ops["MINIMUM"] == 1 and ops["MAXIMUM"] == 1
    mapped = [t["mapped_to"] for t in inspect_tflite(content, truncations, "fp32")["truncations"]]
    assert mapped == ["MINIMUM", "MAXIMUM"]
    got = next(iter(TFLiteRunner(content).infer(calibration).values()))
    np.testing.assert_allclose(got, _keras(one_sided, calibration), atol=1e-6)


def test_tflite_int8_finite_bound_is_the_range_edge(one_sided, calibration):
    truncations = find_truncations(one_sided)
    content = export_tflite(one_sided, "int8", calibration=calibration)
    ops = tflite_ops(content)
    assert "MINIMUM" not in ops and "MAXIMUM" not in ops
    report = inspect_tflite(content, truncations, "int8")  # checks the finite edge
    assert all("int8 saturation" in t["mapped_to"] for t in report["truncations"])


def test_onnx_one_sided_is_one_clip_with_one_bound(one_sided, calibration):
    truncations = find_truncations(one_sided)
    proto = export_onnx(one_sided, "fp32")
    assert onnx_ops(proto)["Clip"] == 2 and "Min" not in onnx_ops(proto)
    clips = Graph(load_onnx_proto(proto)).clip_candidates()
    assert [(c.lower, c.upper) for c in clips] == [(-INF, 8.0), (-1.0, INF)]
    assert len(clips[0].ops[0].input) == 3  # the open side is an explicit -inf
    inspect_onnx(proto, truncations, "fp32")
    got = next(iter(ONNXRunner(proto.SerializeToString()).infer(calibration).values()))
    np.testing.assert_allclose(got, _keras(one_sided, calibration), atol=1e-6)


def test_onnx_int8_one_sided_range_ends_at_the_bound(one_sided, calibration):
    truncations = find_truncations(one_sided)
    proto = export_onnx(one_sided, "int8", calibration=calibration)
    report = inspect_onnx(proto, truncations, "int8")  # the finite edge within half a step
    assert len(report["truncations"]) == 2
    got = next(iter(ONNXRunner(proto.SerializeToString()).infer(calibration).values()))
    assert np.all(np.isfinite(got))


def test_probes_cover_inf_on_the_open_side(one_sided):
    labels = [label for label, _ in probe_values(-INF, 8.0)]
    assert "+T" in labels and "-T" not in labels and "-inf" in labels and "+inf" in labels
    results = run_probes(one_sided, [("tflite", "fp32"), ("onnx", "fp32")])
    assert {r.layer for r in results} == {"dct_trunc", "floor"}
    for r in results:
        assert r.error is None and r.value_deviations == 0, (r.layer, r.backend, r.values)
        got = {v["input"]: v["got"] for v in r.values}
        if r.layer == "dct_trunc":
            assert got["-inf"] == "-inf" and got["+inf"] == 8.0
        else:
            assert got["+inf"] == "inf" and got["-inf"] == -1.0


def _lambda_on(fn, shape=(6, 5, 2)):
    layer = keras.layers.Lambda(fn)
    layer(keras.Input(shape))
    return layer


@pytest.mark.parametrize("fn, lower, upper", [
    (lambda x: -(keras.ops.relu(-x + 8) - 8), -INF, 8.0),  # ALASKA2 DCT_Trunc
    (lambda x: keras.ops.minimum(x, 8.0), -INF, 8.0),
    (lambda x: keras.ops.maximum(x, -2.5), -2.5, INF),
])
def test_probe_finds_one_sided_clips(fn, lower, upper):
    verdict = probe_lambda(_lambda_on(fn))
    assert verdict.is_clip, verdict.note
    assert (verdict.lower, verdict.upper, verdict.gradient) == (lower, upper, "clip")
    assert verdict.truncation_kwargs() == {"lower": lower, "upper": upper, "gradient": "clip"}


@pytest.mark.parametrize("fn, note", [
    (lambda x: keras.ops.relu(x), "ReLU"),
    (lambda x: x * 2, "saturates on neither side"),
    (lambda x: keras.ops.minimum(x, 8.0) + 1e-3, "where clip(x, -inf, 8.001)"),
])
def test_probe_rejects_what_only_looks_one_sided(fn, note):
    verdict = probe_lambda(_lambda_on(fn))
    assert not verdict.is_clip and note in verdict.note, verdict.note


def _expected(name):
    return np.asarray(MANIFEST[name]["keras2_output"], np.float32)


def _sample():
    return np.random.default_rng(1).integers(0, 256, (2, 32, 32, 1)).astype("float32")


def test_xunet_dct_trunc_lambda_migrates_and_exports_one_minimum(tmp_path):
    out = tmp_path / "xunet.keras"
    report = migrate(FIXTURES / "xunet_trunc.hdf5", out, trust_lambda=True, op_inventory=False)
    (layer,) = report["layers"]
    assert (layer["layer"], layer["lower"], layer["upper"]) == ("DCT_Trunc", -INF, 8.0)
    model = keras.saving.load_model(out, safe_mode=True)
    np.testing.assert_allclose(_keras(model, _sample()), _expected("xunet_trunc.hdf5"),
                               atol=1e-5)
    (t,) = find_truncations(model)
    assert (t["lower"], t["upper"]) == (-INF, 8.0)
    ops = tflite_ops(export_tflite(model, "fp32"))
    assert ops["MINIMUM"] == 1 and "MAXIMUM" not in ops and "NEG" not in ops


def test_xunet_abs_beside_dct_trunc_migrates_safe_and_converts_one_minimum(tmp_path):
    """ALASKA2's Xu-Net pattern: Lambda(ABS) beside the one-sided DCT_Trunc Lambda; the ABS
    becomes a serializable Elementwise layer, DCT_Trunc a Truncation with an open lower side."""
    out = tmp_path / "xunet_abs.keras"
    report = migrate(FIXTURES / "xunet_abs_trunc.hdf5", out, trust_lambda=True, op_inventory=False)
    assert [(t["layer"], t["lower"], t["upper"]) for t in report["layers"]
            if t.get("upper") is not None] == [("DCT_Trunc", -INF, 8.0)]
    model = keras.saving.load_model(out, safe_mode=True)
    assert not any(type(layer).__name__ == "Lambda" for layer in model.layers)
    np.testing.assert_allclose(_keras(model, _sample()), _expected("xunet_abs_trunc.hdf5"),
                               atol=1e-5)
    ops = tflite_ops(export_tflite(model, "fp32"))
    assert ops["MINIMUM"] == 1 and ops["ABS"] == 1 and "MAXIMUM" not in ops and "NEG" not in ops


def test_lone_tf_minimum_op_layer_maps_to_one_sided_truncation(tmp_path):
    out = tmp_path / "tfop_min.keras"
    report = migrate(FIXTURES / "tfop_min.h5", out, op_inventory=False)
    (layer,) = report["layers"]
    assert (layer["verdict"], layer["lower"], layer["upper"]) == ("mapped", -INF, 8.0)
    model = keras.saving.load_model(out, safe_mode=True)
    np.testing.assert_allclose(_keras(model, _sample()), _expected("tfop_min.h5"), atol=1e-5)


def test_class_threshold_under_its_own_key(tmp_path, cli):
    out = tmp_path / "tlu.keras"
    code, _, err = cli("migrate", FIXTURES / "tlu_th.h5", "--out", out, "--truncation-class",
                       "TLU")
    assert code == 0, err
    model = keras.saving.load_model(out, safe_mode=True)
    assert model.get_layer("tlu").bounds == (-3.0, 3.0)
    np.testing.assert_allclose(_keras(model, _sample()), _expected("tlu_th.h5"), atol=1e-5)


def test_class_threshold_says_which_key_in_one_line(tmp_path, cli):
    code, out, err = cli("migrate", FIXTURES / "tlu_th.h5", "--out", tmp_path / "t.keras",
                         "--truncation-class", "TLU")
    assert code == 0, err
    lines = [line for line in out.splitlines() if "its config key 'th' = 3" in line]
    assert len(lines) == 1 and "[-3, 3]" in lines[0], out


def test_class_with_several_numbers_is_refused_with_their_values(tmp_path):
    with pytest.raises(InputError) as info:
        migrate(FIXTURES / "tlu_two.h5", tmp_path / "t.keras", op_inventory=False,
                truncation_classes={"TLU": None})
    message = str(info.value)
    assert "alpha=0.5, th=3" in message and "--truncation-class TLU=T" in message
    assert len(message.splitlines()) == 1


# ----------------------------------------------------------------------------- all blockers at once

BLOCKERS = ["uses the activation function 'tlu'", "--truncation-class tlu=T",
            "class 'TLU'", "custom_objects={'TLU': TLU}", "op layer (tf.nn.softsign)"]


@pytest.mark.parametrize("command, options, first", [
    ("migrate", ["--trust-lambda"], "reads the global name(s) SCALE"),
    ("convert", [], "Lambda layer(s) (scale)"),
])
def test_every_blocker_of_a_file_in_one_message(command, options, first, tmp_path, cli):
    path = FIXTURES / "blockers.h5"
    out = tmp_path / ("b.keras" if command == "migrate" else "out")
    code, _, err = cli(command, path, "--out", out, *options)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 4 and "Traceback" not in err, err
    assert all(line.startswith(f"edgetrunc {command}: error: {path}: ") for line in lines), err
    assert first in lines[0]
    for fragment in BLOCKERS:
        assert sum(fragment in line for line in lines) == 1, (fragment, err)
    # a tf.keras 2 .h5 stores the bare class name: registering the class would not help
    assert "register_keras_serializable" not in err
    assert not out.exists()


def test_untrusted_code_is_refused_from_the_config_alone(tmp_path, cli):
    code, _, err = cli("migrate", FIXTURES / "blockers.h5", "--out", tmp_path / "b.keras")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "--trust-lambda" in lines[0], err


def test_wrong_class_name_and_unknown_class_together(tmp_path, cli):
    path = FIXTURES / "tlu_th.h5"
    code, _, err = cli("migrate", path, "--out", tmp_path / "x.keras", "--truncation-class",
                       "Nowhere")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 2, err
    assert "--truncation-class Nowhere" in lines[0] and "class 'TLU'" in lines[1]
    assert all(f"{path}: " in line for line in lines)


# ----------------------------------------------------------------------------- warnings, help


def test_skipped_photos_warning_once_per_run(capsys):
    from edgetrunc import _log
    from edgetrunc.data.covers import embedded_covers

    _log.new_run()
    for _ in range(3):  # convert and parity read the covers several times in one run
        embedded_covers(min_size=512)
    err = capsys.readouterr().err
    assert err.count("smaller than the 512x512 model input") == 1, err
    _log.new_run()
    embedded_covers(min_size=512)
    assert capsys.readouterr().err.count("smaller than the 512x512") == 1


@pytest.mark.parametrize("command", ["parity", "train", "convert", "infer", "evaluate", "bench",
                                     "migrate", "run"])
def test_help_texts_do_not_fix_the_geometry(command, capsys):
    from edgetrunc.cli import main

    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "on 256x256 inputs" not in text and "on 256x256 cover" not in text


# ----------------------------------------------------------------------------- int8 per-layer inputs


def _input_set(names):
    from types import SimpleNamespace

    x = np.arange(len(names), dtype=np.float32).reshape(-1, 1, 1, 1)
    return SimpleNamespace(x=x, names=names)


def test_int8_per_layer_inputs_stay_in_the_calibration_domain():
    from edgetrunc.parity.check import per_layer_batch

    data = _input_set(["random#0", "cover a", "random#1", "stego a", "cover b"])
    warnings = []
    assert per_layer_batch(data, "fp32", 2, "m.tflite", warnings).ravel().tolist() == [0, 1]
    assert per_layer_batch(data, "int8", 2, "m.tflite", warnings).ravel().tolist() == [1, 3]
    assert warnings == []
    only_random = _input_set(["random#0", "random#1"])
    assert per_layer_batch(only_random, "int8", 8, "m.tflite", warnings).shape[0] == 2
    (line,) = warnings
    assert "m.tflite" in line and "calibration domain" in line and "inputs=covers" in line
    from edgetrunc.errors import flags_named  # the library names the parameter, the CLI its flag

    assert "--inputs covers" in flags_named(line, {"inputs": "--inputs"})


# ----------------------------------------------------------------------------- int8 that pays


@pytest.mark.slow
def test_convert_times_int8_against_fp32_and_says_when_it_is_slower(one_sided, tmp_path,
                                                                      capsys):
    from edgetrunc.export.conversion import convert

    source = tmp_path / "m.keras"
    keras.Model(one_sided.inputs, one_sided.outputs).save(source)
    manifest = convert(source, tmp_path / "out", tflite=("fp32", "int8"), onnx=("fp32", "int8"),
                       evaluate=False)
    err = capsys.readouterr().err
    for entry in manifest["artifacts"]:
        speed = (entry["quantization"] or {}).get("speed")
        if entry["precision"] != "int8":
            assert speed is None
            continue
        assert speed["threads"] == 1 and speed["runs"] >= 3
        assert speed["pays"] == (speed["int8_speedup"] >= 1.0)
        if entry["format"] == "onnx":  # what onnxruntime fused: int8 kernels, float leftovers
            assert speed["kernels"]["int8"].get("QLinearConv", 0) >= 1
            assert set(speed["kernels"]) == {"int8", "float_between_qdq"}
        assert (f"{entry['path']} is slower than" in err) == (not speed["pays"])
    written = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [a.get("quantization") for a in written["artifacts"]] == [
        a.get("quantization") for a in manifest["artifacts"]]
    assert '"-inf"' in (tmp_path / "out" / "manifest.json").read_text()  # strict JSON
    again = convert(source, tmp_path / "again", tflite=("fp32", "int8"), onnx=(),
                    evaluate=False, speed=False)
    assert "speed" not in again["artifacts"][1]["quantization"]


def test_onnx_int8_falls_back_to_uint8_where_int8_convs_stay_float(one_sided, calibration,
                                                                   monkeypatch):
    """onnxruntime fuses int8-activation Convs only on some CPUs: where it leaves one float,
    the uint8-activation graph (fused everywhere) is kept; the inspector checks its ranges."""
    import onnx

    from edgetrunc.export import speed

    def kernels(model):  # this machine, as one without signed int8 Conv kernels
        model = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
        unsigned = any(i.data_type == onnx.TensorProto.UINT8 for i in model.graph.initializer
                       if i.name.endswith("zero_point"))
        return {"int8": {}, "float_between_qdq": {} if unsigned else {"Conv": 2}}

    monkeypatch.setattr(speed, "onnx_kernels", kernels)
    applied = []
    proto = export_onnx(one_sided, "int8", calibration=calibration, applied=applied)
    assert applied[-1] == "uint8_activations"
    assert any(i.data_type == onnx.TensorProto.UINT8 for i in proto.graph.initializer
               if i.name.endswith("zero_point"))
    inspect_onnx(proto, find_truncations(one_sided), "int8")
    got = next(iter(ONNXRunner(proto.SerializeToString()).infer(calibration).values()))
    monkeypatch.undo()
    signed = export_onnx(one_sided, "int8", calibration=calibration)
    same = next(iter(ONNXRunner(signed.SerializeToString()).infer(calibration).values()))
    np.testing.assert_allclose(got, same, atol=0.02)  # the same ranges, other zero points
