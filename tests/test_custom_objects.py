"""The user's own code given on purpose (`--custom-objects FILE.py`), truncation mappings
checked against their code, stored thresholds from every file kind, and Lambdas that are
not truncations rewritten to `Elementwise`.

Keras 2 files are committed under fixtures/foreign (written by
scripts/make_custom_models.py --keras2, with the outputs Keras 2 computed); Keras 3 models
are built here by the same script; custom-objects files live under fixtures/custom.
"""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from edgetrunc.errors import InputError  # noqa: E402
from error_lines import assert_one_line_error  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"
OBJECTS = FIXTURES / "custom"
GBRAS = FIXTURES / "foreign" / "gbras.hdf5"
LEARNED_SM = FIXTURES / "foreign" / "learned_savedmodel"
KERAS2_OUTPUTS = json.loads((FIXTURES / "foreign" / "custom_keras2.json").read_text())


def builders():
    spec = importlib.util.spec_from_file_location("make_custom_models",
                                                  ROOT / "scripts" / "make_custom_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the custom-objects file ---------------------------------------------------------------

def test_file_offers_its_public_functions_and_classes(tmp_path):
    from edgetrunc.legacy import load_custom_objects

    path = tmp_path / "mine.py"
    path.write_text("import math\nfrom keras.layers import Layer\nSCALE = 3\n"
                    "def Tanh3(x):\n    return 3 * x\n"
                    "def _helper(x):\n    return x\nclass TLU(Layer):\n    pass\n")
    objects = load_custom_objects(path)
    assert {"Tanh3", "TLU"} <= set(objects) and "_helper" not in objects
    assert "SCALE" not in objects and "math" not in objects
    assert objects.source == str(path) and objects["Tanh3"](2) == 6
    (tmp_path / "only.py").write_text("__all__ = ['f']\ndef f(x):\n    return x\n"
                                      "def g(x):\n    return x\n")
    assert set(load_custom_objects(tmp_path / "only.py")) == {"f"}
    assert load_custom_objects({"f": abs}) == {"f": abs} and load_custom_objects(None) is None


@pytest.mark.parametrize("text, fragment", [
    ("raise RuntimeError('no GPU here')", "fails to import (RuntimeError: no GPU here)"),
    ("def broken(:\n", "fails to import (SyntaxError"),
    ("import no_such_module_anywhere", "ModuleNotFoundError"),
    ("VALUE = 3\n", "defines no public function or class"),
])
def test_bad_file_is_one_line_naming_it(tmp_path, text, fragment):
    from edgetrunc.legacy import load_custom_objects

    path = tmp_path / "objects.py"
    path.write_text(text)
    with pytest.raises(InputError) as info:
        load_custom_objects(path)
    assert str(path) in str(info.value) and fragment in str(info.value)
    assert info.value.naming("--custom-objects").startswith(f"--custom-objects {path}: ")


def test_missing_and_wrong_files(tmp_path, cli):
    out = tmp_path / "new.keras"
    rc, _, err = cli("migrate", GBRAS, "--out", out, "--custom-objects", tmp_path / "none.py")
    assert_one_line_error(rc, err, "--custom-objects", "none.py", "no such file")
    rc, _, err = cli("migrate", GBRAS, "--out", out, "--custom-objects", GBRAS)
    assert_one_line_error(rc, err, "--custom-objects", "expected a Python file (.py)")
    broken = tmp_path / "broken.py"
    broken.write_text("import keras\nraise ValueError('bad')\n")
    rc, _, err = cli("convert", GBRAS, "--out", tmp_path / "art", "--custom-objects", broken)
    assert rc == 2 and "Traceback" not in err, err
    assert not out.exists() and not (tmp_path / "art").exists()


def test_without_the_flag_the_model_names_its_need(tmp_path, cli):
    out = tmp_path / "new.keras"
    rc, _, err = cli("migrate", GBRAS, "--out", out)
    assert_one_line_error(rc, err, "layer 'srm'", "'Tanh3'", "--custom-objects FILE.py")
    rc, _, err = cli("migrate", GBRAS, "--out", out,
                     "--custom-objects", OBJECTS / "learned_objects.py")
    assert_one_line_error(rc, err, str(GBRAS), "needs Tanh3", "learned_objects.py does not define")
    assert not out.exists()


@pytest.mark.slow
def test_gbras_soft_truncation_kept_and_equal_to_keras2(tmp_path, cli):
    out = tmp_path / "gbras.keras"
    rc, stdout, err = cli("migrate", GBRAS, "--out", out, "--json",
                          "--custom-objects", OBJECTS / "gbras_objects.py")
    assert rc == 0, err
    report = json.loads(stdout)
    assert report["layers"] == [] and "--custom-objects" in report["safe_mode"]
    from edgetrunc import load_model

    model = load_model(out, custom_objects=OBJECTS / "gbras_objects.py")
    assert model.get_layer("srm").activation.__name__ == "Tanh3"
    x = builders().sample_input(model)
    np.testing.assert_allclose(np.asarray(model(x)), KERAS2_OUTPUTS["gbras.hdf5"], atol=2e-5)
    with pytest.raises(InputError, match="Tanh3"):
        load_model(out)  # the written file still needs the user's code
    rc, stdout, err = cli("evaluate", out, "--max-pairs", "2", "--json",
                          "--custom-objects", OBJECTS / "gbras_objects.py")
    assert rc == 0, err
    assert json.loads(stdout)["pairs"] == 2


# --- checked mappings ----------------------------------------------------------------------

def test_compare_with_clip():
    from edgetrunc.legacy.mapping_check import compare_with_clip

    assert compare_with_clip(lambda x: np.clip(x, -3, 3), -3, 3).passed
    with np.errstate(invalid="ignore"):  # inf - inf: the cancellation form's NaN at ±inf
        ste = compare_with_clip(lambda x: x + (np.clip(x, -3, 3) - x), -3, 3)
    assert ste.passed
    soft = compare_with_clip(lambda x: 3 * np.tanh(x), -3, 3)
    assert not soft.passed and 0.5 < abs(soft.worst_x) < 1.5 and soft.worst_error > 1
    assert not compare_with_clip(lambda x: np.clip(x, -2.5, 2.5), -3, 3).passed
    assert not compare_with_clip(lambda x: np.nan_to_num(np.clip(x, -3, 3)), -3, 3).passed


def test_soft_truncation_named_as_a_clip_is_refused(tmp_path, cli):
    out = tmp_path / "new.keras"
    rc, _, err = cli("migrate", GBRAS, "--out", out, "--truncation-class", "Tanh3=3",
                     "--custom-objects", OBJECTS / "gbras_objects.py")
    assert_one_line_error(rc, err, "layer 'srm'", "activation Tanh3", "clip(x, -3, 3)",
                   "computes something else", "worst |difference|")
    rc, _, err = cli("migrate", FIXTURES / "legacy" / "custom_tlu.h5", "--out", out,
                     "--truncation-class", "TLU", "--custom-objects",
                     OBJECTS / "soft_tlu_objects.py")
    assert_one_line_error(rc, err, "(class TLU)", "computes something else")
    assert not out.exists()


@pytest.mark.slow
def test_mapping_checked_against_given_code_or_warned(tmp_path, cli):
    clip = tmp_path / "tlu.py"
    clip.write_text("import keras\n\nclass TLU(keras.layers.Layer):\n"
                    "    def __init__(self, threshold=3.0, **kwargs):\n"
                    "        super().__init__(**kwargs)\n        self.threshold = threshold\n\n"
                    "    def call(self, x):\n"
                    "        return keras.ops.clip(x, -self.threshold, self.threshold)\n")
    rc, stdout, err = cli("migrate", FIXTURES / "legacy" / "custom_tlu.h5", "--out",
                          tmp_path / "a.keras", "--truncation-class", "TLU", "--json",
                          "--custom-objects", clip)
    assert rc == 0, err
    (layer,) = json.loads(stdout)["layers"]
    assert "checked against its code (--custom-objects" in layer["note"]
    assert "unverified" not in err
    rc, stdout, err = cli("migrate", FIXTURES / "legacy" / "custom_tlu.h5", "--out",
                          tmp_path / "b.keras", "--truncation-class", "TLU", "--json")
    assert rc == 0, err
    (warning,) = [line for line in err.splitlines() if "unverified" in line]
    assert "layer 'tlu'" in warning and "--custom-objects" in warning
    clip.write_text("import keras\n\nclass TLU(keras.layers.Layer):\n"
                    "    def call(self, x):\n        return keras.ops.clip(x, -3, 3)\n")
    rc, _, err = cli("migrate", FIXTURES / "legacy" / "custom_tlu.h5", "--out",
                     tmp_path / "c.keras", "--truncation-class", "TLU", "--custom-objects", clip)
    assert_one_line_error(rc, err, "layer 'tlu' (class TLU)", "cannot be checked", "deserializing")
    assert not (tmp_path / "c.keras").exists()


# --- stored thresholds ---------------------------------------------------------------------

def test_stored_threshold_of_a_keras3_archive(tmp_path, cli):
    source = tmp_path / "learned.keras"
    builders().build_keras3("learned").save(source)
    rc, _, err = cli("migrate", source, "--out", tmp_path / "x.keras",
                     "--truncation-class", "LearnedTLU=3")
    assert_one_line_error(rc, err, "stores its threshold as the weight", "= 2.5, not 3")
    out = tmp_path / "new.keras"
    rc, stdout, err = cli("migrate", source, "--out", out, "--truncation-class", "LearnedTLU",
                          "--json", "--custom-objects", OBJECTS / "learned_objects.py")
    assert rc == 0, err
    report = json.loads(stdout)
    (layer,) = report["layers"]
    assert (layer["lower"], layer["upper"]) == (-2.5, 2.5) and "checked" in layer["note"]
    original = report["verification"]["original_code"]  # the model with LearnedTLU itself
    assert original["passed"] and original["max_abs_diff"]["normal"] == 0.0
    assert report["safe_mode"] == "loads with safe_mode=True"  # LearnedTLU is gone
    from edgetrunc import load_model

    assert load_model(out).get_layer("tlu").get_config()["threshold"] == 2.5


def test_stored_threshold_of_a_savedmodel(tmp_path, cli):
    rc, _, err = cli("migrate", LEARNED_SM, "--out", tmp_path / "x.keras",
                     "--truncation-class", "LearnedTLU=3")
    assert_one_line_error(rc, err, "weight 'tau' = 2.5, not 3")
    out = tmp_path / "new.keras"
    rc, stdout, err = cli("migrate", LEARNED_SM, "--out", out,
                          "--truncation-class", "LearnedTLU", "--json")
    assert rc == 0, err
    (layer,) = json.loads(stdout)["layers"]
    assert (layer["lower"], layer["upper"]) == (-2.5, 2.5)
    from edgetrunc import load_model

    model = load_model(out)
    x = builders().sample_input(model)
    np.testing.assert_allclose(np.asarray(model(x)), KERAS2_OUTPUTS["learned_savedmodel"],
                               atol=1e-5)


# --- Lambdas that are not truncations --------------------------------------------------------

def test_elementwise_layer_round_trip(tmp_path):
    from edgetrunc.elementwise import Elementwise

    layer = Elementwise("abs", scale=2.0, offset=-1.0, name="e")
    x = np.array([[-2.0, 0.5, 3.0]], "float32")
    np.testing.assert_array_equal(np.asarray(layer(x)), [[3.0, 0.0, 5.0]])
    assert Elementwise.from_config(layer.get_config()).get_config() == layer.get_config()
    inputs = keras.Input((3,))
    model = keras.Model(inputs, Elementwise("square", name="sq")(inputs))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_array_equal(np.asarray(loaded(x)), x ** 2)
    with pytest.raises(ValueError, match="function must be one of"):
        Elementwise("softsign")
    with pytest.raises(ValueError, match="scale must be a finite number"):
        Elementwise(scale=float("inf"))


@pytest.mark.parametrize("fn, expected", [
    (lambda t: keras.ops.abs(t), ("abs", 1.0, 0.0)),
    (lambda t: keras.ops.square(t), ("square", 1.0, 0.0)),
    (lambda t: t / 4.0, ("identity", 0.25, 0.0)),
    (lambda t: -2.0 * keras.ops.abs(t) + 1.0, ("abs", -2.0, 1.0)),
    (lambda t: keras.ops.softsign(t), None),
    (lambda t: t - keras.ops.mean(t), None),
])
def test_probe_elementwise(fn, expected):
    from edgetrunc.migrate.elementwise import probe_elementwise

    inputs = keras.Input((6, 6, 2))
    layer = keras.layers.Lambda(fn, name="f")
    keras.Model(inputs, layer(inputs))
    verdict = probe_elementwise(layer)
    if expected is None:
        assert verdict is None
    else:
        assert (verdict.function, verdict.scale, verdict.offset) == expected


def test_abs_lambda_beside_a_truncation_migrates_to_safe_mode(tmp_path, cli):
    source = tmp_path / "xunet.keras"
    builders().build_keras3("xunet_abs").save(source)
    out = tmp_path / "new.keras"
    rc, stdout, err = cli("migrate", source, "--out", out, "--trust-lambda", "--json")
    assert rc == 0, err
    report = json.loads(stdout)
    verdicts = {layer["layer"]: layer["verdict"] for layer in report["layers"]}
    assert verdicts == {"abs": "elementwise", "tlu": "clip"} and report["kept"] == []
    assert report["safe_mode"] == "loads with safe_mode=True"
    from edgetrunc import load_model

    model = load_model(out)  # safe mode, no trust
    assert type(model.get_layer("abs")).__name__ == "Elementwise"


@pytest.mark.slow
def test_other_lambda_kept_then_converted_as_traced(tmp_path, cli):
    inputs = keras.Input((16, 16, 1), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = keras.layers.Lambda(lambda t: keras.ops.clip(t, -3.0, 3.0), name="tlu")(x)
    x = keras.layers.Lambda(lambda t: t * keras.ops.abs(t), name="signed_square")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    source = tmp_path / "source.keras"
    keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="out")(x)).save(source)
    model = tmp_path / "model.keras"
    rc, stdout, err = cli("migrate", source, "--out", model, "--trust-lambda", "--json")
    assert rc == 0, err
    assert json.loads(stdout)["kept"] == ["signed_square"]
    out = tmp_path / "art"
    rc, _, err = cli("convert", model, "--out", out, "--tflite", "fp32", "--onnx", "fp32")
    assert_one_line_error(rc, err, "signed_square", "give --trust-lambda here")
    assert not out.exists()
    rc, _, err = cli("convert", model, "--out", out, "--tflite", "fp32", "--onnx", "fp32",
                     "--trust-lambda")
    assert rc == 0, err
    assert "signed_square converted as traced" in err
    rc, _, err = cli("parity", model, out / "model_fp32.tflite", out / "model_fp32.onnx",
                     "--samples", "4", "--inputs", "random", "--trust-lambda")
    assert rc == 0, err


