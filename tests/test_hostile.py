"""Hostile files and careless paths (docs/SECURITY.md): nothing named in a file is imported or
run, no input is replaced, no output set is left half-written, resources are bounded, and every
cause ends with exit 0, 1 or 2 as documented, one line, never a traceback.

Commands run as the installed console script in a subprocess (as a user runs them), from a
scratch folder that holds decoys: a module that writes a marker file when it is imported;
refusals whose point is the message and the files, not the process, run in-process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
CLI = Path(sys.executable).parent / "edgetrunc"
MARKER_MODULE = "edgetrunc_hostile_marker"


def _decoys(folder: Path) -> Path:
    """Modules that leave `folder/IMPORTED-<name>` behind when something imports them."""
    marker = folder / "IMPORTED"
    code = ("import pathlib\n"
            f"pathlib.Path({str(marker)!r} + '-' + __name__).write_text('ran')\n")
    for name in (MARKER_MODULE, "json", "numpy", "onnx", "tensorflow", "keras"):
        (folder / f"{name}.py").write_text(code)
    return marker


def _importable_marker(scratch: Path) -> Path:
    """A folder holding only the marker module (importable when on PYTHONPATH), which leaves
    `scratch/IMPORTED-<name>` behind when imported; the decoys named like real packages stay
    in the cwd only, which a console script does not put on sys.path."""
    folder = scratch.parent / "importable"
    folder.mkdir(exist_ok=True)
    shutil.copyfile(scratch / f"{MARKER_MODULE}.py", folder / f"{MARKER_MODULE}.py")
    return folder


def _markers(folder: Path) -> list:
    return sorted(p.name for p in folder.glob("IMPORTED*"))


def edgetrunc(*args, cwd, timeout=300, env=None, stdout=subprocess.PIPE):
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
    return subprocess.run([str(CLI), *map(str, args)], cwd=cwd, env=environment, stdout=stdout,
                          stderr=subprocess.PIPE, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def in_process(cli, *args):
    """`edgetrunc ARGS` run in this process (the `cli` fixture) as a `subprocess.run` result: for
    refusals whose point is the message and the files, not the process."""
    code, out, err = cli(*args)
    return subprocess.CompletedProcess(args, code, out, err)


def assert_one_line(result, code=2, *needles):
    err = result.stderr.strip()
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    if code == 2:
        lines = [line for line in err.splitlines() if "error:" in line]
        assert len(lines) == 1, err
        for needle in needles:
            assert needle in lines[0], (needle, lines[0])


@pytest.fixture()
def scratch(tmp_path):
    folder = tmp_path / "cwd"
    folder.mkdir()
    _decoys(folder)
    return folder


def _rewrite_config(source: Path, target: Path, change) -> Path:
    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    change(config)
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return target


def _layers(config):
    return config["config"]["layers"]


# nothing named in a file is imported -------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("command", ["evaluate", "parity", "migrate", "convert"])
def test_a_module_named_in_a_keras_config_is_never_imported(tiny_keras, scratch, command):
    def name_a_module(config):
        layer = _layers(config)[1]
        layer["module"] = MARKER_MODULE
        layer["class_name"] = "Marker"
        layer.pop("registered_name", None)

    hostile = _rewrite_config(tiny_keras, scratch / "hostile.keras", name_a_module)
    before = hostile.read_bytes()
    args = {"evaluate": ["evaluate", hostile],
            "parity": ["parity", hostile, MODELS / "tlunet_fp32.tflite", "--inputs", "random",
                       "--samples", "2"],
            "migrate": ["migrate", hostile, "--out", scratch / "new.keras"],
            "convert": ["convert", hostile, "--out", scratch / "out", "--tflite", "fp32", "--onnx", ""]}
    result = edgetrunc(*args[command], cwd=scratch,
                       env={"PYTHONPATH": str(_importable_marker(scratch))})
    assert _markers(scratch) == []
    assert_one_line(result, 2, "Marker")
    assert hostile.read_bytes() == before
    assert not (scratch / "new.keras").exists() and not (scratch / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("command", ["evaluate", "parity", "migrate", "convert"])
def test_a_module_named_in_an_h5_config_is_never_imported(scratch, command):
    import h5py

    hostile = scratch / "hostile.h5"
    shutil.copyfile(ROOT / "tests" / "fixtures" / "legacy" / "tfop_clip.h5", hostile)
    with h5py.File(hostile, "r+") as handle:
        config = json.loads(handle.attrs["model_config"])
        layer = _layers(config)[1]  # conv1
        layer.update(class_name="Marker", module=MARKER_MODULE)
        handle.attrs["model_config"] = json.dumps(config)
    before = hostile.read_bytes()
    args = {"evaluate": ["evaluate", hostile],
            "parity": ["parity", hostile, MODELS / "tlunet_fp32.tflite", "--inputs", "random",
                       "--samples", "2"],
            "migrate": ["migrate", hostile, "--out", scratch / "new.keras"],
            "convert": ["convert", hostile, "--out", scratch / "out", "--tflite", "fp32", "--onnx", ""]}
    result = edgetrunc(*args[command], cwd=scratch,
                       env={"PYTHONPATH": str(_importable_marker(scratch))})
    assert _markers(scratch) == []
    assert_one_line(result, 2, "Marker" if command != "parity" else "hostile.h5")
    assert hostile.read_bytes() == before
    assert not (scratch / "new.keras").exists() and not (scratch / "out").exists()


def test_an_object_under_a_module_keras_would_import_is_refused(tiny_keras, tmp_path):
    from edgetrunc.errors import InputError
    from edgetrunc.keras.load import load_keras_model

    def hub_initializer(config):
        _layers(config)[1]["config"]["kernel_initializer"] = {
            "module": "keras_hub.src.evil", "class_name": "Evil", "config": {},
            "registered_name": None}

    hostile = _rewrite_config(tiny_keras, tmp_path / "hub.keras", hub_initializer)
    with pytest.raises(InputError, match="hub.keras: layer 'conv' is of class 'Evil'"):
        load_keras_model(hostile)


def test_classes_registered_in_python_still_resolve(tmp_path):
    import keras

    from edgetrunc.keras.load import load_keras_model

    @keras.saving.register_keras_serializable(package="hostile_test")
    class Doubling(keras.layers.Layer):
        def call(self, x):
            return x * 2.0

    inputs = keras.Input((3,))
    path = tmp_path / "registered.keras"
    keras.Model(inputs, Doubling(name="double")(inputs)).save(path)
    assert type(load_keras_model(path).layers[-1]) is Doubling
    keras.saving.get_custom_objects().pop("hostile_test>Doubling")
    assert type(load_keras_model(path, custom_objects={"hostile_test>Doubling": Doubling})
                .layers[-1]) is Doubling


def test_the_marker_module_is_importable_from_its_folder(scratch):
    """The module tests above would pass vacuously if the marker could not be imported."""
    subprocess.run([sys.executable, "-c", f"import {MARKER_MODULE}"], cwd=scratch.parent, check=True,
                   env=dict(os.environ, PYTHONPATH=str(_importable_marker(scratch))))
    assert _markers(scratch) == [f"IMPORTED-{MARKER_MODULE}"]


def test_bench_does_not_run_code_from_the_current_folder(scratch):
    result = edgetrunc("bench", MODELS / "tlunet_int8.tflite", "--runs", "1", "--warmup", "0",
                       cwd=scratch)
    assert result.returncode == 0, result.stderr
    assert _markers(scratch) == []


# outputs never replace inputs or special files ---------------------------------------------

@pytest.fixture(scope="module")
def saved_inputs(tmp_path_factory):
    from edgetrunc.runtime.recorded import save_inputs

    path = tmp_path_factory.mktemp("inputs") / "in.npz"
    save_inputs(path, np.random.default_rng(0).integers(0, 256, (2, 256, 256, 1)).astype(np.float32))
    return path


@pytest.mark.parametrize("option", ["--json", "--html"])
def test_parity_reports_never_replace_an_input(saved_inputs, scratch, cli, option):
    inputs = scratch / "in.npz"
    shutil.copy(saved_inputs, inputs)
    before = inputs.read_bytes()
    artifact = MODELS / "tlunet_fp32.tflite"
    for target in (inputs, artifact):
        result = in_process(cli, "parity", MODELS / "tlunet.keras", artifact, "--inputs", inputs,
                            "--no-probes", option, target)
        assert_one_line(result, 2, "input")
    assert inputs.read_bytes() == before


def test_parity_json_streams_into_a_fifo_and_devices(saved_inputs, scratch, cli):
    result = in_process(cli, "parity", MODELS / "tlunet.keras", MODELS / "tlunet_int8.tflite",
                        "--inputs", saved_inputs, "--no-probes", "--json", "/dev/null")
    assert result.returncode == 0, result.stderr
    assert Path("/dev/null").is_char_device()
    link = scratch / "report.json"
    link.symlink_to(scratch / "real.json")
    result = in_process(cli, "parity", MODELS / "tlunet.keras", MODELS / "tlunet_int8.tflite",
                        "--inputs", saved_inputs, "--no-probes", "--json", link)
    assert result.returncode == 0, result.stderr
    assert link.is_symlink() and json.loads((scratch / "real.json").read_text())["passed"] is True


def test_write_helpers_stream_to_a_fifo(tmp_path):
    import threading

    from edgetrunc._io import write_text_atomic

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    write_text_atomic(fifo, "through")
    reader.join(timeout=10)
    assert got == ["through"] and fifo.exists() and not fifo.is_file()
    assert os.listdir(tmp_path) == ["pipe"]


def test_a_failed_write_removes_its_temporary_file_and_names_the_path(tmp_path, monkeypatch):
    from edgetrunc._io import write_text_atomic
    from edgetrunc.errors import InputError

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(InputError, match="out.json.*No space left on device"):
        write_text_atomic(tmp_path / "out.json", "x" * 1000)
    assert os.listdir(tmp_path) == []


# ONNX external data ------------------------------------------------------------------------

def _external_data_model(folder: Path, value: float) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    weight = numpy_helper.from_array(np.full((1, 4, 4, 1), value, np.float32), "w")
    graph = helper.make_graph([helper.make_node("Add", ["input", "w"], ["out"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4, 4, 1])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 4, 1])],
                              [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "m.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.bin", size_threshold=0)
    return path


@pytest.mark.slow
def test_onnx_external_data_is_read_beside_the_model(tmp_path, scratch):
    model = _external_data_model(tmp_path / "model", 1.0)
    _external_data_model(scratch, 100.0)  # a decoy m.bin in the current folder
    (scratch / "m.onnx").unlink()
    result = edgetrunc("bench", model, "--runs", "1", "--warmup", "0", "--json", cwd=scratch)
    assert result.returncode == 0, result.stderr
    from edgetrunc.runtime import open_runner

    here = os.getcwd()
    try:
        os.chdir(scratch)
        out = open_runner(model).infer(np.zeros((1, 4, 4, 1), np.float32))
    finally:
        os.chdir(here)
    assert float(next(iter(out.values())).max()) == 1.0


@pytest.mark.slow
def test_onnx_external_data_outside_the_model_folder_is_refused(tmp_path, scratch):
    import onnx

    model = _external_data_model(tmp_path / "model", 1.0)
    proto = onnx.load(str(model), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../../secret.bin"
    onnx.save(proto, str(model))
    result = edgetrunc("bench", model, "--runs", "1", "--warmup", "0", cwd=scratch)
    assert_one_line(result, 2, "m.onnx")


# convert commits a set ---------------------------------------------------------------------

CONVERT_STEPS = ("after-staging", "after-artifact", "before-manifest", "after-manifest")


def _set_is_consistent(folder: Path) -> bool:
    manifest = json.loads((folder / "manifest.json").read_text())
    from edgetrunc._io import sha256_file

    return all(sha256_file(folder / e["path"]) == e["sha256"] for e in manifest["artifacts"])


@pytest.fixture(scope="module")
def first_set(tiny_keras, tmp_path_factory):
    """The set a first convert of `tiny_keras` commits (fp32 TFLite and ONNX), made once."""
    from edgetrunc.cli import main

    out = tmp_path_factory.mktemp("first") / "out"
    assert main(["-q", "convert", str(tiny_keras), "--out", str(out), "--tflite", "fp32",
                 "--onnx", "fp32"]) == 0
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    return out


@pytest.mark.slow
@pytest.mark.parametrize("step", CONVERT_STEPS)
def test_a_killed_convert_leaves_the_old_set_or_the_new_one(tiny_keras, first_set, tmp_path, cli,
                                                           step):
    from edgetrunc.export.commit import JOURNAL, recover

    out = shutil.copytree(first_set, tmp_path / "out")
    old = (out / "manifest.json").read_text()
    killed = edgetrunc("convert", tiny_keras, "--out", out, "--tflite", "fp32,fp16", "--onnx", "fp32",
                       "--force", cwd=tmp_path, env={"EDGETRUNC_FAULT": f"convert:{step}"})
    assert killed.returncode == -9, killed.stderr
    if not (out / JOURNAL).exists():  # killed before the commit record: the old set stands
        assert (out / "manifest.json").read_text() == old and _set_is_consistent(out)
    recover(out)  # what the next convert into the folder does first, under its lock
    assert _set_is_consistent(out)
    now = (out / "manifest.json").read_text()
    if step == "after-staging":
        assert now == old
    else:
        assert len(json.loads(now)["artifacts"]) == 3
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [".edgetrunc.lock"]  # unheld
    again = cli("convert", tiny_keras, "--out", out, "--tflite", "fp32", "--onnx", "fp32", "--force")
    assert again[0] == 0 and _set_is_consistent(out), again
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


@pytest.mark.slow
def test_a_second_convert_into_a_locked_folder_is_refused(tiny_keras, tmp_path):
    import fcntl

    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".edgetrunc.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = edgetrunc("convert", tiny_keras, "--out", out, "--tflite", "fp32", "--onnx", "",
                           cwd=tmp_path)
    assert_one_line(result, 2, "another")
    assert [p.name for p in out.iterdir()] == [".edgetrunc.lock"]


@pytest.mark.slow
def test_a_refused_convert_creates_nothing(tmp_path):
    out = tmp_path / "new" / "folder"
    result = edgetrunc("convert", tmp_path / "missing.keras", "--out", out, cwd=tmp_path)
    assert_one_line(result, 2, "missing.keras")
    assert not (tmp_path / "new").exists()


# resources are bounded ---------------------------------------------------------------------

@pytest.mark.slow
def test_a_keras_archive_whose_config_expands_hugely_is_refused(tiny_keras, tmp_path):
    bomb = tmp_path / "bomb.keras"
    with zipfile.ZipFile(tiny_keras) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members["config.json"] = members["config.json"][:-1] + b" " * (300 << 20) + b"}"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    assert bomb.stat().st_size < 2 << 20
    result = edgetrunc("evaluate", bomb, cwd=tmp_path, timeout=120)
    assert_one_line(result, 2, "bomb.keras")


@pytest.mark.slow
@pytest.mark.parametrize("levels", [5000, 300])
def test_a_deeply_nested_config_is_refused(tiny_keras, tmp_path, levels):
    # written as text: json.dumps itself cannot encode 5000 levels
    deep_text = '{"x": ' * levels + "{}" + "}" * levels

    def nest(config):
        _layers(config)[1]["config"]["deep"] = "DEEP-PLACEHOLDER"

    hostile = _rewrite_config(tiny_keras, tmp_path / "deep.keras", nest)
    with zipfile.ZipFile(hostile) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members["config.json"] = members["config.json"].replace(b'"DEEP-PLACEHOLDER"',
                                                            deep_text.encode())
    with zipfile.ZipFile(hostile, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    result = edgetrunc("evaluate", hostile, cwd=tmp_path)
    assert_one_line(result, 2, "deep.keras", "200")


def test_a_deeply_nested_h5_config_is_refused(tmp_path):
    import h5py

    hostile = tmp_path / "deep.h5"
    shutil.copyfile(ROOT / "tests" / "fixtures" / "legacy" / "tfop_clip.h5", hostile)
    with h5py.File(hostile, "r+") as handle:
        text = handle.attrs["model_config"]
        handle.attrs["model_config"] = text[:-1] + ', "deep": ' + "[" * 5000 + "]" * 5000 + "}"
    result = edgetrunc("migrate", hostile, "--out", tmp_path / "new.keras", cwd=tmp_path)
    assert_one_line(result, 2, "deep.h5", "200")
    assert not (tmp_path / "new.keras").exists()


def test_a_keras_archive_with_too_many_members_or_an_escaping_name_is_refused(tiny_keras,
                                                                            tmp_path, cli):
    with zipfile.ZipFile(tiny_keras) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    many, escaping = tmp_path / "many.keras", tmp_path / "escaping.keras"
    with zipfile.ZipFile(many, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        for index in range(10_001):
            archive.writestr(f"assets/{index}", b"")
    with zipfile.ZipFile(escaping, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        archive.writestr("../outside.txt", b"x")
    assert_one_line(in_process(cli, "evaluate", many), 2, "many.keras", "10000")
    assert_one_line(in_process(cli, "evaluate", escaping), 2, "escaping.keras", "..")
    assert not (tmp_path.parent / "outside.txt").exists()


@pytest.mark.slow
def test_an_h5_with_a_huge_model_config_is_refused(tmp_path):
    import h5py

    hostile = tmp_path / "huge.h5"
    shutil.copyfile(ROOT / "tests" / "fixtures" / "legacy" / "tfop_clip.h5", hostile)
    with h5py.File(hostile, "r+") as handle:
        text = handle.attrs["model_config"]
        handle.attrs["model_config"] = text[:-1] + " " * (65 << 20) + "}"
    result = edgetrunc("migrate", hostile, "--out", tmp_path / "new.keras", cwd=tmp_path)
    assert_one_line(result, 2, "huge.h5", "64 MiB")


def test_a_huge_sparse_onnx_file_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.onnx"
    with open(path, "wb") as stream:
        stream.write(b"\x08\x08")
        stream.truncate(3 << 30)
    result = edgetrunc("bench", path, "--runs", "1", cwd=tmp_path, timeout=60)
    assert_one_line(result, 2, "huge.onnx")


@pytest.mark.slow
def test_an_onnx_loop_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Identity", ["x_in"], ["x_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_in", TensorProto.FLOAT, [1, 4, 4, 1])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_out", TensorProto.FLOAT, [1, 4, 4, 1])])
    trip = helper.make_tensor("trip", TensorProto.INT64, [], [10 ** 15])
    cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    graph = helper.make_graph([helper.make_node("Loop", ["trip", "cond", "input"], ["out"], body=body)],
                              "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4, 4, 1])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 4, 1])],
                              [trip, cond])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "loop.onnx"
    onnx.save(model, str(path))
    result = edgetrunc("bench", path, "--runs", "1", cwd=tmp_path, timeout=60)
    assert_one_line(result, 2, "Loop")


def test_thread_counts_are_bounded_by_the_machine(tmp_path):
    result = edgetrunc("bench", MODELS / "tlunet_int8.tflite", "--threads", "4096", cwd=tmp_path,
                       timeout=60)
    assert_one_line(result, 2, "--threads")


# recordings ----------------------------------------------------------------------------------

def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _huge_declared_npz(path: Path) -> Path:
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (100000000000, 256, 256, 1), }"
    header += b" " * (118 - len(header)) + b"\n"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header)
    return path


@pytest.mark.parametrize("case", ["huge-shape", "string-labels", "object-array"])
def test_hostile_recordings_are_one_line_errors(tmp_path, case):
    x = np.zeros((2, 256, 256, 1), np.float32)
    path = tmp_path / "in.npz"
    if case == "huge-shape":
        _huge_declared_npz(path)
    elif case == "string-labels":
        _npz(path, x=x, labels=np.array(["a", "b"]))
    else:
        _npz(path, x=x, names=np.array([{"a": 1}, None], dtype=object))
    result = edgetrunc("run", MODELS / "tlunet_int8.tflite", path, "--out", tmp_path / "o.npz",
                       cwd=tmp_path, timeout=60)
    assert_one_line(result, 2, "in.npz")
    assert not (tmp_path / "o.npz").exists()


def _recording(folder: Path, change) -> tuple:
    """`(inputs, recording)`: outputs recorded by `edgetrunc run`, then changed by `change`."""
    from edgetrunc.runtime.recorded import record_outputs, save_inputs

    inputs, recording = folder / "in.npz", folder / "rec.npz"
    save_inputs(inputs, np.random.default_rng(0).integers(0, 256, (2, 256, 256, 1)).astype(np.float32))
    record_outputs(MODELS / "tlunet_int8.tflite", inputs, recording)
    with np.load(recording) as data:
        arrays = {key: data[key] for key in data.files}
    change(arrays)
    np.savez(recording, **arrays)
    return inputs, recording


def _fewer_outputs(arrays):
    arrays.update({key: value[:1] for key, value in arrays.items() if key.startswith("output:")})


RECORDING_CHANGES = {
    "meta-list": lambda arrays: arrays.update(meta=np.array([1, 2, 3])),
    "meta-not-an-object": lambda arrays: arrays.update(meta=np.array("[1, 2]")),
    "rows-2d": lambda arrays: arrays.update(rows=np.zeros((2, 2))),
    "fewer-outputs-than-rows": _fewer_outputs,
    "text-outputs": lambda arrays: arrays.update({"output:x": np.array(["a", "b"])}),
}


@pytest.mark.parametrize("case", sorted(RECORDING_CHANGES))
def test_hostile_recorded_outputs_are_one_line_errors(tmp_path, cli, case):
    inputs, recording = _recording(tmp_path, RECORDING_CHANGES[case])
    before = recording.read_bytes()
    result = in_process(cli, "parity", MODELS / "tlunet.keras", recording, "--inputs", inputs,
                        "--no-probes")
    assert_one_line(result, 2, "rec.npz")
    assert recording.read_bytes() == before


@pytest.mark.slow
def test_a_recording_with_a_huge_declared_output_is_refused_before_reading(tmp_path):
    inputs, recording = _recording(tmp_path, lambda arrays: None)
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (100000000000, 2), }"
    header += b" " * (118 - len(header)) + b"\n"
    with zipfile.ZipFile(recording, "a") as archive:
        archive.writestr("output:huge.npy", b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little")
                         + header)
    result = edgetrunc("parity", MODELS / "tlunet.keras", recording, "--inputs", inputs,
                       "--no-probes", cwd=tmp_path, timeout=120)
    assert_one_line(result, 2, "rec.npz")


# the command line itself ---------------------------------------------------------------------

@pytest.mark.parametrize("args", [["--samples", "99999999999999999999"], ["--samples", "1e9"],
                                  ["--seed", "-1"]])
def test_absurd_numbers_are_one_line_errors(args, tmp_path):
    result = edgetrunc("parity", MODELS / "tlunet.keras", MODELS / "tlunet_int8.tflite", *args,
                       cwd=tmp_path, timeout=120)
    assert_one_line(result, 2)


def test_a_closed_stdout_exits_quietly(tmp_path):
    image = tmp_path / "photo.png"
    from PIL import Image

    Image.fromarray(np.zeros((256, 256), np.uint8)).save(image)
    result = subprocess.run(f"'{CLI}' infer '{MODELS / 'tlunet_int8.tflite'}' '{image}' --json | head -c 0",
                            shell=True, cwd=tmp_path, stderr=subprocess.PIPE, text=True, timeout=60)
    assert "Traceback" not in result.stderr and "Broken pipe" not in result.stderr
    result = subprocess.run(f"'{CLI}' infer '{MODELS / 'tlunet_int8.tflite'}' '{image}' --json >&-",
                            shell=True, cwd=tmp_path, stderr=subprocess.PIPE, text=True, timeout=60)
    assert "Traceback" not in result.stderr


def test_names_with_control_characters_are_escaped(tmp_path):
    odd = tmp_path / "bad\x1b[31mname.png"
    odd.write_bytes(b"not an image")
    result = edgetrunc("infer", MODELS / "tlunet_int8.tflite", odd, cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert "\x1b" not in result.stderr and "\\x1b" in result.stderr


def _photo(path: Path) -> Path:
    from PIL import Image

    Image.fromarray(np.random.default_rng(1).integers(0, 256, (256, 256), np.uint8)).save(path)
    return path


def test_parity_reports_never_replace_a_photo_of_the_inputs_folder(tmp_path, cli):
    photos = tmp_path / "imgs"
    photos.mkdir()
    photo = _photo(photos / "p0.png")
    before = photo.read_bytes()
    for option in ("--html", "--json", "--save-inputs"):
        result = in_process(cli, "parity", MODELS / "tlunet.keras", MODELS / "tlunet_int8.tflite",
                            "--inputs", photos, "--no-probes", option, photo)
        assert_one_line(result, 2, "input", "p0.png")
    assert photo.read_bytes() == before and sorted(os.listdir(photos)) == ["p0.png"]


@pytest.mark.slow
def test_parity_inputs_empty_is_refused_not_the_current_folder(tmp_path):
    _photo(tmp_path / "here.png")
    result = edgetrunc("parity", MODELS / "tlunet.keras", MODELS / "tlunet_int8.tflite",
                       "--inputs", "", "--no-probes", cwd=tmp_path, timeout=120)
    assert_one_line(result, 2, "--inputs")


def _invalid_utf8_names(target: Path) -> Path:
    """A copy of the int8 TFLite artifact whose tensor names hold a byte that is not UTF-8."""
    from edgetrunc.runtime.metadata import tflite_schema

    content = (MODELS / "tlunet_int8.tflite").read_bytes()
    graph = tflite_schema().Model.GetRootAs(content, 0).Subgraphs(0)
    names = {graph.Tensors(i).Name() for i in range(graph.TensorsLength())}
    edited = bytearray(content)
    for name in (n for n in names if n and len(n) >= 8):
        start = content.find(name)
        while start >= 0:
            edited[start + 1] = 0xFF
            start = content.find(name, start + 1)
    target.write_bytes(bytes(edited))
    return target


@pytest.mark.slow
def test_tflite_names_that_are_not_utf8_never_crash(tmp_path):
    artifact = _invalid_utf8_names(tmp_path / "names.tflite")
    photo = _photo(tmp_path / "photo.png")
    runs = [edgetrunc("infer", artifact, photo, cwd=tmp_path, timeout=60),
            edgetrunc("bench", artifact, "--runs", "1", "--warmup", "0", cwd=tmp_path, timeout=60),
            edgetrunc("parity", MODELS / "tlunet.keras", artifact, "--inputs", "random", "--samples",
                      "2", "--per-layer", "--no-probes", cwd=tmp_path, timeout=300)]
    for result in runs:
        assert result.returncode in (0, 1), result.stderr[-2000:]
        assert "Traceback" not in result.stderr and "UnicodeDecodeError" not in result.stderr
    assert runs[0].returncode == 0 and runs[1].returncode == 0


def test_onnx_runtime_log_lines_stay_off_stderr(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((1, 4, 4, 1), np.float32), "w")
    unused = numpy_helper.from_array(np.zeros(3, np.float32), "unused")  # ORT warns it removes it
    graph = helper.make_graph([helper.make_node("Add", ["input", "w"], ["out"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4, 4, 1])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 4, 1])],
                              [weight, unused])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "unused.onnx"
    onnx.save(model, str(path))
    result = edgetrunc("bench", path, "--runs", "1", "--warmup", "0", cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "onnxruntime" not in result.stderr and "\x1b" not in result.stderr, result.stderr


# a seeded byte-flip fuzz of the shipped artifacts --------------------------------------------

FUZZ = """
import sys, numpy as np
from pathlib import Path
from edgetrunc.errors import InputError
from edgetrunc.runtime import open_runner
source = Path(sys.argv[1]); rng = np.random.default_rng(int(sys.argv[2]))
data = np.frombuffer(source.read_bytes(), np.uint8)
folder = Path(sys.argv[3]); outcomes = {"ok": 0, "refused": 0}
for trial in range(int(sys.argv[4])):
    flipped = data.copy()
    where = rng.integers(0, len(data), rng.integers(1, 9))
    flipped[where] ^= rng.integers(1, 256, len(where)).astype(np.uint8)
    path = folder / f"flip{trial}{source.suffix}"
    path.write_bytes(flipped.tobytes())
    try:
        runner = open_runner(path, threads=1)
        runner.infer(np.zeros((1, 256, 256, 1), np.float32))
        outcomes["ok"] += 1
    except InputError:
        outcomes["refused"] += 1
    path.unlink()
print(outcomes)
"""


@pytest.mark.parametrize("artifact", ["tlunet_int8.tflite", "tlunet_fp32.onnx"])
def test_byte_flipped_artifacts_are_run_or_refused_never_crash(artifact, tmp_path):
    result = subprocess.run([sys.executable, "-c", FUZZ, str(MODELS / artifact), "7", str(tmp_path), "40"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok" in result.stdout
