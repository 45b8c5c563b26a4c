"""Detection metrics of a binary cover (0) / stego (1) detector, in numpy only (no TensorFlow).

`p_e` is the standard steganalysis error: the minimum over decision thresholds of
`(P_FA + P_MD) / 2`, the error of the best threshold with equal class priors.
`detection_report` bundles accuracy (threshold 0.5), ROC AUC, P_E and the confusion
matrix, overall and per source photo, plus P_E averaged over photos so that one large
photo with many tiles does not dominate the figure.
"""

from __future__ import annotations

import numpy as np

from edgetrunc.errors import InputError


def _labels_scores(y_true, scores):
    y = np.asarray(y_true).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise InputError(f"labels and scores differ in length: {y.shape[0]} vs {s.shape[0]}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise InputError("labels must be 0 (cover) or 1 (stego)")
    return y.astype(np.int64), s


DECISION_THRESHOLD = 0.5  # stego when the stego probability is >= this
SOFTMAX_TOLERANCE = 0.02  # int8 outputs dequantize to rows summing to 1 +- a few steps of 1/256


def is_detector_shape(shape) -> bool:
    """Whether an output shape is a detector's: `[N, 2]` (cover, stego) or `[N, 1]`."""
    shape = tuple(shape)
    return len(shape) == 2 and shape[1] in (1, 2)


def stego_probability(outputs, activation: str | None = None) -> np.ndarray:
    """`[N, 2]` (cover, stego) or `[N]` / `[N, 1]` stego scores -> `[N]` stego scores.

    `activation` is the model's last activation when known (`"softmax"`, `"sigmoid"`, or
    `"linear"` for logits). Logits get a softmax (two columns) or a sigmoid (one column).
    Without it, two columns that are not a softmax (a value outside [0, 1], or a row not
    summing to 1) are taken as logits, so the score is monotonic in the stego evidence (the
    raw stego logit alone is not); one column is taken as it is.
    """
    out = np.asarray(outputs, dtype=np.float64)
    if out.ndim == 2 and out.shape[1] == 2:
        is_probability = activation != "linear" and (out.size == 0 or (
            out.min() >= -SOFTMAX_TOLERANCE and out.max() <= 1 + SOFTMAX_TOLERANCE
            and np.all(np.abs(out.sum(axis=1) - 1) <= SOFTMAX_TOLERANCE)))
        if not is_probability:
            shifted = np.exp(out - out.max(axis=1, keepdims=True))
            out = shifted / shifted.sum(axis=1, keepdims=True)
        return out[:, 1]
    if out.ndim == 2 and out.shape[1] == 1:
        out = out[:, 0]
    if out.ndim == 1:
        return 1.0 / (1.0 + np.exp(-out)) if activation == "linear" else out
    raise InputError(f"model output shape {list(out.shape)}: expected [N, 2] (cover, stego) or [N]")


def accuracy(y_true, scores, threshold: float = 0.5) -> float:
    """Fraction of samples with `(score >= threshold) == label`."""
    y, s = _labels_scores(y_true, scores)
    if not y.size:
        return float("nan")
    return float(np.mean((s >= threshold).astype(np.int64) == y))


def confusion_matrix(y_true, scores, threshold: float = 0.5) -> list[list[int]]:
    """`[[TN, FP], [FN, TP]]`: rows are the true class (cover, stego), columns the decision."""
    y, s = _labels_scores(y_true, scores)
    decision = (s >= threshold).astype(np.int64)
    return [[int(np.sum((y == t) & (decision == d))) for d in (0, 1)] for t in (0, 1)]


def roc_auc(y_true, scores) -> float:
    """Area under the ROC curve (ties count one half); NaN when a class is missing."""
    y, s = _labels_scores(y_true, scores)
    n_pos, n_neg = int(np.sum(y == 1)), int(np.sum(y == 0))
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), np.float64)
    sorted_scores = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def p_e_threshold(y_true, scores, weights=None) -> tuple[float, float]:
    """`(P_E, threshold)`: the minimum of (P_FA + P_MD) / 2 and the threshold reaching it.

    Decision rule: stego when score >= threshold, over every observed score and +inf
    (all cover). `weights` weighs samples (e.g. 1 / tiles of their photo). P_E is NaN
    when a class is missing.
    """
    y, s = _labels_scores(y_true, scores)
    w = np.ones(len(y)) if weights is None else np.asarray(weights, np.float64).reshape(-1)
    w_cover, w_stego = w[y == 0].sum(), w[y == 1].sum()
    if w_cover <= 0 or w_stego <= 0:
        return float("nan"), float("nan")
    thresholds, inverse = np.unique(s, return_inverse=True)
    cover_at = np.bincount(inverse, weights=w * (y == 0), minlength=len(thresholds))
    stego_at = np.bincount(inverse, weights=w * (y == 1), minlength=len(thresholds))
    # threshold thresholds[j]: flagged = scores >= thresholds[j]
    false_alarm = np.cumsum(cover_at[::-1])[::-1] / w_cover
    missed = (np.cumsum(stego_at) - stego_at) / w_stego
    errors = np.append((false_alarm + missed) / 2, 0.5)
    best = int(np.argmin(errors))
    threshold = float(thresholds[best]) if best < len(thresholds) else float("inf")
    return float(min(errors[best], 0.5)), threshold


