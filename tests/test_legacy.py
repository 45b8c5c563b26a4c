"""Real legacy models, as users bring them: files written by tf.keras 2 (Keras 2).

The files under tests/fixtures/legacy/ were written by `scripts/make_legacy_fixtures.py`
with tf-keras 2.21 (not needed here): `.h5` models whose truncation is a saved `Lambda`,
a custom `TLU` class or a raw `tf.clip_by_value` / `tf.minimum(tf.maximum())` op, a
tf.keras `.keras` file, a weights-only `.h5`, a SavedModel folder (with a nested model),
and a Keras 3 file of an older edgetrunc whose `Truncation` config lacks the newer keys.
`MANIFEST.json` holds each model's output in Keras 2 on a fixed input; migrated models
must reproduce it.
"""

import hashlib
import re
import json
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import edgetrunc  # noqa: E402
from edgetrunc import Truncation  # noqa: E402
from edgetrunc.errors import InputError  # noqa: E402
from edgetrunc.legacy import load_legacy_model as load_trusted  # noqa: E402
from edgetrunc.migrate import migrate, parse_truncation_classes  # noqa: E402
from error_lines import assert_one_line_error  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "legacy"
MANIFEST = json.loads((FIXTURES / "MANIFEST.json").read_text())


def _hashes():
    return {str(p.relative_to(FIXTURES)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(FIXTURES.rglob("*")) if p.is_file()}


HASHES_BEFORE = _hashes()

# fixture: (migrate options, layer, lower, upper, gradient, verdict)
MIGRATED = {
    "clip_lambda.h5": ({"trust_lambda": True}, "tlu", -3.0, 3.0, "clip", "clip"),
    "kclip_global.h5": ({"trust_lambda": True, "extra_globals": {"T": 3.0}},
                        "tlu", -3.0, 3.0, "clip", "clip"),
    "minmax_ste.h5": ({"trust_lambda": True}, "tlu", -2.0, 2.0, "ste", "clip"),  # Sequential
    "rgb_clip.h5": ({"trust_lambda": True}, "tlu", -3.0, 3.0, "clip", "clip"),
    "tfkeras_v3.keras": ({"trust_lambda": True}, "tlu", -3.0, 3.0, "clip", "clip"),
    "savedmodel": ({"trust_lambda": True}, "front/tlu", -3.0, 3.0, "clip", "clip"),
    "custom_tlu.h5": ({"truncation_classes": {"TLU": None}}, "tlu", -3.0, 3.0, "clip", "mapped"),
    "tfop_clip.h5": ({}, "tf.clip_by_value", -3.0, 3.0, "clip", "mapped"),
    "tfop_minmax.h5": ({}, "tf.math.maximum", -2.0, 2.0, "clip", "mapped"),
}


def sample(name):
    """The input the Keras 2 output in MANIFEST.json was computed on."""
    h, w, c = (d or 32 for d in MANIFEST[name]["input_shape"])
    return np.random.default_rng(1).integers(0, 256, (2, h, w, c)).astype("float32")


@pytest.fixture(scope="module")
def migrated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("migrated")
    results = {}
    for name, (options, *_) in MIGRATED.items():
        out = folder / (Path(name).stem + ".keras")
        results[name] = (out, migrate(FIXTURES / name, out, op_inventory=False, **options))
    return results


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MIGRATED))
def test_migrated_model_computes_what_keras2_computed(name, migrated):
    _, layer_name, lower, upper, gradient, verdict = MIGRATED[name]
    out, report = migrated[name]
    assert report["written"] and out.is_file()
    assert report["verification"]["passed"]
    assert report["safe_mode"] == "loads with safe_mode=True"
    (layer,) = report["layers"]
    assert (layer["layer"], layer["verdict"], layer["replaced"]) == (layer_name, verdict, True)
    assert (layer["lower"], layer["upper"], layer["gradient"]) == (lower, upper, gradient)

    model = keras.saving.load_model(out, safe_mode=True)
    truncation = model
    for part in layer_name.split("/"):  # a nested model's layer is "model/layer"
        truncation = truncation.get_layer(part)
    assert isinstance(truncation, Truncation)
    assert truncation.bounds == (lower, upper) and truncation.gradient == gradient
    assert not any(isinstance(lay, keras.layers.Lambda) for lay in model._flatten_layers())
    got = np.asarray(model(sample(name)))
    np.testing.assert_allclose(got, np.array(MANIFEST[name]["keras2_output"]), atol=1e-5, rtol=0)


