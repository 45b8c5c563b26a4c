"""The runtime imports and runs real artifacts in a process where TensorFlow cannot be imported.

A fake `tensorflow` (and `keras`, `tf_keras`) package that raises ImportError is put first
on the path of a subprocess; every `edgetrunc.runtime` module is imported there, and
`edgetrunc infer` / `edgetrunc bench` run the `.tflite` and `.onnx` artifacts.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from runtime_artifacts import ROOT, write_test_images

BLOCKED = ("tensorflow", "keras", "tf_keras")


@pytest.fixture(scope="module")
def blocked_env(tmp_path_factory):
    fake = tmp_path_factory.mktemp("no_tensorflow")
    for name in BLOCKED:
        (fake / name).mkdir()
        (fake / name / "__init__.py").write_text(
            f"raise ImportError('{name} is blocked: the runtime must not import it')\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(fake), str(ROOT)])
    return env


def _run(env, *args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_tensorflow_is_really_blocked(blocked_env):
    out = _run(blocked_env, "-c", "import tensorflow")
    assert out.returncode != 0 and "tensorflow is blocked" in out.stderr


def test_every_runtime_module_imports_without_tensorflow(blocked_env):
    code = textwrap.dedent("""
        import importlib, pkgutil, sys
        import edgetrunc.runtime as runtime
        names = [m.name for m in pkgutil.walk_packages(runtime.__path__, "edgetrunc.runtime.")]
        for name in names + ["edgetrunc.data", "edgetrunc.cli.infer", "edgetrunc.cli.bench"]:
            importlib.import_module(name)
        runtime.bench_artifacts
        assert not {"tensorflow", "keras"} & set(sys.modules), sorted(sys.modules)
        print(len(names))
    """)
    out = _run(blocked_env, "-c", code)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= 5


@pytest.mark.slow
def test_infer_and_bench_run_without_tensorflow(blocked_env, detector, tmp_path):
    image = write_test_images(tmp_path)["square512.png"]
    for backend in ("tflite", "onnx"):
        out = _run(blocked_env, "-m", "edgetrunc", "infer", str(detector[backend]), str(image),
                   "--json")
        assert out.returncode == 0, out.stderr
        (result,) = json.loads(out.stdout)["results"]
        assert len(result["tiles"]) == 4
    out = _run(blocked_env, "-m", "edgetrunc", "bench", str(detector["tflite"]),
               str(detector["onnx"]), "--runs", "2", "--warmup", "1", "--json")
    assert out.returncode == 0, out.stderr
    assert [r["format"] for r in json.loads(out.stdout)["results"]] == ["tflite", "onnx"]


@pytest.mark.slow
def test_every_shipped_artifact_runs_without_tensorflow(blocked_env, tmp_path):
    from runtime_artifacts import shipped_artifacts

    shipped = shipped_artifacts()
    if not shipped:
        pytest.skip("no shipped artifacts in models/ yet")
    image = write_test_images(tmp_path)["tile256.pgm"]
    for (fmt, precision), path in shipped.items():
        out = _run(blocked_env, "-m", "edgetrunc", "infer", str(path), str(image), "--json")
        assert out.returncode == 0, (path, out.stderr)
        assert f"{fmt} {precision}" in out.stderr
        assert len(json.loads(out.stdout)["results"][0]["tiles"]) == 1


def test_missing_interpreter_is_a_clear_error(blocked_env, detector, tmp_path):
    fake = tmp_path / "no_litert"
    for name in ("ai_edge_litert", "tflite_runtime"):
        (fake / name).mkdir(parents=True)
        (fake / name / "__init__.py").write_text(f"raise ImportError('{name} is blocked')\n")
    env = dict(blocked_env, PYTHONPATH=os.pathsep.join([str(fake), blocked_env["PYTHONPATH"]]))
    image = write_test_images(tmp_path / "images")["tile256.pgm"]
    out = _run(env, "-m", "edgetrunc", "infer", str(detector["tflite"]), str(image))
    assert out.returncode == 2
    assert "no TFLite interpreter installed" in out.stderr and "Traceback" not in out.stderr
