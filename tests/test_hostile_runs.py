"""Hostile settings of a run (docs/SECURITY.md, "Bounds"): TF_CONFIG, workers that never
start, counts beyond the machine or the data, per-op profiles of many ops, Keras files whose
names mislead. Every case ends in one line, or runs within its memory bound.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edgetrunc.data.stego_cache import StegoSettings, usable_cores
from edgetrunc.errors import InputError
from hostile_files import ROOT, run_python


def test_workers_and_messages_are_bounded(tmp_path):
    with pytest.raises(InputError, match=f"up to {usable_cores()} .the usable cores"):
        StegoSettings("lsbm", workers=usable_cores() + 1)
    with pytest.raises(InputError, match="messages: expected a positive integer up to 256"):
        StegoSettings("lsbm", messages=2**31 - 1)
    from edgetrunc.train.config import TrainConfig

    config = TrainConfig(epochs=3, messages=2**31 - 1, embedding="hill", stego_cache=tmp_path)
    assert config.stego.messages == 3  # a run draws one message per epoch


def test_tile_counts_and_in_memory_sets_are_bounded_by_the_data(tmp_path):
    from edgetrunc.data.covers import Cover
    from edgetrunc.data.dataset import load_pairs, tile_items, training_tiles
    from edgetrunc.train.config import TrainConfig

    flat = Cover("flat", np.zeros((4096, 4096), np.uint8))  # a 4096x4096 photo
    with pytest.raises(InputError, match="stride: 14753281 tiles .* over the 2000000"):
        tile_items([flat], 1, None, np.random.default_rng(0), 256)
    with pytest.raises(InputError, match="max_tiles: 3.5 GiB of training tiles"):
        training_tiles([flat], stride=16)
    with pytest.raises(InputError, match="max_pairs: 1.4 GiB of cover/stego pairs"):
        load_pairs([flat, Cover("b", flat.pixels), Cover("c", flat.pixels)], split="all",
                   stride=128)
    with pytest.raises(InputError, match="shuffle_buffer: expected 1 to 8192 pairs"):
        TrainConfig(shuffle_buffer=2**31 - 1, stego_cache=tmp_path)


# TF_CONFIG ---------------------------------------------------------------------------------

def _tf_config(address="localhost:2222", **extra):
    return json.dumps({"cluster": {"worker": [address]}, "task": {"type": "worker", "index": 0},
                       **extra})


@pytest.mark.parametrize("text, needle", [
    ('{"a":' * 50_000 + "1" + "}" * 50_000, "nested too deep"),
    (_tf_config("localhost:\u00b2"), "not host:port"),
    (_tf_config("localhost:\u0662\u0662\u0662\u0662"), "not host:port"),
    (_tf_config("local host:2222"), "not host:port"),
    (_tf_config(rpc_layer="grpc+evil"), "rpc_layer 'grpc+evil' is not supported"),
    (json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": [1], "index": 0}}),
     "task type [1] is not a job"),
])
def test_hostile_tf_config_is_one_line(text, needle):
    from edgetrunc.train.strategy import parse_tf_config

    with pytest.raises(InputError, match=None) as error:
        parse_tf_config(text)
    assert needle in str(error.value) and "\n" not in str(error.value)


@pytest.mark.slow
def test_workers_that_never_start_are_named_within_the_timeout(tmp_path):
    """A cluster whose second worker never starts: one line naming it, well within 60 s."""
    import socket

    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    workers = [f"localhost:{port}" for port in ports]
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3",
               EDGETRUNC_CLUSTER_TIMEOUT="3",
               TF_CONFIG=json.dumps({"cluster": {"worker": workers},
                                     "task": {"type": "worker", "index": 0}}))
    code = "from edgetrunc.train.strategy import make_strategy; make_strategy('multiworker')"
    result = subprocess.run([sys.executable, "-c", code], env=env, text=True, capture_output=True,
                            timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and f"not answering: worker 1 ({workers[1]})" in lines[0], lines


# bench --profile -------------------------------------------------------------------------

def test_tflite_profile_memory_does_not_grow_with_the_ops(tmp_path):
    """One prefix interpreter at a time: at batch 16 the shipped model's 19 prefixes together
    took 1.3 GB; one at a time they stay near a single interpreter's memory."""
    code = f"""
from edgetrunc.runtime.profile import profile_artifact
result = profile_artifact({str(ROOT / "models" / "tlunet_fp32.tflite")!r}, runs=1, warmup=0, batch=16)
print(len(result["ops"]))
"""
    result, rss = run_python(code, tmp_path)
    assert int(result.stdout.split()[0]) > 10
    assert rss < 512 * 2**20, rss