def test_activation_keras_knows_is_checked(tmp_path, cli):
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(2, 3, padding="same", name="conv")(inputs)
    x = keras.layers.Activation("relu6", name="six")(x)
    x = keras.layers.Activation("tanh", name="soft")(x)
    source = tmp_path / "source.keras"
    keras.Model(inputs, x).save(source)
    rc, _, err = cli("migrate", source, "--out", tmp_path / "x.keras",
                     "--truncation-class", "tanh=1")
    assert_one_line_error(rc, err, "layer 'soft' (activation tanh)", "Keras's tanh",
                   "computes something else")
    rc, stdout, err = cli("migrate", source, "--out", tmp_path / "new.keras", "--json",
                          "--truncation-class", "relu6")
    assert rc == 0 and "unverified" not in err, err
    (layer,) = json.loads(stdout)["layers"]
    assert (layer["lower"], layer["upper"]) == (0.0, 6.0)
    assert "checked against its code (Keras's relu6)" in layer["note"]


def test_a_module_named_in_the_file_is_never_imported_with_custom_objects(tmp_path, cli):
    import sys
    import zipfile

    inputs = keras.Input((4,))
    source = tmp_path / "plain.keras"
    keras.Model(inputs, keras.layers.Dense(2, name="dense")(inputs)).save(source)
    hostile = tmp_path / "hostile.keras"
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(hostile, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == "config.json":
                config = json.loads(data)
                dense = config["config"]["layers"][-1]
                dense.update(module="edgetrunc_marker_never_imported", class_name="Evil",
                             registered_name="Evil")
                data = json.dumps(config).encode()
            dst.writestr(name, data)
    (tmp_path / "edgetrunc_marker_never_imported.py").write_text("raise SystemExit(3)\n")
    sys.path.insert(0, str(tmp_path))
    try:
        rc, _, err = cli("convert", hostile, "--out", tmp_path / "art",
                         "--custom-objects", OBJECTS / "gbras_objects.py")
    finally:
        sys.path.remove(str(tmp_path))
    assert_one_line_error(rc, err, "needs Evil", "gbras_objects.py does not define")
    assert "edgetrunc_marker_never_imported" not in sys.modules
