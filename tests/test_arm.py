"""aarch64 without a device: the TensorFlow-free runtime under qemu-user emulation
(`scripts/arm_parity.py`, `scripts/_arm_sysroot.py`), recordings that say where they ran, the
x86-64 vs aarch64 comparison of recordings, and the runtime extra resolving to aarch64 wheels.

The emulated test builds the arm64 sysroot and the aarch64 site folder once (cached in
`.aarch64/`; about a minute with the registries reachable) and installs qemu-user-static when it
is missing and this is root on Debian; it is skipped, with the reason, only where that is not
possible.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
CI_ARTIFACTS = ("tlunet_fp32.tflite", "tlunet_int8.tflite", "tlunet_fp32.onnx")


def _load_script(name):
    sys.path.insert(0, str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sysroot = _load_script("_arm_sysroot")
kernels = _load_script("_arm_kernels")


def test_cpu_profiles_are_the_cores_they_name():
    from edgetrunc.runtime.host import parse_cpuinfo, where_label

    a76, a53 = parse_cpuinfo(sysroot.cpuinfo("A76")), parse_cpuinfo(sysroot.cpuinfo("A53"))
    assert (a76["cpu"], a76["cores"]) == ("Cortex-A76", 4)
    assert {"asimd", "asimdhp", "asimddp"} <= set(a76["features"])
    assert (a53["cpu"], a53["features"]) == ("Cortex-A53", ["asimd"])  # plain NEON
    assert sysroot.PROFILES["A76"]["qemu_cpu"] == "cortex-a76"
    assert sysroot.PROFILES["A53"]["qemu_cpu"] == "cortex-a53"
    x86 = parse_cpuinfo("processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t: fpu avx2\n")
    assert (x86["cpu"], x86["features"]) == ("AMD EPYC 7B13", [])
    where = {"architecture": "aarch64", "cpu": "Cortex-A76", "emulator": "qemu-aarch64-static"}
    assert where_label(where) == "aarch64 (Cortex-A76, emulated)"
    assert where_label({"architecture": "x86-64", "cpu": None, "emulator": None}) == "x86-64"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from edgetrunc.runtime.recorded import save_inputs

    path = tmp_path_factory.mktemp("arm") / "inputs.npz"
    x = np.random.default_rng(0).integers(0, 256, (2, 256, 256, 1)).astype(np.float32)
    save_inputs(path, x)
    return path


def _tamper(path, out, steps: float = 0.0, **meta):
    """A copy of the recording `path` with its output moved by `steps` and `meta` changed."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    key = next(k for k in arrays if k.startswith("output:"))
    arrays[key] = arrays[key] + np.float32(steps)
    arrays["meta"] = np.array(json.dumps({**json.loads(str(arrays["meta"])), **meta}))
    with open(out, "wb") as stream:
        np.savez(stream, **arrays)


def test_recordings_say_where_and_compare_by_quantization_step(inputs, tmp_path, cli):
    from edgetrunc.errors import InputError
    from edgetrunc.parity.recordings import compare_recordings, per_layer, side_by_side
    from edgetrunc.runtime.recorded import RecordedRunner, record_outputs

    int8 = MODELS / "tlunet_int8.tflite"
    code, _, err = cli("run", int8, inputs, "--out", tmp_path / "a.npz", "--threads", 1,
                       "--intermediates", 1)
    assert code == 0, err
    record = RecordedRunner(tmp_path / "a.npz").record
    assert record["where"]["architecture"] in ("x86-64", "aarch64")
    assert {"numpy", "ai-edge-litert", "onnxruntime"} <= set(record["where"]["versions"])
    assert record["tensor_samples"] == 1 and len(record["tensors"]) > 10
    record_outputs(int8, inputs, tmp_path / "b.npz", threads=1)
    same = compare_recordings(tmp_path / "a.npz", tmp_path / "b.npz")
    assert same.passed and same.largest_tensor() is None  # b holds no tensors
    (output,) = same.outputs.values()
    assert output["max_abs"] == 0 and 0.01 < output["step"] < 0.2  # the classifier's int8 scale
    itself = compare_recordings(tmp_path / "a.npz", tmp_path / "a.npz")
    assert len(itself.tensors) > 10 and itself.largest_tensor().max_abs == 0
    assert "group2_tanh" in per_layer(itself) and itself.most_steps().steps == 0
    _tamper(tmp_path / "b.npz", tmp_path / "c.npz", 1.5 * output["step"])
    off = compare_recordings(tmp_path / "a.npz", tmp_path / "c.npz")
    assert not off.passed and "quantization step" in off.failures[0]
    assert "FAIL" in side_by_side([off]) and "PASS" in side_by_side([same])
    _tamper(tmp_path / "b.npz", tmp_path / "f.npz", artifact_sha256="0" * 64)
    with pytest.raises(InputError, match="another artifact"):
        compare_recordings(tmp_path / "a.npz", tmp_path / "f.npz")
    with pytest.raises(InputError, match="--intermediates"):
        compare_recordings(tmp_path / "b.npz", tmp_path / "a.npz")