# Keras files whose names mislead ---------------------------------------------------------

def _tiny_keras(path: Path, conv_name: str = "conv") -> Path:
    import keras

    from edgetrunc.layers import Truncation

    inputs = keras.Input((16, 16, 1), name="image")
    x = keras.layers.Conv2D(2, 3, padding="same", name=conv_name)(inputs)
    x = Truncation(3.0, name="tlu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="head")(x)
    keras.Model(inputs, outputs, name="tiny").save(path)
    return path


def test_a_keras_layer_under_a_foreign_module_is_named_as_such(tmp_path):
    from edgetrunc.keras.load import load_keras_model

    source = _tiny_keras(tmp_path / "tiny.keras")
    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    conv = next(layer for layer in config["config"]["layers"] if layer["class_name"] == "Conv2D")
    conv["module"] = "this"
    members["config.json"] = json.dumps(config).encode()
    hostile = tmp_path / "this.keras"
    with zipfile.ZipFile(hostile, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(InputError, match="Keras class 'Conv2D' names the module 'this', not a Keras"):
        load_keras_model(hostile)


def test_markup_in_layer_names_runs_per_layer_inference(tmp_path):
    from edgetrunc.keras.runner import KerasRunner

    name = '<b>conv</b> {x} [y] %s "q"'.replace("/", "|")
    runner = KerasRunner(_tiny_keras(tmp_path / "markup.keras", name))
    outputs = runner.layer_outputs(np.zeros((2, 16, 16, 1), np.float32))
    assert name in outputs and outputs[name].shape == (2, 16, 16, 2)
    assert runner.infer(np.zeros((2, 16, 16, 1), np.float32))


# a streamed epoch, a lost worker ---------------------------------------------------------

def test_a_cover_that_vanishes_during_a_streamed_epoch_ends_training_in_one_line(tmp_path,
                                                                                monkeypatch):
    import tensorflow as tf
    from PIL import Image

    from edgetrunc.data.stream import scan_covers, stream_training_tiles
    from edgetrunc.train import loop
    from edgetrunc.train.tf_data import stream_epoch_dataset

    pixels = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    for name in ("a", "b"):
        Image.fromarray(pixels).save(tmp_path / f"{name}.png")
    tiles = stream_training_tiles(scan_covers(tmp_path, min_size=32), tile=32)
    (tmp_path / "b.png").unlink()

    def epochs(*args):
        for _ in stream_epoch_dataset(tiles, 2, len(tiles) // 2, 0.4, shuffle_buffer=4):
            pass

    monkeypatch.setattr(loop, "_fit_epochs", epochs)
    with pytest.raises(InputError, match=r"b.png: no such file"):
        loop.fit_epochs(None, tf.distribute.get_strategy(), None, None, 0.0, None)


def test_a_worker_lost_mid_run_ends_training_in_one_line(monkeypatch):
    import tensorflow as tf

    from edgetrunc.train import loop

    def epochs(*args):
        raise tf.errors.UnavailableError(None, None, "cluster check alive failed, "
                                         "/job:worker/replica:0/task:1 is down")

    monkeypatch.setattr(loop, "_fit_epochs", epochs)
    monkeypatch.setattr(loop, "is_multiworker", lambda strategy: True)
    with pytest.raises(InputError, match="a worker of the cluster stopped answering .cluster "
                                         "check alive failed, /job:worker/replica:0/task:1"):
        loop.fit_epochs(None, None, None, None, 0.0, None)
