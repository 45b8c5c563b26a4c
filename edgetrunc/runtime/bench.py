"""Latency, throughput and peak memory of `.tflite` / `.onnx` artifacts (no TensorFlow).

`bench_artifacts` starts one worker process per (artifact, thread count); each loads its
runner and a seeded random batch, then the parent asks them in turn for one timed
inference per round, so a noisy machine slows every artifact alike (interleaved runs).
Each worker times `runner.infer` itself (the pipe is outside the timing) and reports its
own peak resident memory, which is the honest footprint of one artifact on a device:
Python, numpy, the interpreter and the model. ONNX Runtime runs with thread spinning off:
its idle threads would otherwise busy-wait after each run and slow whichever artifact runs
next (measured: TFLite fp32 p50 7.3 -> 17.4 ms beside spinning ONNX Runtime sessions).
`time_interleaved` does the same for callables inside one process (used by
`scripts.benchmarks` to put Keras beside them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

from edgetrunc import _log
from edgetrunc._text import printable
from edgetrunc.errors import InputError

RESULT_KEYS = ("artifact", "threads", "batch", "min_ms", "p50_ms", "p90_ms", "p99_ms",
               "throughput_ips", "peak_rss_mb")


def latency_summary(times_ms, batch: int) -> dict:
    """min / p50 / p90 / p99 / mean in ms and images per second from per-run latencies."""
    times = np.asarray(times_ms, dtype=np.float64)
    mean = float(times.mean())
    return {"min_ms": round(float(times.min()), 3),
            "p50_ms": round(float(np.percentile(times, 50)), 3),
            "p90_ms": round(float(np.percentile(times, 90)), 3),
            "p99_ms": round(float(np.percentile(times, 99)), 3),
            "mean_ms": round(mean, 3),
            "throughput_ips": round(batch * 1000.0 / mean, 2)}


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process in MB (None where the OS does not say).

    Linux: `VmHWM` of /proc/self/status, which starts afresh at exec (`ru_maxrss` keeps the
    peak of the parent that forked the process, e.g. a benchmark script holding TensorFlow).
    """
    try:
        for line in open("/proc/self/status", encoding="ascii"):
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def random_feed(runner, batch: int, seed: int = 0):
    """`NamedInputs` of seeded uniform 0..255 float32 values for a model with several inputs,
    each input at its own shape (a free image side 256, any other free dimension 1)."""
    from edgetrunc.runtime.feeds import NamedInputs

    rng = np.random.default_rng(seed)
    arrays = {}
    for name, info in zip(runner.input_names(), runner.metadata().inputs):
        default = 256 if len(info.shape) == 4 else 1
        dims = [int(d) if d else default for d in info.shape[1:]]
        arrays[name] = rng.uniform(0, 255, (batch, *dims)).astype(np.float32)
    return NamedInputs(arrays)


def random_batch(runner, batch: int, seed: int = 0):
    """Seeded uniform 0..255 float32 NHWC batch shaped for `runner`'s input (a feed of every
    input for a model with several, `random_feed`)."""
    if len(runner.metadata().inputs) > 1:
        return random_feed(runner, batch, seed)
    shape = runner.metadata().inputs[0].shape
    rng = np.random.default_rng(seed)
    if len(shape) != 4:  # bench times image batches
        raise InputError(f"{runner.path}: model input {list(shape)}; expected an image "
                         "input [N, H, W, C] or [N, C, H, W]")
    height, width = runner.input_size() or (256, 256)
    channels = (shape[3] if runner.metadata().layout == "NHWC" else shape[1]) or 1
    return rng.uniform(0, 255, (batch, height, width, channels)).astype(np.float32)


def time_interleaved(functions: dict, runs: int, warmup: int, desc: str = "bench") -> dict:
    """Call every function once per round, `warmup` untimed rounds then `runs` timed ones.

    Returns `{name: [latency ms per run]}`. The starting function rotates every round.
    """
    names = list(functions)
    times = {name: [] for name in names}
    for round_index in _log.progress(range(warmup + runs), desc=desc, total=warmup + runs, unit="round"):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            functions[name]()
            elapsed = (time.perf_counter() - start) * 1000.0
            if round_index >= warmup:
                times[name].append(elapsed)
    return times