def p_e(y_true, scores, weights=None) -> float:
    """min over thresholds of (P_FA + P_MD) / 2; 0 is perfect, 0.5 is chance.

    Decision rule: stego when score >= threshold, for every threshold between observed
    scores (and the all-cover / all-stego extremes). NaN when a class is missing.
    """
    return p_e_threshold(y_true, scores, weights)[0]


def error_at(y_true, scores, threshold: float) -> float:
    """(P_FA + P_MD) / 2 at one fixed threshold (stego when score >= threshold)."""
    y, s = _labels_scores(y_true, scores)
    if not np.any(y == 0) or not np.any(y == 1):
        return float("nan")
    decision = s >= threshold
    return float((np.mean(decision[y == 0]) + np.mean(~decision[y == 1])) / 2)


def _figures(y, s, threshold):
    return {"samples": int(len(y)), "accuracy": accuracy(y, s, threshold),
            "auc": roc_auc(y, s), "p_e": p_e(y, s),
            "confusion": confusion_matrix(y, s, threshold)}


def detection_report(y_true, stego_prob, sources=None, threshold: float = 0.5) -> dict:
    """Accuracy, AUC, P_E and confusion matrix, overall and (with `sources`) per photo.

    Returns `{"samples", "accuracy", "auc", "p_e", "p_e_threshold", "confusion",
    "threshold"}` and, when `sources` names the photo of each sample:
    - `"p_e_photo_mean"`: P_E with every photo weighted equally (each sample weighs
      1 / samples of its photo), one shared threshold, so a photo with many tiles does not
      dominate; `"p_e_photo_mean_threshold"` is that threshold;
    - `"per_source": {name: {...}}` with each photo's accuracy, AUC, confusion, `p_e` (the
      photo's own best threshold: optimistic for a few tiles) and `error` ((P_FA + P_MD) / 2
      at the shared photo-weighted threshold: what one deployed detector gets).
    `stego_prob` may also be the `[N, 2]` softmax output.
    """
    s = stego_probability(stego_prob)
    y, s = _labels_scores(y_true, s)
    report = _figures(y, s, threshold)
    report["p_e_threshold"] = p_e_threshold(y, s)[1]
    report["threshold"] = float(threshold)
    if sources is not None:
        sources = np.asarray([str(name) for name in sources])
        if sources.shape[0] != y.shape[0]:
            raise InputError(f"sources and labels differ in length: {sources.shape[0]} vs {y.shape[0]}")
        names, counts = np.unique(sources, return_counts=True)
        weight_of = dict(zip(names.tolist(), (1.0 / counts).tolist()))
        weights = np.array([weight_of[name] for name in sources.tolist()])
        report["p_e_photo_mean"], shared = p_e_threshold(y, s, weights)
        report["p_e_photo_mean_threshold"] = shared
        per_source = {}
        for name in names.tolist():
            mask = sources == name
            figures = _figures(y[mask], s[mask], threshold)
            figures["error"] = error_at(y[mask], s[mask], shared)
            per_source[name] = figures
        report["per_source"] = per_source
    return report


