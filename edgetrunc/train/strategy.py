"""Where a training run trains: its `tf.distribute` strategy and, across machines, its cluster.

`STRATEGIES` names the strategies `edgetrunc train` accepts (plus `one:DEVICE`);
`check_strategy` validates a name and `make_strategy` creates the strategy. For
`multiworker` (`tf.distribute.MultiWorkerMirroredStrategy`) the cluster comes from the
`TF_CONFIG` environment variable as TensorFlow defines it; `read_cluster` / `parse_tf_config`
check it without TensorFlow and return a `Cluster`: how many workers, which one this is, and
whether it is the chief (the "chief" task, or worker 0 without one), the only worker that
writes the model and the training record. Every worker trains on its own share of the
training tiles (`worker_share`, tile i goes to worker i mod workers) through
`distributed_epoch` and `train_steps`, a custom step run with `strategy.run` (Keras's
`fit` cannot take a multi-worker dataset of (x, y) pairs). Collective operations need
every worker to take the same decisions at the same points, so the values a decision
depends on (elapsed time, validation score) are the chief's on every worker
(`chief_values`). Imports TensorFlow only inside the functions that need it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass

from edgetrunc import _log
from edgetrunc._text import printable
from edgetrunc.errors import InputError

STRATEGIES = ("default", "mirrored", "multiworker")
CLUSTER_JOBS = ("chief", "worker")
CLUSTER_TIMEOUT = 300.0  # seconds the workers are waited for at start-up
_HOST = re.compile(r"[A-Za-z0-9._-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]")
_PORT = re.compile(r"[0-9]{1,5}")
TF_CONFIG_EXAMPLE = ('{"cluster": {"worker": ["host1:2222", "host2:2222"]}, '
                     '"task": {"type": "worker", "index": 0}}')


@dataclass(frozen=True)
class Cluster:
    """The machines of a training run: `workers` in all (the chief counted), this one's
    position among them (`index`, the chief first), its TF_CONFIG task type and index."""

    workers: int = 1
    index: int = 0
    task_type: str = "worker"
    task_index: int = 0

    @property
    def is_chief(self) -> bool:
        """Whether this worker writes the model and the record (the chief, or worker 0)."""
        return self.index == 0


SINGLE_MACHINE = Cluster()


def check_strategy(name) -> str:
    """`name` when it is a strategy `make_strategy` knows, else an `InputError`."""
    if name in STRATEGIES or (isinstance(name, str) and name.startswith("one:") and name[4:]):
        return name
    raise InputError(f"strategy: expected default, mirrored, multiworker or one:DEVICE; got {name!r}", param="strategy")


def read_cluster(strategy: str, environ=None) -> Cluster:
    """The cluster of a run with `strategy`: from `TF_CONFIG` (in `environ`, default the
    process environment) for `multiworker`, else one machine."""
    if strategy != "multiworker":
        return SINGLE_MACHINE
    text = (os.environ if environ is None else environ).get("TF_CONFIG", "")
    if not text.strip():
        raise InputError("strategy multiworker: TF_CONFIG is not set; give every node the "
                         f"same cluster and its own task, e.g. TF_CONFIG='{TF_CONFIG_EXAMPLE}'", param="strategy")
    return parse_tf_config(text)


def parse_tf_config(text: str) -> Cluster:
    """The `Cluster` a TF_CONFIG JSON text describes; `InputError` (one line) when it is not
    JSON, has no cluster of chief/worker addresses, names an address twice, or its task is
    not one of the cluster's."""
    config = _tf_config_json(text)
    if config.get("rpc_layer") not in (None, "", "grpc"):
        raise InputError(f"TF_CONFIG: rpc_layer {printable(repr(config['rpc_layer']))[:60]} is "
                         'not supported; expected "grpc" or none')
    jobs = _cluster_jobs(config.get("cluster"))
    task = config.get("task")
    if not isinstance(task, dict):
        raise InputError('TF_CONFIG: no "task" object saying which of the cluster this node is, '
                         'e.g. "task": {"type": "worker", "index": 0}')
    task_type, task_index = task.get("type"), task.get("index")
    if not isinstance(task_type, str) or task_type not in jobs:
        raise InputError(f"TF_CONFIG: task type {printable(repr(task_type))[:60]} is not a job of the cluster "
                         f"({', '.join(jobs)})")
    if isinstance(task_index, bool) or not isinstance(task_index, int):
        raise InputError(f"TF_CONFIG: task index must be an integer; got {task_index!r}")
    if not 0 <= task_index < len(jobs[task_type]):
        raise InputError(f"TF_CONFIG: task index {task_index} out of range: the cluster has "
                         f"{len(jobs[task_type])} {task_type} task(s)")
    chiefs = len(jobs.get("chief", ()))
    index = task_index if task_type == "chief" else chiefs + task_index
    workers = chiefs + len(jobs.get("worker", ()))
    return Cluster(workers=workers, index=index, task_type=task_type, task_index=task_index)


