"""Comparison functions: statistics of one artifact's outputs against the reference, and the verdict.

Learned from Polygraphy's `CompareFunc.simple`: the comparison is a separate, swappable object
(`CompareFunc`) that the comparator calls with the reference and the artifact outputs of one
pair of runs. An element passes when `abs <= atol or rel <= rtol` (rel = abs / |reference|).
Defaults depend on the artifact's precision (`DEFAULT_TOLERANCES`, derived from measurement,
see docs/PARITY.md): fp32 and fp16 are judged element-wise; int8 is judged on what a detector
is for: decision agreement, accuracy delta and the mean absolute error of the stego probability.
Decision agreement is judged on the labelled photos when the inputs hold any (uniform random
images are far from any photo and sit near the decision threshold) and reported on all inputs.
No TensorFlow.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np

from edgetrunc import metrics
from edgetrunc.errors import InputError
from edgetrunc.metrics import DECISION_THRESHOLD


@dataclass(frozen=True)
class Tolerance:
    """Pass criteria of one precision.

    `atol` / `rtol` are the element-wise bounds (an element passes if abs <= atol or
    rel <= rtol); `elementwise=False` reports them without failing on them. The detector
    criteria apply when the output is a stego probability: minimum decision agreement,
    maximum |accuracy delta| (labelled inputs only) and maximum probability MAE.
    """

    atol: float
    rtol: float
    elementwise: bool = True
    min_decision_agreement: float = 1.0
    max_accuracy_delta: float = 0.0
    max_probability_mae: float = 1.0

    def to_dict(self):
        return asdict(self)


# Measured on the trained reference detector (see docs/PARITY.md, "How the defaults were derived").
DEFAULT_TOLERANCES = {
    "fp32": Tolerance(atol=1e-4, rtol=1e-3, min_decision_agreement=0.98, max_accuracy_delta=0.01,
                      max_probability_mae=1e-4),
    "fp16": Tolerance(atol=1e-2, rtol=1e-2, min_decision_agreement=0.98, max_accuracy_delta=0.01,
                      max_probability_mae=5e-3),
    "int8": Tolerance(atol=5e-2, rtol=5e-2, elementwise=False, min_decision_agreement=0.98,
                      max_accuracy_delta=0.01, max_probability_mae=0.05),
}


# Other quantized modes are judged like int8 (decisions, not elements).
TOLERANCE_ALIASES = {"int16x8": "int8", "dynamic-int8": "int8", "uint8": "int8", "int8-full": "int8"}


def tolerance_key(precision: str) -> str:
    precision = TOLERANCE_ALIASES.get(precision, precision)
    return precision if precision in DEFAULT_TOLERANCES else "fp32"


def default_tolerance(precision: str, atol: float | None = None, rtol: float | None = None) -> Tolerance:
    """The default `Tolerance` of `precision`, with `atol` / `rtol` overridden when given.

    Overriding `atol` or `rtol` of an int8 artifact makes its element-wise test binding.
    """
    base = DEFAULT_TOLERANCES[tolerance_key(precision)]
    if atol is not None and not atol >= 0:
        raise InputError(f"atol: expected a number >= 0; got {atol}", param="atol")
    if rtol is not None and not rtol >= 0:
        raise InputError(f"rtol: expected a number >= 0; got {rtol}", param="rtol")
    if atol is None and rtol is None:
        return base
    return replace(base, atol=base.atol if atol is None else float(atol),
                   rtol=base.rtol if rtol is None else float(rtol), elementwise=True)


@dataclass
class OutputComparison:
    """Statistics of one artifact against the reference (all floats JSON-ready)."""

    max_abs_error: float
    mean_abs_error: float
    median_abs_error: float
    p99_abs_error: float
    max_rel_error: float
    cosine: float
    elements: int
    elements_failed: int
    nan_mismatches: int
    probability_mae: float | None = None
    probability_max_error: float | None = None
    probability_correlation: float | None = None
    decision_agreement: float | None = None
    decision_agreement_photos: float | None = None
    accuracy: float | None = None
    accuracy_reference: float | None = None
    accuracy_delta: float | None = None
    p_e: float | None = None
    p_e_reference: float | None = None
    labelled: int = 0
    failures: list = field(default_factory=list)
    outputs: list = field(default_factory=list)  # several outputs: the statistics of each

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self):
        out = asdict(self)
        if not self.outputs:
            del out["outputs"]
        out["passed"] = self.passed
        return out


def _float(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def error_statistics(reference: np.ndarray, candidate: np.ndarray, atol: float, rtol: float) -> dict:
    """Absolute / relative error statistics, cosine similarity and the element-wise verdict."""
    ref = np.asarray(reference, dtype=np.float64).ravel()
    got = np.asarray(candidate, dtype=np.float64).ravel()
    if ref.shape != got.shape:
        raise ValueError(f"shape mismatch {reference.shape} vs {candidate.shape}")
    nan_ref, nan_got = np.isnan(ref), np.isnan(got)
    nan_mismatches = int(np.count_nonzero(nan_ref != nan_got))
    both = ~(nan_ref | nan_got)
    ref_b, got_b = ref[both], got[both]
    with np.errstate(invalid="ignore", over="ignore"):
        abs_err = np.abs(ref_b - got_b)
        abs_err[np.isnan(abs_err)] = 0.0  # +inf vs +inf
        rel_err = abs_err / np.maximum(np.abs(ref_b), np.finfo(np.float64).tiny)
    element_pass = (abs_err <= atol) | (rel_err <= rtol)
    failed = int(np.count_nonzero(~element_pass)) + nan_mismatches
    norm = np.linalg.norm(ref_b) * np.linalg.norm(got_b)
    cosine = float(np.dot(ref_b, got_b) / norm) if norm > 0 else (1.0 if not abs_err.any() else 0.0)
    empty = abs_err.size == 0
    return {
        "max_abs_error": 0.0 if empty else float(abs_err.max()),
        "mean_abs_error": 0.0 if empty else float(abs_err.mean()),
        "median_abs_error": 0.0 if empty else float(np.median(abs_err)),
        "p99_abs_error": 0.0 if empty else float(np.percentile(abs_err, 99)),
        "max_rel_error": 0.0 if empty else float(rel_err.max()),
        "cosine": cosine,
        "elements": int(ref.size),
        "elements_failed": failed,
        "nan_mismatches": nan_mismatches,
    }


class CompareFunc:
    """A comparison function: `compare(reference_outputs, candidate_outputs, labels, precision)`.

    Build one with `CompareFunc.simple(atol=None, rtol=None)` (precision defaults, optionally
    overridden) or pass any callable with the same signature to `compare_accuracy`.
    """

    def __init__(self, tolerance_for):
        self.tolerance_for = tolerance_for

    @classmethod
    def simple(cls, atol: float | None = None, rtol: float | None = None,
               tolerances: dict | None = None):
        table = dict(DEFAULT_TOLERANCES, **(tolerances or {}))

        def tolerance_for(precision):
            base = table.get(precision) or table[tolerance_key(precision)]
            if atol is None and rtol is None:
                return base
            return replace(default_tolerance(precision, atol, rtol),
                           min_decision_agreement=base.min_decision_agreement,
                           max_accuracy_delta=base.max_accuracy_delta,
                           max_probability_mae=base.max_probability_mae)

        return cls(tolerance_for)

    def __call__(self, reference: dict, candidate: dict, labels=None, precision: str = "fp32",
                 reference_probability=None, candidate_probability=None) -> OutputComparison:
        tolerance = self.tolerance_for(precision)
        pairs = pair_outputs(reference, candidate)
        stats = [error_statistics(r, c, tolerance.atol, tolerance.rtol) for r, c in pairs]
        merged = _merge_statistics(stats)
        result = OutputComparison(**merged)
        if len(stats) > 1:
            result.outputs = [{"name": name, "shape": list(np.shape(reference[name])[1:]), **stat}
                              for name, stat in zip(reference, stats)]
        detector = reference_probability is not None and candidate_probability is not None
        # decisions judge a detector's quantized outputs; any other tensor is judged element-wise
        if (tolerance.elementwise or not detector) and result.outputs:
            result.failures += [
                f"output {o['name']}: {o['elements_failed']} of {o['elements']} elements outside "
                f"atol={tolerance.atol:g} / rtol={tolerance.rtol:g} (max abs error "
                f"{o['max_abs_error']:.3g})" for o in result.outputs if o["elements_failed"]]
        elif (tolerance.elementwise or not detector) and result.elements_failed:
            result.failures.append(
                f"{result.elements_failed} of {result.elements} output elements outside "
                f"atol={tolerance.atol:g} / rtol={tolerance.rtol:g} (max abs error "
                f"{result.max_abs_error:.3g})")
        elif result.nan_mismatches:
            result.failures.append(f"{result.nan_mismatches} output elements NaN in one side only")
        if detector:
            self._detector_statistics(result, np.asarray(reference_probability, np.float64),
                                      np.asarray(candidate_probability, np.float64), labels, tolerance)
        return result

    @staticmethod
    def _detector_statistics(result, ref_p, got_p, labels, tolerance):
        diff = np.abs(ref_p - got_p)
        nan_probabilities = int(np.count_nonzero(np.isnan(got_p) & ~np.isnan(ref_p)))
        if nan_probabilities:
            result.failures.append(f"stego probability is NaN for {nan_probabilities} input(s)")
        diff = np.where(np.isnan(diff), 1.0, diff)  # a NaN probability is as wrong as it gets
        result.probability_mae = _float(diff.mean())
        result.probability_max_error = _float(diff.max())
        if ref_p.std() > 0 and got_p.std() > 0:
            result.probability_correlation = _float(np.corrcoef(ref_p, got_p)[0, 1])
        rule = metrics.decision_agreement(ref_p, got_p, labels, tolerance.min_decision_agreement,
                                          tolerance.max_accuracy_delta, DECISION_THRESHOLD)
        result.decision_agreement = rule["decision_agreement"]
        if rule["labelled"]:
            result.decision_agreement_photos = rule["judged_agreement"]
        if not rule["agreement_passed"]:
            result.failures.append(f"decision agreement {rule['judged_agreement']:.4f} on "
                                   f"{rule['judged_on']} < {rule['required_agreement']:.4g}")
        if result.probability_mae > tolerance.max_probability_mae:
            result.failures.append(f"stego probability MAE {result.probability_mae:.3g} > "
                                   f"{tolerance.max_probability_mae:g}")
        if labels is not None:
            result.labelled = rule["labelled"]
        if rule["labelled"]:
            known = np.asarray(labels) >= 0
            y = np.asarray(labels)[known]
            result.accuracy, result.accuracy_reference = rule["accuracy"], rule["accuracy_reference"]
            result.accuracy_delta = rule["accuracy_delta"]
            if (y == 0).any() and (y == 1).any():
                result.p_e = metrics.p_e(y, got_p[known])
                result.p_e_reference = metrics.p_e(y, ref_p[known])
            if not rule["accuracy_passed"]:
                result.failures.append(
                    f"accuracy {result.accuracy:.4f} vs reference "
                    f"{result.accuracy_reference:.4f} (|delta| > {rule['accuracy_bound']:.3g})")


def pair_outputs(reference: dict, candidate: dict) -> list:
    """Pair outputs by name, else by order (converters rename outputs); shapes must agree."""
    if len(reference) != len(candidate):
        raise InputError(f"output count differs: reference has {len(reference)} "
                         f"({', '.join(reference)}), artifact has {len(candidate)} ({', '.join(candidate)})")
    if set(reference) == set(candidate):
        pairs = [(reference[k], candidate[k]) for k in reference]
    else:
        pairs = list(zip(reference.values(), candidate.values()))
    for name, (ref, got) in zip(reference, pairs):
        if np.shape(ref) != np.shape(got):
            which = f"output {name}" if len(pairs) > 1 else "output"
            raise InputError(f"{which} shape differs: reference {list(np.shape(ref))}, "
                             f"artifact {list(np.shape(got))}")
    return pairs


def _merge_statistics(stats: list) -> dict:
    if len(stats) == 1:
        return dict(stats[0])
    total = sum(s["elements"] for s in stats)
    weighted = lambda key: sum(s[key] * s["elements"] for s in stats) / max(total, 1)  # noqa: E731
    return {
        "max_abs_error": max(s["max_abs_error"] for s in stats),
        "mean_abs_error": weighted("mean_abs_error"),
        "median_abs_error": max(s["median_abs_error"] for s in stats),
        "p99_abs_error": max(s["p99_abs_error"] for s in stats),
        "max_rel_error": max(s["max_rel_error"] for s in stats),
        "cosine": min(s["cosine"] for s in stats),
        "elements": total,
        "elements_failed": sum(s["elements_failed"] for s in stats),
        "nan_mismatches": sum(s["nan_mismatches"] for s in stats),
    }