NEARLY_CONSTANT_STD = 1e-3


def nearly_constant(probability, threshold: float = NEARLY_CONSTANT_STD) -> bool:
    """True if a reference stego probability barely moves over its inputs (std < `threshold`):
    agreement with it then proves little (parity and convert both warn)."""
    probability = np.asarray(probability, dtype=np.float64)
    return probability.size > 1 and float(probability.std()) < threshold


MIN_DECISION_AGREEMENT = 0.98
MAX_ACCURACY_DELTA = 0.01


def decision_agreement(reference_probability, candidate_probability, labels=None,
                       min_agreement: float = MIN_DECISION_AGREEMENT,
                       max_accuracy_delta: float = MAX_ACCURACY_DELTA,
                       threshold: float = DECISION_THRESHOLD) -> dict:
    """Whether a candidate (e.g. an int8 artifact) decides like its reference (Keras): the one rule.

    A decision is `probability >= threshold`. With `labels` (1 stego, 0 cover, -1 unknown)
    agreement is judged on the labelled inputs, else on all of them; it must reach
    `min_agreement`, but never more than `1 - 1/n` of n judged inputs: one flipped decision
    is the resolution of the measurement and is always tolerated (so `max(1,
    floor((1 - min_agreement) * n))` flips pass). With labels, the accuracy may move by at
    most `max(max_accuracy_delta, 1 / labelled)` (one flip moves it by 1 / labelled).

    Returns `{"samples", "decision_agreement"` (on all inputs), `"judged_on"` ("all inputs"
    or "labelled photos"), `"judged_agreement", "required_agreement", "agreement_passed",
    "labelled", "accuracy_reference", "accuracy", "accuracy_delta", "accuracy_bound",
    "accuracy_passed"` (the accuracy figures None without labelled inputs), `"passed"}`.
    """
    ref = np.asarray(reference_probability, np.float64).reshape(-1)
    got = np.asarray(candidate_probability, np.float64).reshape(-1)
    agree = (ref >= threshold) == (got >= threshold)
    known = np.zeros(len(ref), bool) if labels is None else np.asarray(labels).reshape(-1) >= 0
    labelled = int(known.sum())
    judged = known if labelled else np.ones(len(ref), bool)
    count = int(judged.sum())
    judged_agreement = float(agree[judged].mean()) if count else float("nan")
    required = min(float(min_agreement), 1.0 - 1.0 / count) if count > 1 else 0.0
    result = {
        "samples": int(len(ref)),
        "decision_agreement": float(agree.mean()) if len(ref) else float("nan"),
        "judged_on": "labelled photos" if labelled else "all inputs",
        "judged_agreement": judged_agreement, "required_agreement": required,
        "agreement_passed": not judged_agreement < required - 1e-12,
        "labelled": labelled, "accuracy_reference": None, "accuracy": None,
        "accuracy_delta": None, "accuracy_bound": None, "accuracy_passed": True,
    }
    if labelled:
        y = np.asarray(labels).reshape(-1)[known]
        result["accuracy_reference"] = accuracy(y, ref[known], threshold)
        result["accuracy"] = accuracy(y, got[known], threshold)
        result["accuracy_delta"] = result["accuracy"] - result["accuracy_reference"]
        result["accuracy_bound"] = max(float(max_accuracy_delta), 1.0 / labelled)
        result["accuracy_passed"] = abs(result["accuracy_delta"]) <= result["accuracy_bound"] + 1e-9
    result["passed"] = bool(result["agreement_passed"] and result["accuracy_passed"])
    return result
