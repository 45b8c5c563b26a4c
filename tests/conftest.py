"""Shared fixtures: quiet TensorFlow, fixed seeds, the command line run in-process."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

# edgetrunc's pytest plugin (also loaded by its pytest11 entry point once installed); pytester
# runs a user's test file in tests/test_testing.py
pytest_plugins = ["edgetrunc.testing.plugin", "pytester"]


@pytest.fixture(autouse=True)
def _seed():
    import numpy as np

    np.random.seed(0)
    yield


@pytest.fixture
def cli(capsys):
    """`cli(*args)` runs `edgetrunc -q ARGS` in this process: `(exit code, stdout, stderr)`."""
    from edgetrunc.cli import main

    def run(*args):
        code = main(["-q", *map(str, args)])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


# shared models and artifacts (one definition each) -------------------------------------------

@pytest.fixture(scope="session")
def tiny_keras(tmp_path_factory):
    """A small Keras 3 detector-shaped model with one Truncation, saved as `tiny.keras`."""
    import keras

    from edgetrunc.layers import Truncation

    folder = tmp_path_factory.mktemp("tiny")
    inputs = keras.Input((32, 32, 1), name="image")
    x = keras.layers.Conv2D(2, 3, padding="same", name="conv")(inputs)
    x = Truncation(3.0, name="tlu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="head")(x)
    path = folder / "tiny.keras"
    keras.Model(inputs, outputs, name="tiny").save(path)
    return path


@pytest.fixture(scope="session")
def two_input_keras(tmp_path_factory):
    """A small Keras 3 model with two inputs (`pixels`, `aux`), two outputs (`score`,
    `embedding`) and a Truncation on each branch (`scripts/make_custom_models.py`), saved as
    `two_input.keras`."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "make_custom_models.py"
    spec = importlib.util.spec_from_file_location("make_custom_models", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import keras

    keras.utils.set_random_seed(0)
    path = tmp_path_factory.mktemp("two_input") / "two_input.keras"
    module.build_two_input().save(path)
    return path


@pytest.fixture(scope="session")
def detector():
    """Detector artifacts (`[N, 2]` softmax): `{"tflite": path, "onnx": path}` (fp32), the
    shipped ones when `models/` holds them (`runtime_artifacts.detector_artifacts`)."""
    from runtime_artifacts import detector_artifacts

    return detector_artifacts()


@pytest.fixture(scope="session")
def block():
    """Seed-block artifacts (`runtime_artifacts.block_artifacts`): fp32, fp16, int8, onnx,
    onnx_nchw and the Keras model."""
    from runtime_artifacts import block_artifacts

    return block_artifacts()


@pytest.fixture(scope="module")
def model():
    """The 32x32 tlunet (seed 0) that the int8 and full-integer export tests convert; one per
    test module."""
    from edgetrunc.models import create

    return create("tlunet", input_shape=(32, 32, 1), seed=0)


@pytest.fixture(scope="module")
def calibration():
    """16 random 32x32 pixel tiles (seed 0) to calibrate `model`'s int8 export."""
    import numpy as np

    return np.random.default_rng(0).uniform(0, 255, (16, 32, 32, 1)).astype(np.float32)