class _Worker:
    def __init__(self, artifact, threads, batch, seed, options):
        self.artifact, self.threads, self.batch = str(artifact), int(threads), int(batch)
        isolated = "-P" if sys.version_info >= (3, 11) else "-I"  # no current folder on sys.path
        from edgetrunc.runtime.formats import plugin_modules

        command = [sys.executable, isolated, "-m", "edgetrunc.runtime._bench_worker", self.artifact,
                   str(self.threads), str(self.batch), str(seed),
                   json.dumps(options.to_dict() if options else {}), json.dumps(plugin_modules())]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, bufsize=1, env=env)
        self.info = self._read()
        if "error" in self.info:
            self.close()
            raise InputError(self.info["error"])

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            err = self.process.stderr.read().strip().splitlines()
            raise InputError(f"{self.artifact}: benchmark worker ended unexpectedly"
                             f"{' (' + printable(err[-1])[:200] + ')' if err else ''}")
        try:
            reply = json.loads(line)
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            raise InputError(f"{self.artifact}: unexpected reply from the benchmark worker "
                             f"({printable(line.strip())[:200]})")
        return reply

    def ask(self, command: str) -> dict:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self):
        if self.process.poll() is None:
            try:
                self.process.stdin.close()
            except OSError:
                pass
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        for stream in (self.process.stdout, self.process.stderr):
            stream.close()


def bench_artifacts(artifacts, threads=(1,), runs: int = 50, warmup: int = 5, batch: int = 1,
                    seed: int = 0, options=None) -> list:
    """Benchmark every artifact at every thread count, interleaved; one dict per pair.

    Each dict holds `RESULT_KEYS` plus `format`, `precision`, `runs`, `mean_ms` and
    `delegate_partitions` (TFLite: XNNPACK partitions, 0 without XNNPACK; None for ONNX),
    `inputs` (`{input name: shape fed}`) and `outputs` (`{output name: shape}`, in order).
    `options` (`RunnerOptions`, e.g. `RunnerOptions(xnnpack=False)`) go to every runner; each
    format's options for backends taking turns on the same cores apply on top (ONNX Runtime:
    no spinning).
    """
    if runs < 1:
        raise InputError(f"runs: expected a positive integer; got {runs}", param="runs")
    if warmup < 0:
        raise InputError(f"warmup: expected 0 or more; got {warmup}", param="warmup")
    if batch < 1:
        raise InputError(f"batch: expected a positive integer; got {batch}", param="batch")
    workers = []
    try:
        for artifact in artifacts:
            for count in threads:
                _log.info(f"loading {artifact} ({count} thread{'s' if count > 1 else ''})")
                workers.append(_Worker(artifact, count, batch, seed, options))
        times = [[] for _ in workers]
        total = warmup + runs
        for round_index in _log.progress(range(total), desc="bench", total=total, unit="round"):
            shift = round_index % len(workers)
            for index in list(range(shift, len(workers))) + list(range(shift)):
                reply = workers[index].ask("run")
                if "error" in reply:
                    raise InputError(reply["error"])
                if round_index >= warmup:
                    times[index].append(reply["ms"])
        results = []
        for worker, worker_times in zip(workers, times):
            memory = worker.ask("stop").get("peak_rss_mb")
            results.append({"artifact": worker.artifact, "threads": worker.threads,
                            "batch": worker.batch, **latency_summary(worker_times, worker.batch),
                            "peak_rss_mb": memory, "format": worker.info.get("format"),
                            "precision": worker.info.get("precision"), "runs": runs,
                            "delegate_partitions": worker.info.get("delegate_partitions"),
                            "inputs": worker.info.get("inputs"), "outputs": worker.info.get("outputs")})
        extra = ("mean_ms", "format", "precision", "runs", "delegate_partitions", "inputs", "outputs")
        return [{key: result[key] for key in (*RESULT_KEYS, *extra)} for result in results]
    finally:
        for worker in workers:
            worker.close()