def test_op_lambda_argument_lambda_and_registered_class_in_one_model(tmp_path):
    name = "mixed_registered.h5"
    out = tmp_path / "new.keras"
    unknown = "class 'MyLayers>ClipLayer'.*--truncation-class ClipLayer"
    with pytest.raises(InputError, match=unknown):
        migrate(FIXTURES / name, out, trust_lambda=True, op_inventory=False)
    report = migrate(FIXTURES / name, out, trust_lambda=True, op_inventory=False,
                     truncation_classes={"ClipLayer": None})
    got = {layer["layer"]: (layer["verdict"], layer["lower"], layer["upper"])
           for layer in report["layers"]}
    assert got == {"tf.clip_by_value_1": ("mapped", -4.0, 4.0), "tlu_args": ("clip", -3.0, 3.0),
                   "tlu_class": ("mapped", -2.0, 2.0)}
    model = keras.saving.load_model(out, safe_mode=True)
    assert sum(isinstance(layer, Truncation) for layer in model.layers) == 3
    np.testing.assert_allclose(np.asarray(model(sample(name))),
                               np.array(MANIFEST[name]["keras2_output"]), atol=1e-5, rtol=0)


def test_mixed_float16_model_keeps_its_policy(tmp_path):
    name = "mixed_float16.h5"
    out = tmp_path / "new.keras"
    report = migrate(FIXTURES / name, out, trust_lambda=True, op_inventory=False)
    assert report["written"] and report["layers"][0]["replaced"]
    model = keras.saving.load_model(out, safe_mode=True)
    assert model.get_layer("tlu").dtype_policy.name == "mixed_float16"
    np.testing.assert_allclose(np.asarray(model(sample(name)), np.float32),
                               np.array(MANIFEST[name]["keras2_output"]), atol=2e-3, rtol=0)


def test_mixed_float16_model_exports_in_float32_and_passes_parity(tmp_path):
    from edgetrunc.export import export_tflite, inspect_tflite, find_truncations
    from edgetrunc.parity.check import check_parity

    out = tmp_path / "new.keras"
    migrate(FIXTURES / "mixed_float16.h5", out, trust_lambda=True, op_inventory=False)
    model = edgetrunc.load_model(out)
    artifact = tmp_path / "new_fp32.tflite"
    artifact.write_bytes(export_tflite(model, "fp32"))
    mapping = inspect_tflite(artifact.read_bytes(), find_truncations(model), "fp32")
    assert "CAST" not in mapping["ops"] and mapping["truncations"][0]["mapped_to"] == "MAXIMUM+MINIMUM"
    report = check_parity(out, [artifact], samples=8, inputs="random", probes=False)
    assert report.passed
    assert report.artifacts[0].precision == "fp32"
    assert report.artifacts[0].tolerance["atol"] == 1e-2  # judged with the fp16 tolerances
    assert any("reduced precision" in w for w in report.warnings)


@pytest.mark.slow
def test_report_names_the_format_and_the_conversion(migrated):
    assert migrated["tfkeras_v3.keras"][1]["format"] == "tf-keras"
    assert migrated["clip_lambda.h5"][1]["format"] == "h5"
    message = migrated["tfop_clip.h5"][1]["message"]
    assert "converted the legacy .h5 file to a Keras 3 .keras" in message
    assert "mapped 1 layer(s) to Truncation" in message
    note = migrated["custom_tlu.h5"][1]["layers"][0]["note"]
    assert "its behaviour was not checked" in note and "'threshold'" in note