def _tf_config_json(text: str) -> dict:
    """TF_CONFIG's JSON object; nesting too deep for the parser is refused as not valid."""
    try:
        config = json.loads(text)
    except (ValueError, RecursionError) as exc:
        reason = "nested too deep" if isinstance(exc, RecursionError) else printable(str(exc))
        raise InputError(f"TF_CONFIG: not valid JSON ({reason[:80]}); expected "
                         f"{TF_CONFIG_EXAMPLE}") from None
    if not isinstance(config, dict):
        raise InputError(f"TF_CONFIG: expected a JSON object like {TF_CONFIG_EXAMPLE}")
    return config


def _cluster_jobs(cluster) -> dict:
    """`{"chief": [...], "worker": [...]}` of a TF_CONFIG cluster, checked."""
    if not isinstance(cluster, dict) or not cluster:
        raise InputError('TF_CONFIG: no "cluster" object with the worker addresses; expected '
                         f"{TF_CONFIG_EXAMPLE}")
    seen: dict[str, str] = {}
    for job, addresses in cluster.items():
        if job not in CLUSTER_JOBS:
            raise InputError(f"TF_CONFIG: cluster job {job!r} is not used by multiworker "
                             "training (only chief and worker)")
        if not isinstance(addresses, list) or not addresses:
            raise InputError(f'TF_CONFIG: cluster "{job}" must be a non-empty list of '
                             f"host:port addresses; got {addresses!r}")
        if job == "chief" and len(addresses) > 1:
            raise InputError(f"TF_CONFIG: a cluster has at most one chief; got {len(addresses)}")
        for i, address in enumerate(addresses):
            key = _address_key(address, job)
            if key in seen:
                raise InputError(f"TF_CONFIG: {address} is named twice in the cluster "
                                 f"({seen[key]} and {job} {i}); every task needs its own host:port")
            seen[key] = f"{job} {i}"
    if "worker" not in cluster and "chief" not in cluster:
        raise InputError(f"TF_CONFIG: the cluster names no worker; expected {TF_CONFIG_EXAMPLE}")
    return cluster


def _address_key(address, job: str) -> str:
    """A `host:port` address, checked, normalized for comparison (localhost = 127.0.0.1)."""
    host, sep, port = address.rpartition(":") if isinstance(address, str) else ("", "", "")
    if (not sep or not _HOST.fullmatch(host) or not _PORT.fullmatch(port)
            or not 0 < int(port) < 65536):
        shown = printable(repr(address))[:80]
        raise InputError(f'TF_CONFIG: cluster "{job}" address {shown} is not host:port '
                         "(a host name or IP address, a port from 1 to 65535 in ASCII digits)")
    host = host.strip("[]").lower()
    return f"{'127.0.0.1' if host in ('localhost', '::1') else host}:{int(port)}"


def make_strategy(name: str):
    """The `tf.distribute` strategy named "default", "mirrored", "multiworker" or
    "one:DEVICE" (multiworker reads its cluster from TF_CONFIG; create it before any other
    TensorFlow operation of the process)."""
    import tensorflow as tf

    check_strategy(name)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        return _multiworker_strategy(tf)
    return tf.distribute.OneDeviceStrategy(name.split(":", 1)[1])


