"""Importing edgetrunc (and its TensorFlow-free modules) never imports TensorFlow."""

import subprocess
import sys

import pytest


def test_package_import_does_not_import_tensorflow():
    code = (
        "import sys, edgetrunc, edgetrunc.errors, edgetrunc._io, edgetrunc.cli; "
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'; "
        "assert 'keras' not in sys.modules, 'keras imported'; print(edgetrunc.__version__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()


@pytest.mark.slow
def test_truncation_is_reexported_lazily():
    code = "import edgetrunc; from edgetrunc import Truncation; print(Truncation.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("Truncation")


@pytest.mark.slow
def test_load_model_registers_truncation_first(tmp_path):
    """Saved here; loaded in a fresh process that has imported nothing but edgetrunc."""
    import keras

    from edgetrunc.layers import Truncation

    inputs = keras.Input((4,))
    keras.Model(inputs, Truncation(2.0)(inputs)).save(tmp_path / "m.keras")
    load = (f"import edgetrunc; m = edgetrunc.load_model({str(tmp_path / 'm.keras')!r}); "
            "print(type(m.layers[-1]).__name__)")
    out = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "Truncation"


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    import os
    import stat

    from edgetrunc._io import write_text_atomic

    target = tmp_path / "out.json"
    write_text_atomic(target, "{}")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
