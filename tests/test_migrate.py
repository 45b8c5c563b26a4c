"""edgetrunc migrate: legacy Lambda truncations become Truncation layers, safely.

The two answers are written as a Keras 3 user writes them today: the first as a saved
`lambda` (its `functools.partial` form cannot be saved), also with `tf.` inside (the
NameError case), the second (`K.switch`) ported to `tf.where` with an explicit output
shape. Each is saved, migrated, reloaded in safe mode and compared with the original.
"""

import functools
import json
import os
import zipfile

import h5py
import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from edgetrunc import Truncation  # noqa: E402
from edgetrunc.cli import main  # noqa: E402
from edgetrunc.errors import InputError  # noqa: E402
from edgetrunc.legacy import LegacyBackend, load_legacy_model  # noqa: E402
from edgetrunc.migrate import migrate, probe_lambda  # noqa: E402

T = 3.0
K = LegacyBackend()  # the saved K.switch lambda below reads `K` as a global, as Keras 2 code did
GLOBAL_THRESHOLD = 2.0  # a script global: a lambda reading it cannot load without --define


def tlu(x, T=3):
    return x + keras.ops.stop_gradient(keras.ops.clip(x, -T, T) - x)


def first_answer(threshold):
    return lambda x: x + keras.ops.stop_gradient(keras.ops.clip(x, -threshold, threshold) - x)


def first_answer_tf(threshold):
    return lambda x: x + tf.stop_gradient(tf.clip_by_value(x, -threshold, threshold) - x)


def second_answer(threshold):
    return lambda x: tf.where(x > threshold, threshold * tf.ones_like(x),
                              tf.where(x < -threshold, -threshold * tf.ones_like(x), x))


def keras2_switch_answer(threshold):
    return lambda x: K.switch(x > threshold, threshold * K.ones_like(x),
                              K.switch(x < -threshold, -threshold * K.ones_like(x), x))