def cluster_timeout(environ=None) -> float:
    """Seconds the workers are waited for at start-up: `EDGETRUNC_CLUSTER_TIMEOUT`, or
    `CLUSTER_TIMEOUT`."""
    text = (os.environ if environ is None else environ).get("EDGETRUNC_CLUSTER_TIMEOUT", "")
    try:
        value = float(text) if text.strip() else CLUSTER_TIMEOUT
    except ValueError:
        value = -1.0
    if not 0 < value < 1e6:
        raise InputError(f"EDGETRUNC_CLUSTER_TIMEOUT: expected seconds > 0; got {printable(text)[:40]!r}")
    return value


def silent_peers(environ=None, timeout: float = 2.0) -> list:
    """The cluster's other tasks (`"worker 1 (host:port)"`) that accept no connection."""
    import socket

    config = _tf_config_json((os.environ if environ is None else environ).get("TF_CONFIG", ""))
    task = config.get("task", {})
    silent = []
    for job, addresses in config.get("cluster", {}).items():
        for i, address in enumerate(addresses):
            if (job, i) == (task.get("type"), task.get("index")):
                continue
            host, _, port = address.rpartition(":")
            try:
                socket.create_connection((host.strip("[]"), int(port)), timeout).close()
            except OSError:
                silent.append(f"{job} {i} ({address})")
    return silent


_WATCHDOG = """
import select, sys
from edgetrunc.train.strategy import cluster_timed_out
parent, timeout = int(sys.argv[1]), float(sys.argv[2])
ready, _, _ = select.select([sys.stdin], [], [], timeout)
if not ready:
    cluster_timed_out(parent, timeout)
"""


def _multiworker_strategy(tf):
    """`MultiWorkerMirroredStrategy`, waiting at most `cluster_timeout()` for every worker
    to join. TensorFlow waits inside its runtime without an end and without letting Python
    run, so a watchdog process ends this one with one line naming the workers that do not
    answer; it goes away once the strategy is made (or this process ends)."""
    import subprocess
    import sys

    timeout = cluster_timeout()
    _log.info(f"multiworker: waiting up to {timeout:g} s for every worker of TF_CONFIG to join")
    watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(timeout)],
                                stdin=subprocess.PIPE)
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    finally:
        watchdog.stdin.close()
        watchdog.wait()


def cluster_timed_out(parent: int, timeout: float) -> None:
    """In the watchdog: say which workers do not answer, then stop the waiting process."""
    import signal
    import sys
    import time

    try:
        silent = silent_peers() or ["none; they answer but did not join"]
    except InputError:
        silent = ["unknown"]
    sys.stderr.write(printable(
        f"edgetrunc train: error: --strategy multiworker: the cluster did not start within "
        f"{timeout:g} s (EDGETRUNC_CLUSTER_TIMEOUT); not answering: {', '.join(silent)}") + "\n")
    sys.stderr.flush()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(parent, sig)
        except OSError:
            return
        time.sleep(5)


