"""`pip install ".[runtime]"` into a fresh virtual environment: no TensorFlow; `infer` and `run` work.

The package is built from a copy of its source (so the checkout gets no build folder) and
installed non-editable with the pinned constraints, as a device would install it. Needs
the package index (or a warm pip cache); it takes about a minute.
"""

import json
import shutil
import subprocess
import sys
import venv

import pytest

from runtime_artifacts import ROOT, detector_artifacts, write_test_images

SOURCE_FILES = ("pyproject.toml", "README.md", "constraints.txt", "LICENSE")


def _copy_source(dest):
    dest.mkdir()
    for name in SOURCE_FILES:
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / "edgetrunc", dest / "edgetrunc",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


@pytest.mark.slow
def test_runtime_extra_installs_without_tensorflow_and_runs_infer(tmp_path):
    artifacts = detector_artifacts()
    image = write_test_images(tmp_path / "images")["square512.png"]
    source = _copy_source(tmp_path / "src")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / ("Scripts" if sys.platform == "win32" else "bin") / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "-c", str(source / "constraints.txt"), f"{source}[runtime]"],
        capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]

    listed = subprocess.run([str(python), "-m", "pip", "list", "--format=json"],
                            capture_output=True, text=True, check=True)
    installed = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"edgetrunc", "ai-edge-litert", "onnxruntime", "numpy", "pillow"} <= installed
    assert not {"tensorflow", "tensorflow-cpu", "keras", "tf-keras"} & installed

    probe = subprocess.run([str(python), "-c", "import tensorflow"], capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'tensorflow'" in probe.stderr

    edgetrunc = env_dir / "bin" / "edgetrunc"
    for backend in ("tflite", "onnx"):
        out = subprocess.run([str(edgetrunc), "infer", str(artifacts[backend]), str(image), "--json"],
                             capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert out.returncode == 0, out.stderr
        (result,) = json.loads(out.stdout)["results"]
        assert len(result["tiles"]) == 4 and result["decision"] in ("cover", "stego")

    # `edgetrunc run` records outputs on saved inputs, as on a device (no onnx package either)
    import numpy as np

    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, x=np.random.default_rng(0).integers(0, 256, (3, 256, 256, 1)).astype(np.float32))
    for backend in ("tflite", "onnx"):
        recorded = tmp_path / f"{backend}.npz"
        out = subprocess.run([str(edgetrunc), "run", str(artifacts[backend]), str(inputs), "--out",
                              str(recorded), "--json"], capture_output=True, text=True, cwd=tmp_path,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["samples"] == 3 and recorded.exists()
