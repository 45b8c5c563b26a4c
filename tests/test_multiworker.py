"""`edgetrunc train --strategy multiworker`: TF_CONFIG checks, the tile shares, and two workers
on 127.0.0.1 training together (only the chief writes the model and the record)."""

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest

from edgetrunc.cli import main
from edgetrunc.errors import InputError
from edgetrunc.train import record_path
from edgetrunc.train.strategy import (Cluster, check_strategy, parse_tf_config, read_cluster,
                                      worker_share)

QUICK = ["--epochs", "1", "--max-tiles", "8", "--batch-size", "2", "--max-eval-pairs", "4",
         "--eval-stride", "256"]
WORKER_TIMEOUT = 240


def tf_config(workers, task_type="worker", index=0, **cluster) -> str:
    return json.dumps({"cluster": {"worker": workers, **cluster},
                       "task": {"type": task_type, "index": index}})


def test_tf_config_gives_the_workers_and_the_chief():
    two = ["10.0.0.1:2222", "10.0.0.2:2222"]
    assert parse_tf_config(tf_config(two, index=0)) == Cluster(2, 0, "worker", 0)
    assert parse_tf_config(tf_config(two, index=0)).is_chief
    assert not parse_tf_config(tf_config(two, index=1)).is_chief
    with_chief = tf_config(["10.0.0.2:2222"], "chief", 0, chief=["10.0.0.1:2222"])
    assert parse_tf_config(with_chief) == Cluster(2, 0, "chief", 0)
    worker = tf_config(["10.0.0.2:2222"], "worker", 0, chief=["10.0.0.1:2222"])
    assert parse_tf_config(worker).index == 1 and not parse_tf_config(worker).is_chief


@pytest.mark.parametrize("text, words", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"task": {"type": "worker", "index": 0}}', '"cluster"'),
    ('{"cluster": {}, "task": {"type": "worker", "index": 0}}', '"cluster"'),
    ('{"cluster": {"worker": []}, "task": {"type": "worker", "index": 0}}', "non-empty list"),
    ('{"cluster": {"worker": ["a:1"]}}', '"task"'),
    (tf_config(["a:1", "b:1"], index=2), "index 2 out of range"),
    (tf_config(["a:1"], index=-1), "out of range"),
    (tf_config(["a:1"], index="0"), "integer"),
    (tf_config(["a:1"], task_type="chief"), "not a job"),
    (tf_config(["a:1"], ps=["b:1"]), "'ps'"),
    (tf_config(["a"]), "not host:port"),
    (tf_config(["a:99999"]), "not host:port"),
    (tf_config(["127.0.0.1:2222", "127.0.0.1:2222"]), "named twice"),
    (tf_config(["localhost:2222", "127.0.0.1:2222"]), "named twice"),
    (tf_config(["b:1"], chief=["b:1"]), "named twice"),
    (tf_config(["b:1"], chief=["a:1", "c:1"]), "at most one chief"),
])
def test_bad_tf_config_is_one_line(text, words):
    with pytest.raises(InputError) as info:
        parse_tf_config(text)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_tf_config_is_read_only_for_multiworker():
    assert read_cluster("default", {"TF_CONFIG": "{not json"}) == Cluster()
    with pytest.raises(InputError, match="TF_CONFIG is not set"):
        read_cluster("multiworker", {})
    assert read_cluster("multiworker", {"TF_CONFIG": tf_config(["a:1"])}).workers == 1
    assert check_strategy("multiworker") == "multiworker"
    with pytest.raises(InputError, match="^strategy") as refused:
        check_strategy("one:")
    assert refused.value.param == "strategy"


@pytest.mark.parametrize("env", [None, "{not json", tf_config(["a:1", "a:1"]),
                                 tf_config(["a:1"], index=1)])
def test_cli_bad_tf_config_exits_2_with_one_line(env, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    if env is not None:
        monkeypatch.setenv("TF_CONFIG", env)
    out = tmp_path / "m.keras"
    assert main(["train", *QUICK, "--strategy", "multiworker", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "TF_CONFIG" in err[0]
    assert not out.exists()


@dataclass
class Tiles:
    tiles: np.ndarray
    sources: list
    positions: list

    def __len__(self):
        return len(self.tiles)


def test_worker_shares_are_disjoint_and_cover_the_tiles():
    tiles = Tiles(np.arange(7)[:, None], [f"p{i}" for i in range(7)], [(i, 0) for i in range(7)])
    shares = [worker_share(tiles, i, 3) for i in range(3)]
    assert [len(s) for s in shares] == [3, 2, 2]
    assert sorted(int(v) for s in shares for v in s.tiles[:, 0]) == list(range(7))
    assert shares[1].sources == ["p1", "p4"] and shares[1].positions == [(1, 0), (4, 0)]
    assert worker_share(tiles, 0, 1) is tiles


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_train_and_only_the_chief_writes(tmp_path):
    cluster = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    outs = [tmp_path / f"worker{i}" / "tiny.keras" for i in range(2)]
    procs = []
    for i, out in enumerate(outs):
        out.parent.mkdir()
        env = {**os.environ, "TF_CONFIG": tf_config(cluster, index=i), "CUDA_VISIBLE_DEVICES": ""}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "edgetrunc", "-q", "train", *QUICK, "--strategy", "multiworker",
             "--out", str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=WORKER_TIMEOUT)
            results.append((proc.returncode, stdout, stderr))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for code, stdout, stderr in results:
        assert code == 0, stderr[-2000:]
    assert "worker 1 of 2" in results[1][1]
    assert outs[0].is_file() and record_path(outs[0]).is_file()
    assert list(outs[1].parent.iterdir()) == []
    record = json.loads(record_path(outs[0]).read_text())
    config = record["config"]
    assert config["strategy"] == "multiworker" and config["workers"] == 2
    assert config["replicas"] == 2 and config["global_batch_pairs"] == 2 * config["batch_pairs"]
    assert record["data"]["train_tiles"] == 8
    # 4 tiles a worker at 2 pairs a batch: 2 steps of 2 x 2 pairs = 16 images an epoch
    assert record["trained_images"] == 16 and len(record["epochs"]) == 1