@pytest.mark.slow
def test_the_fused_min_max_pair_is_one_layer(migrated):
    model = keras.saving.load_model(migrated["tfop_minmax.h5"][0], safe_mode=True)
    names = [layer.name for layer in model.layers]
    assert "tf.math.minimum" not in names
    assert sum(isinstance(layer, Truncation) for layer in model.layers) == 1


@pytest.mark.slow
def test_migrated_output_of_a_free_size_model_runs_on_256x256(migrated):
    model = keras.saving.load_model(migrated["clip_lambda.h5"][0], safe_mode=True)
    assert tuple(model.inputs[0].shape) == (None, None, None, 1)
    x = np.random.default_rng(0).integers(0, 256, (1, 256, 256, 1)).astype("float32")
    assert np.asarray(model(x)).shape == (1, 2)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["clip_lambda.h5", "minmax_ste.h5"])
def test_free_size_migrated_model_converts_and_passes_parity(name, migrated, tmp_path, cli):
    """(None, None, 1), Functional and Sequential: int8 calibration on 256x256 tiles,
    TFLite resized to the batch, ONNX from a Sequential model."""
    out = tmp_path / "artifacts"
    rc, _, err = cli("convert", migrated[name][0], "--out", out,
                     "--tflite", "fp32,int8", "--onnx", "fp32", "--json")
    assert rc == 0, err
    artifacts = sorted(str(p) for p in out.iterdir() if p.suffix in (".tflite", ".onnx"))
    assert len(artifacts) == 3
    rc, _, err = cli("parity", migrated[name][0], *artifacts, "--per-layer",
                     "--samples", "4", "--json", str(tmp_path / "parity.json"))
    assert rc == 0, err
    report = json.loads((tmp_path / "parity.json").read_text())
    assert report["passed"] is True
    for artifact in report["artifacts"]:  # built-in kernels (per layer) allocate at 256x256 first
        assert artifact["layers"] and artifact["first_divergent_layer"] is None
        assert not [layer for layer in artifact["layers"] if layer["status"] == "unmapped"]


# ----------------------------------------------------------------------------- refusals


def test_lambda_file_is_refused_without_trust_and_nothing_is_written(tmp_path, cli):
    out = tmp_path / "new.keras"
    rc, _, err = cli("migrate", FIXTURES / "clip_lambda.h5", "--out", out)
    assert_one_line_error(rc, err, "1 Lambda layer(s) (tlu)", "--trust-lambda")
    assert list(tmp_path.iterdir()) == []


def test_script_global_must_be_defined(tmp_path, cli):
    out = tmp_path / "new.keras"
    rc, _, err = cli("migrate", FIXTURES / "kclip_global.h5", "--out", out,
                     "--trust-lambda")
    assert_one_line_error(rc, err, "global name(s) T", "--define")
    assert not out.exists()


def test_unknown_custom_class_is_named_with_the_way_out(tmp_path, cli):
    out = tmp_path / "new.keras"
    rc, _, err = cli("migrate", FIXTURES / "custom_tlu.h5", "--out", out)
    assert_one_line_error(rc, err, "class 'TLU'", "--truncation-class TLU")
    assert not out.exists()
    rc, _, err = cli("migrate", FIXTURES / "custom_tlu.h5", "--out", out,
                     "--truncation-class", "Clip")
    lines = err.strip().splitlines()  # every blocker at once: the wrong name, the unknown class
    assert rc == 2 and len(lines) == 2, err
    assert "--truncation-class Clip: no layer of class Clip" in lines[0] and "'TLU'" in lines[1]
    assert not out.exists()


def test_truncation_class_threshold_given_on_the_command_line(tmp_path, cli):
    out = tmp_path / "new.keras"
    rc, stdout, err = cli("migrate", FIXTURES / "custom_tlu.h5", "--out", out,
                          "--truncation-class", "TLU=2.5", "--json")
    assert rc == 0, err
    layer = json.loads(stdout)["layers"][0]
    assert (layer["lower"], layer["upper"]) == (-2.5, 2.5)
    assert keras.saving.load_model(out, safe_mode=True).get_layer("tlu").bounds == (-2.5, 2.5)