def detector_block(truncation, shape=(16, 16, 1), output_shape=None, extra=None, seed=0):
    """Conv -> Lambda truncation -> tanh -> BatchNorm [-> extra Lambda], non-trivial weights."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape, name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = keras.layers.Lambda(truncation, output_shape=output_shape, name="tlu")(x)
    x = keras.layers.Activation("tanh", name="tanh")(x)
    bn = keras.layers.BatchNormalization(name="bn")
    x = bn(x)
    if extra is not None:
        x = keras.layers.Lambda(extra, name="double")(x)
    model = keras.Model(inputs, x)
    rng = np.random.default_rng(seed)
    bn.set_weights([rng.uniform(0.5, 2, 4), rng.normal(0, 1, 4), rng.normal(0, 0.2, 4),
                    rng.uniform(0.5, 2, 4)])
    return model


def pixels(shape, seed=1):
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.float32)


def run_cli(*args, capsys=None):
    rc = main(["-q", "migrate", *map(str, args)])
    captured = capsys.readouterr() if capsys is not None else None
    return rc, captured


# ----------------------------------------------------------------------------- the answers

ANSWERS = {
    # name: (lambda factory, input shape, output_shape, expected gradient, exact legacy clip)
    "first": (first_answer, (16, 16, 1), None, "ste", False),
    "first_tf": (first_answer_tf, (16, 16, 1), None, "ste", False),
    "second": (second_answer, (None, None, 1), lambda shape: shape, "clip", True),
}


@pytest.fixture(scope="module")
def migrated_answers(tmp_path_factory):
    results = {}
    for name, (factory, shape, output_shape, _, _) in ANSWERS.items():
        folder = tmp_path_factory.mktemp(name)
        legacy_path = folder / "legacy.keras"
        model = detector_block(factory(T), shape=shape, output_shape=output_shape)
        model.save(legacy_path)
        out = folder / "migrated.keras"
        report = migrate(legacy_path, out, trust_lambda=True)
        results[name] = (model, legacy_path, out, report)
    return results


def test_first_answer_as_written_cannot_be_saved_in_keras3(tmp_path):
    model = detector_block(functools.partial(tlu, T=3))
    with pytest.raises(TypeError, match="Cannot serialize object functools.partial"):
        model.save(tmp_path / "partial.keras")


@pytest.mark.slow
def test_saved_tf_lambda_needs_the_globals_migrate_gives(migrated_answers, tmp_path):
    with_shape = tmp_path / "with_shape.keras"
    detector_block(second_answer(T), output_shape=(16, 16, 4)).save(with_shape)
    plain = keras.saving.load_model(with_shape, safe_mode=False)
    with pytest.raises(NameError, match="'tf' is not defined"):
        plain(pixels((1, 16, 16, 1)))

    _, without_shape, _, _ = migrated_answers["first_tf"]  # shape inference runs the lambda
    with pytest.raises(NotImplementedError, match="infer the shape"):
        keras.saving.load_model(without_shape, safe_mode=False)

    for path in (with_shape, without_shape):
        trusted = load_legacy_model(path, trust_lambda=True)
        assert np.all(np.isfinite(np.asarray(trusted(pixels((1, 16, 16, 1))))))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ANSWERS))
def test_answer_is_migrated_to_truncation_and_reloads_in_safe_mode(name, migrated_answers):
    _, _, _, gradient, exact = ANSWERS[name]
    original, _, out, report = migrated_answers[name]
    (layer,) = report["layers"]
    assert (layer["layer"], layer["verdict"], layer["replaced"]) == ("tlu", "clip", True)
    assert (layer["lower"], layer["upper"], layer["gradient"]) == (-3.0, 3.0, gradient)
    assert layer["exact"] is exact
    assert report["written"] and report["kept"] == []
    assert report["safe_mode"] == "loads with safe_mode=True"

    migrated = keras.saving.load_model(out, safe_mode=True)
    truncation = migrated.get_layer("tlu")
    assert isinstance(truncation, Truncation)
    assert truncation.bounds == (-3.0, 3.0) and truncation.gradient == gradient
    assert not any(isinstance(lay, keras.layers.Lambda) for lay in migrated.layers)
    for kept in ("conv", "bn"):
        for a, b in zip(original.get_layer(kept).get_weights(), migrated.get_layer(kept).get_weights()):
            np.testing.assert_array_equal(a, b)

    side = 16 if name != "second" else 64
    x = pixels((2, side, side, 1))
    np.testing.assert_allclose(np.asarray(migrated(x)), np.asarray(original(x)), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_migrating_a_migrated_file_has_nothing_to_do(migrated_answers, tmp_path):
    _, _, migrated_path, _ = migrated_answers["first"]
    report = migrate(migrated_path, tmp_path / "again.keras")
    assert "nothing to migrate" in report["message"] and not report["written"]


@pytest.mark.slow
def test_verification_reports_only_the_first_answers_cancellation(migrated_answers):
    for name in ANSWERS:
        verification = migrated_answers[name][3]["verification"]
        assert verification["passed"], verification["failures"]
        assert max(verification["rebuild_max_abs_diff"].values()) == 0.0
        assert verification["max_abs_diff"]["pixels"] <= 1e-4
        assert verification["max_abs_diff"]["normal"] == 0.0
        if ANSWERS[name][4]:
            assert verification["max_abs_diff"]["huge"] == 0.0
            assert verification["expected_difference"] is None
        else:
            assert verification["max_abs_diff"]["huge"] > 1e-3  # x + (clip(x) - x) at 1e7 scale
            assert "cancellation" in verification["expected_difference"]
            tlu_check = verification["layers"]["tlu"]
            assert tlu_check["beyond_cancellation_bound"] == 0
            assert tlu_check["max_abs_error_vs_exact_clip"] >= 1.0


@pytest.mark.slow
def test_verification_runs_on_256x256_when_the_model_takes_any_size(migrated_answers):
    verification = migrated_answers["second"][3]["verification"]
    assert verification["inputs"]["pixels"] == [[2, 256, 256, 1]]


@pytest.mark.slow
def test_first_answer_probe_shows_the_cancellation_and_inf_to_nan(migrated_answers):
    (layer,) = migrated_answers["first"][3]["layers"]
    assert "float cancellation" in layer["note"]
    assert layer["nonfinite"]["inf"] == "nan"  # inf + (3 - inf); Truncation gives 3
    assert layer["max_probe_error"] > 1.0


@pytest.mark.slow
def test_tflite_inventory_drops_to_minimum_maximum(migrated_answers):
    first = migrated_answers["first"][3]["tflite_ops"]
    assert first["removed"] == {"ADD": 1, "SUB": 1} and first["added"] == {}
    assert first["after"]["MINIMUM"] == 1 and first["after"]["MAXIMUM"] == 1

    second = migrated_answers["second"][3]["tflite_ops"]
    assert second["before"]["SELECT_V2"] == 2 and "MINIMUM" not in second["before"]
    assert second["added"] == {"MAXIMUM": 1, "MINIMUM": 1}
    assert {"SELECT_V2", "GREATER", "LESS"} <= set(second["removed"])
    assert second["total_after"] < second["total_before"]
    truncation_ops = set(second["after"]) - {"CONV_2D", "TANH", "MUL", "ADD"}
    assert truncation_ops == {"MINIMUM", "MAXIMUM"}


def test_cli_table_and_json(tmp_path, capsys):
    legacy = tmp_path / "legacy.keras"
    detector_block(first_answer_tf(T)).save(legacy)
    rc, captured = run_cli(legacy, "--out", tmp_path / "new.keras", "--trust-lambda", capsys=capsys)
    assert rc == 0
    table = captured.out
    assert "clip -> Truncation" in table and "[-3, 3]" in table and "ste" in table
    assert "removed: ADD 1, SUB 1" in table
    assert "written:" in table

    rc, captured = run_cli(legacy, "--out", tmp_path / "new2.keras", "--trust-lambda", "--json",
                           capsys=capsys)
    assert rc == 0
    report = json.loads(captured.out)
    assert report["layers"][0]["gradient"] == "ste"
    assert report["lambda_globals"] == ["K", "backend", "keras", "math", "np", "tf"]
    assert (tmp_path / "new2.keras").is_file()


@pytest.mark.slow
def test_legacy_seed_block_becomes_the_registered_seed_block(tmp_path):
    from edgetrunc import models
    from edgetrunc.migrate import tflite_op_inventory

    reference = models.create("seed_block", seed=0)
    inputs = keras.Input((256, 256, 1), name="input")
    x = inputs
    for layer in reference.layers[1:]:
        is_tlu = isinstance(layer, Truncation)
        x = keras.layers.Lambda(first_answer(T), name=layer.name)(x) if is_tlu else layer(x)
    legacy = tmp_path / "legacy_seed_block.keras"
    keras.Model(inputs, x, name="seed_block").save(legacy)

    out = tmp_path / "seed_block.keras"
    report = migrate(legacy, out, trust_lambda=True)
    migrated = keras.saving.load_model(out, safe_mode=True)
    assert [type(lay).__name__ for lay in migrated.layers] == \
        [type(lay).__name__ for lay in reference.layers]
    image = pixels((1, 256, 256, 1))
    np.testing.assert_array_equal(np.asarray(migrated(image)), np.asarray(reference(image)))
    assert report["tflite_ops"]["after"] == tflite_op_inventory(reference)
    assert report["tflite_ops"]["removed"] == {"ADD": 1, "SUB": 1}


@pytest.mark.slow
def test_reports_are_strict_json(migrated_answers):
    for _, _, _, report in migrated_answers.values():
        json.loads(json.dumps(report, allow_nan=False))


def test_wrong_bounds_fail_the_verification_and_write_nothing(tmp_path, monkeypatch, capsys):
    from edgetrunc.migrate import LambdaVerdict

    legacy = tmp_path / "legacy.keras"
    detector_block(second_answer(T), output_shape=(16, 16, 4)).save(legacy)
    monkeypatch.setattr(LambdaVerdict, "truncation_kwargs",
                        lambda self: {"threshold": 2.0, "gradient": self.gradient})
    rc, captured = run_cli(legacy, "--out", tmp_path / "new.keras", "--trust-lambda",
                           capsys=capsys)
    assert rc == 1 and "migration not written" in captured.err
    assert not (tmp_path / "new.keras").exists()
    assert sorted(os.listdir(tmp_path)) == ["legacy.keras"]


# ----------------------------------------------------------------------------- safety


def test_refusal_without_trust_writes_nothing_and_exits_2(tmp_path, capsys):
    legacy = tmp_path / "legacy.keras"
    detector_block(first_answer(T)).save(legacy)
    before = sorted(os.listdir(tmp_path))
    rc, captured = run_cli(legacy, "--out", tmp_path / "new.keras", capsys=capsys)
    assert rc == 2
    assert captured.out == ""
    message = captured.err.strip()
    assert len(message.splitlines()) == 1
    assert "1 Lambda layer(s) (tlu)" in message
    assert "runs Python code stored in the file" in message and "--trust-lambda" in message
    assert sorted(os.listdir(tmp_path)) == before


def test_refusal_reads_the_config_only(tmp_path):
    import subprocess
    import sys

    legacy = tmp_path / "legacy.keras"
    detector_block(first_answer(T)).save(legacy)
    code = ("import sys; from edgetrunc.cli import main; "
            f"rc = main(['-q', 'migrate', {str(legacy)!r}, '--out', {str(tmp_path / 'n.keras')!r}]); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules; sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert "--trust-lambda" in result.stderr


def test_file_without_lambda_needs_no_trust_and_has_nothing_to_migrate(tmp_path, capsys):
    legacy = tmp_path / "plain.keras"
    keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)]).save(legacy)
    rc, captured = run_cli(legacy, "--out", tmp_path / "new.keras", capsys=capsys)
    assert rc == 0
    assert "nothing to migrate" in captured.out
    assert not (tmp_path / "new.keras").exists()


def test_non_clip_lambda_is_kept_and_reported(tmp_path):
    legacy = tmp_path / "legacy.keras"
    detector_block(second_answer(T), output_shape=(16, 16, 4),
                   extra=lambda x: x * keras.ops.abs(x)).save(legacy)  # not elementwise-common
    out = tmp_path / "new.keras"
    report = migrate(legacy, out, trust_lambda=True, op_inventory=False)
    verdicts = {layer["layer"]: layer for layer in report["layers"]}
    assert verdicts["tlu"]["replaced"] and verdicts["tlu"]["gradient"] == "clip"
    assert verdicts["double"]["verdict"] == "not-clip" and not verdicts["double"]["replaced"]
    assert "f(-1000, -1, 0, 1, 1000) = (-1e+06, -1, 0, 1, 1e+06)" in verdicts["double"]["note"]
    assert report["kept"] == ["double"]
    assert "still needs --trust-lambda" in report["safe_mode"]
    with pytest.raises(ValueError, match="Lambda"):
        keras.saving.load_model(out, safe_mode=True)
    reloaded = load_legacy_model(out, trust_lambda=True)
    assert isinstance(reloaded.get_layer("tlu"), Truncation)
    assert isinstance(reloaded.get_layer("double"), keras.layers.Lambda)


def test_only_non_clip_lambdas_means_nothing_written(tmp_path):
    legacy = tmp_path / "legacy.keras"
    inputs = keras.Input((8,))
    keras.Model(inputs, keras.layers.Lambda(lambda x: x * keras.ops.abs(x),
                                            name="double")(inputs)).save(legacy)
    report = migrate(legacy, tmp_path / "new.keras", trust_lambda=True)
    assert report["kept"] == ["double"] and not report["written"]
    assert "nothing to migrate" in report["message"]
    assert not (tmp_path / "new.keras").exists()


@pytest.mark.parametrize("problem", ["missing", "corrupt", "zip_without_config", "weights_only",
                                     "out_is_input", "out_not_keras"])
def test_bad_input_is_one_line_and_exit_2(problem, tmp_path, capsys):
    legacy, out = tmp_path / "legacy.keras", tmp_path / "new.keras"
    if problem == "corrupt":
        legacy.write_bytes(b"not a model" * 10)
    elif problem == "zip_without_config":
        with zipfile.ZipFile(legacy, "w") as archive:
            archive.writestr("other.txt", "x")
    elif problem == "weights_only":
        legacy = tmp_path / "legacy.h5"
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        model.save_weights(tmp_path / "w.weights.h5")
        os.replace(tmp_path / "w.weights.h5", legacy)
    elif problem in ("out_is_input", "out_not_keras"):
        detector_block(first_answer(T)).save(legacy)
        out = legacy if problem == "out_is_input" else tmp_path / "new.h5"
    before = legacy.read_bytes() if legacy.exists() else None
    rc, captured = run_cli(legacy, "--out", out, "--trust-lambda", capsys=capsys)
    assert rc == 2
    assert len(captured.err.strip().splitlines()) == 1 and "Traceback" not in captured.err
    assert captured.err.startswith("edgetrunc migrate: error: ")
    if before is not None:
        assert legacy.read_bytes() == before
    if out != legacy:
        assert not out.exists()


def named_truncation(x):
    return keras.ops.clip(x, -T, T)


def test_function_stored_by_name_only_is_explained(tmp_path, capsys):
    legacy = tmp_path / "legacy.keras"
    inputs = keras.Input((4,))
    keras.Model(inputs, keras.layers.Lambda(named_truncation, name="named")(inputs)).save(legacy)
    rc, captured = run_cli(legacy, "--out", tmp_path / "new.keras", "--trust-lambda", capsys=capsys)
    assert rc == 2 and "stores its function 'named_truncation' by name only" in captured.err
    assert len(captured.err.strip().splitlines()) == 1


def test_global_missing_from_the_file_is_named_and_can_be_defined(tmp_path, capsys):
    legacy = tmp_path / "legacy.keras"
    clip = lambda x: tf.clip_by_value(x, -GLOBAL_THRESHOLD, GLOBAL_THRESHOLD)  # noqa: E731
    detector_block(clip, output_shape=(16, 16, 4)).save(legacy)
    out = tmp_path / "new.keras"
    rc, captured = run_cli(legacy, "--out", out, "--trust-lambda", capsys=capsys)
    assert rc == 2 and "GLOBAL_THRESHOLD" in captured.err and "--define" in captured.err
    assert not out.exists()
    rc, captured = run_cli(legacy, "--out", out, "--trust-lambda", "--define",
                           "GLOBAL_THRESHOLD=2.0", "--json", capsys=capsys)
    assert rc == 0
    layer = json.loads(captured.out)["layers"][0]
    assert (layer["lower"], layer["upper"], layer["gradient"]) == (-2.0, 2.0, "clip")


# ----------------------------------------------------------------------------- formats and shapes


def test_legacy_h5_and_keras2_switch_lambda(tmp_path):
    legacy = tmp_path / "legacy.h5"
    detector_block(keras2_switch_answer(T)).save(legacy)
    out = tmp_path / "new.keras"
    report = migrate(legacy, out, trust_lambda=True, op_inventory=False)
    assert report["format"] == "h5"
    (layer,) = report["layers"]
    assert (layer["lower"], layer["upper"], layer["gradient"]) == (-3.0, 3.0, "clip")
    assert isinstance(keras.saving.load_model(out, safe_mode=True).get_layer("tlu"), Truncation)


def test_tf_keras2_style_h5_config_with_list_function(tmp_path):
    legacy = tmp_path / "legacy.h5"
    detector_block(first_answer(T)).save(legacy)
    with h5py.File(legacy, "r+") as handle:
        config = json.loads(handle.attrs["model_config"])
        for layer in config["config"]["layers"]:
            if layer["class_name"] == "Lambda":
                stored = layer["config"]["function"]["config"]
                layer["config"]["function"] = [stored["code"], stored["defaults"], stored["closure"]]
                layer["config"].update(function_type="lambda", module="__main__",
                                       output_shape_type="raw")
        handle.attrs["model_config"] = json.dumps(config)
    report = migrate(legacy, tmp_path / "new.keras", trust_lambda=True, op_inventory=False)
    assert report["layers"][0]["gradient"] == "ste" and report["written"]


def test_sequential_with_asymmetric_clip(tmp_path):
    legacy = tmp_path / "legacy.keras"
    keras.utils.set_random_seed(0)
    keras.Sequential([keras.Input((16, 16, 1)), keras.layers.Conv2D(4, 3, name="conv"),
                      keras.layers.Lambda(lambda x: keras.ops.clip(x, -1.5, 4.0), name="asym"),
                      keras.layers.Flatten(), keras.layers.Dense(2, name="dense")]).save(legacy)
    out = tmp_path / "new.keras"
    report = migrate(legacy, out, trust_lambda=True, op_inventory=False)
    (layer,) = report["layers"]
    assert (layer["lower"], layer["upper"], layer["gradient"]) == (-1.5, 4.0, "clip")
    migrated = keras.saving.load_model(out, safe_mode=True)
    assert isinstance(migrated, keras.Sequential)
    assert migrated.get_layer("asym").get_config()["lower"] == -1.5


def test_lambda_inside_a_nested_model(tmp_path):
    legacy = tmp_path / "legacy.keras"
    inner_in = keras.Input((8, 8, 1))
    inner_out = keras.layers.Lambda(first_answer(1.0), name="inner_tlu")(
        keras.layers.Conv2D(2, 3)(inner_in))
    block = keras.Model(inner_in, inner_out, name="block")
    outer_in = keras.Input((8, 8, 1))
    keras.Model(outer_in, keras.layers.Flatten()(block(outer_in))).save(legacy)
    out = tmp_path / "new.keras"
    report = migrate(legacy, out, trust_lambda=True, op_inventory=False)
    assert report["layers"][0]["layer"] == "block/inner_tlu"
    migrated = keras.saving.load_model(out, safe_mode=True)
    assert isinstance(migrated.get_layer("block").get_layer("inner_tlu"), Truncation)


def test_mixed_float16_lambda_keeps_its_policy(tmp_path):
    legacy = tmp_path / "legacy.keras"
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        detector_block(first_answer(T)).save(legacy)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    out = tmp_path / "new.keras"
    report = migrate(legacy, out, trust_lambda=True, op_inventory=False)
    (layer,) = report["layers"]
    assert (layer["lower"], layer["upper"], layer["gradient"]) == (-3.0, 3.0, "ste")
    assert "f(-3000) = -4" in layer["note"]  # float16 cancels already at 3000
    assert report["verification"]["passed"]
    migrated = keras.saving.load_model(out, safe_mode=True)
    assert migrated.get_layer("tlu").dtype_policy.name == "mixed_float16"


def test_undecodable_lambda_bytecode_is_an_input_error(tmp_path, capsys):
    legacy, broken = tmp_path / "legacy.keras", tmp_path / "broken.keras"
    detector_block(first_answer(T)).save(legacy)
    with zipfile.ZipFile(legacy) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(files["config.json"])
    for layer in config["config"]["layers"]:
        if layer["class_name"] == "Lambda":
            layer["config"]["function"]["config"]["code"] = "////AAAA"
    files["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(broken, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    rc, captured = run_cli(broken, "--out", tmp_path / "new.keras", "--trust-lambda", capsys=capsys)
    assert rc == 2 and "another Python version" in captured.err


# ----------------------------------------------------------------------------- the probe alone


def _lambda_on(fn, shape=(6, 5, 2)):
    layer = keras.layers.Lambda(fn)
    layer(keras.Input(shape))
    return layer


@pytest.mark.parametrize("fn, lower, upper, gradient, exact", [
    (lambda x: keras.ops.clip(x, -1.5, 4.0), -1.5, 4.0, "clip", True),
    (lambda x: keras.ops.relu6(x), 0.0, 6.0, "clip", True),
    (lambda x: keras.ops.clip(x, -5.0, -1.0), -5.0, -1.0, "clip", True),
    (lambda x: keras.ops.clip(x, 0.1, 0.2), 0.1, 0.2, "clip", True),
    (lambda x: keras.ops.clip(x, -1e-5, 1e-5), -1e-5, 1e-5, "clip", True),
    (lambda x: tf.minimum(tf.maximum(x, -3.0), 3.0), -3.0, 3.0, "clip", True),
    (first_answer(0.1), -0.1, 0.1, "ste", False),
    (first_answer(255.0), -255.0, 255.0, "ste", False),
])
def test_probe_finds_bounds_and_gradient(fn, lower, upper, gradient, exact):
    verdict = probe_lambda(_lambda_on(fn))
    assert verdict.is_clip, verdict.note
    assert (verdict.lower, verdict.upper, verdict.gradient) == (lower, upper, gradient)
    assert verdict.exact is exact
    assert (verdict.note == "") is exact  # notes: cancellation, inf -> NaN


@pytest.mark.parametrize("fn, verdict_name, note", [
    (lambda x: x * 2, "not-clip", "f(-1000, -1, 0, 1, 1000)"),
    (lambda x: keras.ops.relu(x), "not-clip", "no upper bound"),
    (lambda x: 3.0 * keras.ops.tanh(x / 3.0), "not-clip", "where clip(x"),
    (lambda x: keras.ops.clip(x - keras.ops.mean(x), -3.0, 3.0), "not-clip", ""),
    (lambda x: keras.ops.reshape(x, (-1, 60)), "not-clip", "changes the shape"),
    (lambda x: 0.5 * keras.ops.clip(x, -3.0, 3.0)
     + keras.ops.stop_gradient(0.5 * keras.ops.clip(x, -3.0, 3.0)),
     "clip-other-gradient", "neither straight-through nor masked"),
])
def test_probe_rejects_what_is_not_a_clip(fn, verdict_name, note):
    verdict = probe_lambda(_lambda_on(fn))
    assert verdict.verdict == verdict_name and not verdict.is_clip
    assert note in verdict.note


def test_probe_on_a_lambda_with_two_inputs():
    a, b = keras.Input((4,)), keras.Input((4,))
    layer = keras.layers.Lambda(lambda xs: keras.ops.clip(xs[0] + xs[1], -1.0, 1.0))
    layer([a, b])
    verdict = probe_lambda(layer)
    assert verdict.verdict == "not-clip" and "several inputs" in verdict.note


def test_define_values_must_be_literals(tmp_path, capsys):
    legacy = tmp_path / "legacy.keras"
    detector_block(first_answer(T)).save(legacy)
    rc, captured = run_cli(legacy, "--out", tmp_path / "n.keras", "--trust-lambda", "--define",
                           "T=os.system('x')", capsys=capsys)
    assert rc == 2 and "Python literal" in captured.err


def test_input_error_from_the_api(tmp_path):
    with pytest.raises(InputError, match="no such Keras model"):
        migrate(tmp_path / "absent.keras", tmp_path / "out.keras", trust_lambda=True)
