"""The comparator: run every runner on the same inputs, then pair each artifact with the reference.

Learned from Polygraphy: `Comparator.run(runners, data)` only runs and collects
(`RunResults`: outputs and throughput per runner); `Comparator.compare_accuracy(results,
compare_func)` pairs the first runner (the reference) with each other one and applies the
comparison function, which is a separate, swappable object (`compare.CompareFunc`).
Batches of `batch_size` images go through each runner at once (the TFLite runner resizes its
input to the batch). No TensorFlow.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from edgetrunc import _log
from edgetrunc.errors import InputError, first_line
from edgetrunc.metrics import is_detector_shape
from edgetrunc.runtime.feeds import sample_shapes
from edgetrunc.runtime.scoring import probability_from_outputs, run_batched, runner_activation

DEFAULT_BATCH_SIZE = 16


@dataclass
class RunResult:
    runner: str
    outputs: dict
    seconds: float
    samples: int
    probability: np.ndarray | None = None

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("inf")


@dataclass
class RunResults:
    """`RunResult` per runner, in the order the runners were given (the reference first)."""

    results: list = field(default_factory=list)

    def __getitem__(self, name) -> RunResult:
        for result in self.results:
            if result.runner == name:
                return result
        raise KeyError(name)

    @property
    def reference(self) -> RunResult:
        return self.results[0]


def detector_probability(outputs: dict, name: str, activation: str | None = None):
    """Stego probability `[N]` if the outputs look like a detector's (`[N, 2]` or `[N, 1]`), else None."""
    first = next(iter(outputs.values()), None)
    if first is None or not is_detector_shape(first.shape):
        return None
    try:
        return probability_from_outputs(outputs, name, activation)
    except InputError:
        return None


def _progress(desc: str):
    return lambda batches: _log.progress(batches, desc=desc, total=len(batches), unit="batch")


class Comparator:
    """Run runners on data and compare their results (see the module docstring)."""

    @staticmethod
    def run(runners: list, data: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE,
            names: list | None = None) -> RunResults:
        names = names or [runner.name for runner in runners]
        results = RunResults()
        for runner, name in zip(runners, names):
            start = time.perf_counter()
            try:
                outputs = run_batched(runner, data, batch_size, progress=_progress(f"infer {name}"))
            except InputError:
                raise
            except (ValueError, RuntimeError) as exc:
                raise InputError(f"{name}: inference failed on inputs "
                                 f"{sample_shapes(data)} ({first_line(exc)})") from None
            seconds = time.perf_counter() - start
            results.results.append(RunResult(name, outputs, seconds, len(data),
                                             detector_probability(outputs, name, runner_activation(runner))))
        return results

    @staticmethod
    def compare_accuracy(results: RunResults, compare_func, labels=None, precisions: dict | None = None) -> dict:
        """`{runner name: OutputComparison}` of every runner against the first one."""
        reference = results.reference
        comparisons = {}
        for result in results.results[1:]:
            precision = (precisions or {}).get(result.runner, "fp32")
            try:
                comparisons[result.runner] = compare_func(
                    reference.outputs, result.outputs, labels=labels, precision=precision,
                    reference_probability=reference.probability,
                    candidate_probability=result.probability)
            except InputError as exc:
                raise InputError(f"{result.runner}: {exc}") from None
        return comparisons