@pytest.mark.parametrize("item", ["1TLU", "TLU=-1", "TLU=inf", "TLU=x"])
def test_truncation_class_option_is_checked(item, tmp_path, cli):
    with pytest.raises(InputError, match=f"^truncation_classes={re.escape(item)}: "):
        parse_truncation_classes([item])  # the library names its parameter
    rc, _, err = cli("migrate", tmp_path / "old.h5", "--out", tmp_path / "new.keras",
                     "--truncation-class", item)
    assert_one_line_error(rc, err, f"edgetrunc migrate: error: --truncation-class {item}: ")


def test_other_tf_op_layer_is_named(tmp_path, cli):
    out = tmp_path / "new.keras"
    rc, _, err = cli("migrate", FIXTURES / "tfop_other.h5", "--out", out)
    assert_one_line_error(rc, err, "tf.nn.softsign", "op layer")
    assert not out.exists()


def test_weights_only_file_holds_no_model(tmp_path, cli):
    out = tmp_path / "new.keras"
    rc, _, err = cli("migrate", FIXTURES / "weights_only.h5", "--out", out,
                     "--trust-lambda")
    assert_one_line_error(rc, err, "weights only")
    assert not out.exists()
    with pytest.raises(InputError, match="weights only"):
        edgetrunc.load_model(FIXTURES / "weights_only.h5")
    rc, _, err = cli("convert", FIXTURES / "weights_only.h5", "--out", tmp_path / "o")
    assert_one_line_error(rc, err, "weights only", "load_weights")


@pytest.mark.slow
def test_savedmodel_report_and_refusal(migrated, tmp_path, cli):
    report = migrated["savedmodel"][1]
    assert report["format"] == "savedmodel"
    assert report["message"].startswith("converted the tf.keras 2 SavedModel folder")
    out = tmp_path / "new.keras"
    rc, _, err = cli("migrate", FIXTURES / "savedmodel", "--out", out)
    assert_one_line_error(rc, err, "1 Lambda layer(s) (tlu)", "--trust-lambda")
    assert not out.exists()
    with pytest.raises(InputError, match="SavedModel folder; convert it to .keras first"):
        edgetrunc.load_model(FIXTURES / "savedmodel")


# ----------------------------------------------------------------------------- without migrate


@pytest.mark.parametrize("name, fragments", [
    ("clip_lambda.h5", ("Lambda layer(s) (tlu)", "edgetrunc migrate", "--trust-lambda")),
    ("tfkeras_v3.keras", ("Lambda layer(s) (tlu)", "edgetrunc migrate")),
    ("custom_tlu.h5", ("class 'TLU'", "--truncation-class TLU")),
    ("tfop_other.h5", ("tf.nn.softsign",)),
])
def test_load_model_says_what_to_run_first(name, fragments):
    with pytest.raises(InputError) as info:
        edgetrunc.load_model(FIXTURES / name)
    message = str(info.value)
    assert len(message.splitlines()) == 1
    for fragment in fragments:
        assert fragment in message


def test_convert_takes_a_full_model_h5_directly(tmp_path, cli):
    out = tmp_path / "artifacts"
    rc, _, err = cli("convert", FIXTURES / "tfop_clip.h5", "--out", out, "--tflite", "fp32",
                     "--onnx", "fp32", "--json")
    assert rc == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert Path(manifest["source"]["path"]).name == "tfop_clip.h5"
    assert {Path(a["path"]).name for a in manifest["artifacts"]} == {"tfop_clip_fp32.tflite",
                                                                      "tfop_clip_fp32.onnx"}
    assert all(a["truncations"][0]["mapped_to"] in ("MAXIMUM+MINIMUM", "Clip") for a in manifest["artifacts"])


@pytest.mark.parametrize("name", ["tfop_clip.h5", "tfop_minmax.h5"])
def test_load_model_reads_tf_op_clips_directly(name):
    model = edgetrunc.load_model(FIXTURES / name)
    assert sum(isinstance(layer, Truncation) for layer in model.layers) == 1
    np.testing.assert_allclose(np.asarray(model(sample(name))),
                               np.array(MANIFEST[name]["keras2_output"]), atol=1e-5, rtol=0)