@pytest.mark.slow
def test_runtime_extra_resolves_to_aarch64_wheels(tmp_path):
    """`pip install ".[runtime]"` for Python 3.11 on aarch64 Linux: every compiled wheel is an
    aarch64 one (pure-Python wheels aside), at the pins of constraints.txt."""
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
         "--disable-pip-version-check", "--report", str(report), "--target", str(tmp_path / "t"),
         *sysroot.pip_platform_args(), "-c", str(ROOT / "constraints.txt"), f"{ROOT}[runtime]"],
        capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    wheels = {item["metadata"]["name"].lower(): item["download_info"]["url"].rsplit("/", 1)[-1]
              for item in json.loads(report.read_text())["install"]
              if item["metadata"]["name"] != "edgetrunc"}
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    for name in ("numpy", "pillow", "ai-edge-litert", "onnxruntime"):
        assert name in wheels, sorted(wheels)
        assert "aarch64" in wheels[name] and f"-{pins[name]}-" in wheels[name], wheels[name]
    assert not [w for w in wheels.values() if "x86_64" in w or "win" in w or "macosx" in w]
    assert all("aarch64" in w or w.endswith("-any.whl") for w in wheels.values()), wheels


@pytest.fixture(scope="module")
def emulation():
    try:
        return sysroot.build(ROOT / ".aarch64", profiles=("A76",))
    except sysroot.Unavailable as exc:
        pytest.skip(f"aarch64 emulation unavailable: {exc}")


# The emulated side: TensorFlow, Keras and onnx unimportable; one process records every artifact.
_NO_TF = ("import json, sys\nfor name in ('tensorflow', 'keras', 'onnx', 'tf2onnx'):\n"
          "    sys.modules[name] = None\nfrom edgetrunc.cli import main\n"
          "sys.exit(max(main(args) for args in json.loads(sys.argv[1])))\n")


@pytest.mark.slow
def test_emulated_aarch64_parity(emulation, cli, tmp_path):
    """2 held-out photos x (TFLite fp32, TFLite int8, ONNX fp32) recorded by `edgetrunc run` on
    an emulated Cortex-A76 with TensorFlow, Keras and onnx unimportable, its int8 dot-product
    kernels taken; each recording passes parity against Keras and matches the x86-64 recording
    (int8: within one step)."""
    from edgetrunc.parity.recordings import compare_recordings
    from edgetrunc.runtime.recorded import RecordedRunner, record_outputs

    inputs = tmp_path / "inputs.npz"
    artifacts = [MODELS / name for name in CI_ARTIFACTS]
    code, _, err = cli("parity", MODELS / "tlunet.keras", *artifacts, "--samples", 2, "--inputs",
                       "covers", "--no-probes", "--save-inputs", inputs)
    assert code == 0, err
    here = [tmp_path / f"{a.name}.x86.npz" for a in artifacts]
    there = [tmp_path / f"{a.name}.a76.npz" for a in artifacts]
    runs = [["-q", "run", str(a), str(inputs), "--out", str(out), "--threads", "1"]
            for a, out in zip(artifacts, there)]
    command = sysroot.command(ROOT / ".aarch64", "A76", ["-c", _NO_TF, json.dumps(runs)])
    done = subprocess.run(kernels.traced(command, tmp_path / "in_asm.log"), capture_output=True,
                          text=True, env=sysroot.environment(ROOT / ".aarch64", "A76"))
    assert done.returncode == 0, done.stderr[-2000:]
    taken = kernels.count(tmp_path / "in_asm.log")  # the A76's int8 dot-product kernels ran
    assert taken.get("dot product (sdot/udot)", 0) > 0, taken
    for artifact, x86, arm in zip(artifacts, here, there):
        record_outputs(artifact, inputs, x86, threads=1, intermediates=1)
        where = RecordedRunner(arm).record["where"]
        assert (where["architecture"], where["cpu"]) == ("aarch64", "Cortex-A76")
        assert {"asimdhp", "asimddp"} <= set(where["features"]) and where["emulator"]
        assert RecordedRunner(arm).record["samples_per_second"] is None  # emulated: not a figure
        comparison = compare_recordings(x86, arm)
        assert comparison.passed, comparison.failures
        if "int8" in artifact.name:
            assert all(o["steps"] <= 1 for o in comparison.outputs.values())
    code, out, err = cli("parity", MODELS / "tlunet.keras", *there, "--inputs", inputs, "--no-probes")
    assert code == 0, out + err
    assert out.count("aarch64 (Cortex-A76, emulated)") == len(there)