def is_multiworker(strategy) -> bool:
    """Whether `strategy` is a `MultiWorkerMirroredStrategy` (training goes through
    `train_steps`, decisions through `chief_values`)."""
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def replicas_per_worker(strategy, workers: int, batch_pairs: int) -> int:
    """The replicas (devices) of each of `workers` machines; a worker's batch of `batch_pairs`
    pairs is split evenly between them, so they must divide it."""
    per_worker = max(1, int(strategy.num_replicas_in_sync) // workers)
    if batch_pairs % per_worker:
        raise InputError(f"batch_size: {batch_pairs} pairs per worker do not split evenly "
                         f"over the {per_worker} replicas of each worker", param="batch_size")
    return per_worker


def worker_share(tiles, index: int, workers: int):
    """Worker `index`'s share of the training tiles: tile i goes to worker i mod `workers`
    (every per-tile field of the tile set is sliced alike)."""
    if workers == 1:
        return tiles
    count = len(tiles)
    changes = {f.name: getattr(tiles, f.name)[index::workers] for f in dataclasses.fields(tiles)
               if _per_tile(getattr(tiles, f.name), count)}
    return dataclasses.replace(tiles, **changes)


def _per_tile(value, count: int) -> bool:
    return not isinstance(value, (str, bytes)) and hasattr(value, "__getitem__") \
        and hasattr(value, "__len__") and len(value) == count


def distributed_epoch(strategy, worker_dataset, replicas: int):
    """One epoch's `tf.distribute` dataset: `worker_dataset(worker index)` gives a worker's
    own batches (its share of the tiles, pairs side by side); each batch is split evenly
    between the worker's `replicas`, keeping every cover next to its stego."""

    def dataset_fn(context):
        dataset = worker_dataset(context.input_pipeline_id)
        if replicas > 1:
            images = int(dataset.element_spec[0].shape[0])
            dataset = dataset.rebatch(images // replicas)
        return dataset

    return strategy.distribute_datasets_from_function(dataset_fn)


def train_steps(net, strategy, dataset, steps: int, global_images: int, desc: str = "") -> tuple:
    """Train `net` for `steps` steps on a distributed `dataset` (the same count on every
    worker), gradients averaged over all `global_images` of a step. Returns the mean loss
    and the training-mode accuracy over every image of every worker."""
    step = _distributed_step(net, strategy, global_images)
    totals = [0.0, 0.0, 0.0]
    iterator = iter(dataset)
    bar = _log.progress(range(steps), desc=desc, total=steps, unit="batch")
    for _ in bar:
        loss_sum, correct, images = (float(v) for v in step(next(iterator)))
        totals = [totals[0] + loss_sum, totals[1] + correct, totals[2] + images]
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{totals[0] / totals[2]:.3f}", acc=f"{totals[1] / totals[2]:.3f}")
    if hasattr(bar, "close"):
        bar.close()
    return totals[0] / max(totals[2], 1.0), totals[1] / max(totals[2], 1.0)


def _distributed_step(net, strategy, global_images: int):
    """A compiled training step (`strategy.run` on every replica, the loss and the counts
    summed over all replicas), made once per optimizer and kept on the model."""
    import keras
    import tensorflow as tf

    cached = getattr(net, "_edgetrunc_distributed_step", None)
    if cached is not None and cached[0] is net.optimizer and cached[1] == global_images:
        return cached[2]
    with strategy.scope():
        if not net.optimizer.built:
            net.optimizer.build(net.trainable_variables)

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            probs = net(x, training=True)
            per_image = keras.losses.sparse_categorical_crossentropy(y, probs)
            loss = tf.nn.compute_average_loss(per_image, global_batch_size=global_images)
            if net.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(net.losses))
        grads = tape.gradient(loss, net.trainable_variables)
        net.optimizer.apply_gradients(zip(grads, net.trainable_variables))
        correct = tf.cast(tf.equal(tf.argmax(probs, axis=-1), y), tf.float32)
        return tf.stack([tf.reduce_sum(per_image), tf.reduce_sum(correct),
                         tf.cast(tf.size(y), tf.float32)])

    @tf.function
    def step(batch):
        per_replica = strategy.run(replica_step, args=batch)
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    net._edgetrunc_distributed_step = (net.optimizer, global_images, step)
    return step


def chief_values(strategy, values) -> list:
    """The chief's `values` (floats) on every worker, so that all take the same decision;
    `values` as they are outside multi-worker training."""
    values = [float(v) for v in values]
    if not is_multiworker(strategy):
        return values
    import tensorflow as tf

    key = (id(strategy), len(values))
    if key not in _GATHER:
        replicas = int(strategy.num_replicas_in_sync)

        def contribute(row):
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            return tf.scatter_nd([[replica]], [row], [replicas, len(values)])

        @tf.function
        def gather(row):
            return strategy.reduce(tf.distribute.ReduceOp.SUM,
                                   strategy.run(contribute, args=(row,)), axis=None)

        _GATHER[key] = gather
    return [float(v) for v in _GATHER[key](tf.constant(values, tf.float64)).numpy()[0]]


_GATHER: dict = {}