def test_older_truncation_config_loads_with_defaults():
    name = "truncation_old_config.keras"
    model = edgetrunc.load_model(FIXTURES / name)
    layer = model.get_layer("tlu")
    assert layer.bounds == (-2.5, 2.5) and layer.gradient == "ste"
    assert layer.learn_threshold is False
    np.testing.assert_allclose(np.asarray(model(sample(name))),
                               np.array(MANIFEST[name]["keras3_output"]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name, fragment", [
    ("clip_lambda.h5", "edgetrunc migrate"),
    ("savedmodel", "SavedModel folder"),
])
def test_convert_names_migrate_for_legacy_inputs(name, fragment, tmp_path, cli):
    rc, _, err = cli("convert", FIXTURES / name, "--out", tmp_path / "out")
    assert_one_line_error(rc, err, fragment)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_parity_names_migrate_for_a_savedmodel_folder(tmp_path, cli):
    artifact = tmp_path / "any.tflite"
    artifact.write_bytes(b"TFL3")
    rc, _, err = cli("parity", FIXTURES / "savedmodel", artifact, "--no-probes")
    assert_one_line_error(rc, err, "SavedModel folder", "edgetrunc migrate")


def test_truncated_keras_file_is_named_as_truncated(tmp_path):
    truncated = tmp_path / "half.keras"
    data = (FIXTURES / "truncation_old_config.keras").read_bytes()
    truncated.write_bytes(data[:len(data) // 2])
    with pytest.raises(InputError, match="truncated or corrupt .keras file"):
        edgetrunc.load_model(truncated)


def test_evaluate_names_an_input_that_is_not_an_image():
    """Any square 1- or 3-channel input is tiled at its own size; anything else is refused
    naming the input."""
    from types import SimpleNamespace

    from edgetrunc.data.geometry import require_image_geometry

    def model(shape):
        return SimpleNamespace(inputs=[SimpleNamespace(shape=shape)])

    with pytest.raises(InputError, match=r"rgba.keras: input \[None, 32, 32, 5\].*5 channels"):
        require_image_geometry(model((None, 32, 32, 5)), "rgba.keras", "evaluate")
    assert tuple(require_image_geometry(model((None, 32, 32, 3)), "rgb.keras", "evaluate")) == (32, 3)
    assert tuple(require_image_geometry(model((None, None, None, 1)), "any.keras", "evaluate")) == (256, 1)


def test_legacy_inputs_are_never_modified():
    assert _hashes() == HASHES_BEFORE


def test_fixtures_stay_small():
    total = sum(p.stat().st_size for p in FIXTURES.rglob("*") if p.is_file())
    assert total < 1_000_000
    assert set(MANIFEST) == {p.name for p in FIXTURES.iterdir() if p.name != "MANIFEST.json"}


# ----------------------------------------------------------------------------- foreign models


@pytest.mark.parametrize("name, options, bounds", [
    ("named_lambda_init.h5", ["--trust-lambda"], {"tlu": (-3.0, 3.0)}),
    ("activation_tlu.h5", ["--truncation-class", "tlu=3"],
     {"act_tlu": (-3.0, 3.0), "fc_tlu": (-3.0, 3.0)}),
    ("constraint_clip.h5", ["--truncation-class", "HardClip"], {"clip": (-2.0, 2.0)}),
    ("learned_tlu.h5", ["--truncation-class", "LearnedTLU"], {"tlu": (-2.5, 2.5)}),
])
def test_foreign_model_migrates_from_the_command_line(name, options, bounds, tmp_path, cli):
    out = tmp_path / "new.keras"
    rc, stdout, err = cli("migrate", FIXTURES / name, "--out", out, *options, "--json")
    assert rc == 0, err
    report = json.loads(stdout)
    assert report["written"] and report["verification"]["passed"]
    got = {layer["layer"]: (layer["lower"], layer["upper"]) for layer in report["layers"]
           if layer["replaced"] and layer["verdict"] != "elementwise"}
    assert got == bounds
    model = (load_trusted(out, trust_lambda=True) if report["kept"]
             else keras.saving.load_model(out, safe_mode=True))
    for layer, (lower, upper) in bounds.items():
        assert model.get_layer(layer).bounds == (lower, upper)
    np.testing.assert_allclose(np.asarray(model(sample(name))),
                               np.array(MANIFEST[name]["keras2_output"]), atol=1e-5, rtol=0)


def test_training_only_objects_are_named_in_one_warning(tmp_path, cli):
    rc, _, err = cli("migrate", FIXTURES / "constraint_clip.h5", "--out",
                     tmp_path / "new.keras", "--truncation-class", "HardClip")
    assert rc == 0, err
    (line,) = [line for line in err.splitlines() if line.startswith("warning:")
               and "training-only" in line]
    assert "conv1.kernel_constraint 'CenteredKernel' -> none" in line
    assert "conv1.kernel_regularizer 'SmallL1' -> none" in line
    rc, _, err = cli("migrate", FIXTURES / "named_lambda_init.h5", "--out",
                     tmp_path / "named.keras", "--trust-lambda", "--json")
    assert rc == 0, err
    (line,) = [line for line in err.splitlines() if line.startswith("warning:")]
    assert "conv1.kernel_initializer 'srm_init'" in line and "loss 'weighted_loss'" in line


def test_named_scaling_lambda_becomes_elementwise(tmp_path, cli):
    out = tmp_path / "new.keras"
    rc, stdout, err = cli("migrate", FIXTURES / "named_lambda_init.h5", "--out", out,
                          "--trust-lambda", "--json")
    assert rc == 0, err
    report = json.loads(stdout)
    assert report["kept"] == [] and report["safe_mode"] == "loads with safe_mode=True"
    assert {"layer": "half", "verdict": "elementwise"}.items() <= report["layers"][-1].items()
    model = load_trusted(out, trust_lambda=False)
    np.testing.assert_allclose(np.asarray(model(sample("named_lambda_init.h5"))),
                               np.array(MANIFEST["named_lambda_init.h5"]["keras2_output"]),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("name, options, fragments", [
    ("activation_tlu.h5", [], ("'act_tlu'", "'tlu'", "--truncation-class tlu=T")),
    ("activation_tlu.h5", ["--truncation-class", "tlu"], ("'tlu'", "--truncation-class tlu=T")),
    ("learned_tlu.h5", ["--truncation-class", "LearnedTLU=3"],
     ("weight 'threshold' = 2.5", "--truncation-class LearnedTLU without =T")),
    ("named_lambda_init.h5", [], ("Lambda layer(s)", "--trust-lambda")),
])
def test_foreign_model_refusals_are_one_line(name, options, fragments, tmp_path, cli):
    out = tmp_path / "new.keras"
    rc, _, err = cli("migrate", FIXTURES / name, "--out", out, *options)
    assert_one_line_error(rc, err, *fragments)
    assert not out.exists()


def test_a_class_storing_several_weights_is_refused_naming_them():
    from edgetrunc.legacy.weights import threshold_from_weights

    with pytest.raises(InputError, match=r"'alpha' \[\], 'beta' \[4\]"):
        threshold_from_weights("PTLU", "tlu", {"alpha": np.float32(1), "beta": np.ones(4)}, None)
    assert threshold_from_weights("T", "tlu", {"t": np.float32(-2.5)}, 2.5) == (-2.5, 2.5, "t")


def test_load_errors_keep_the_culprit():
    from edgetrunc.legacy.load import culprit_line

    error = ValueError("Error when deserializing class 'Conv2D' using config={" + "'k': 1, " * 80
                       + "}.\n\nException encountered: Could not interpret initializer "
                       "identifier: srm_init")
    line = culprit_line(error)
    assert "\n" not in line and "Conv2D" in line and "srm_init" in line
