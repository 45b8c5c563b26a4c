"""How an int8 artifact decides compared with Keras, for the manifest of `convert`.

`quality_against_keras` reports decision agreement, accuracy and probability error of an
artifact against the Keras model on held-out pairs; its verdict is the one rule of
`edgetrunc.metrics.decision_agreement`, the same that `edgetrunc parity` applies.
"""

from __future__ import annotations

import numpy as np

from edgetrunc.metrics import decision_agreement

SCORING_BATCH = 16


def quality_against_keras(keras_probability, artifact_probability, labels) -> dict:
    """Decision agreement, accuracy delta and probability MAE of an artifact vs Keras."""
    ref = np.asarray(keras_probability, np.float64)
    out = np.asarray(artifact_probability, np.float64)
    rule = decision_agreement(ref, out, labels)
    return {
        "samples": int(len(np.asarray(labels))),
        "decision_agreement": round(rule["decision_agreement"], 4),
        "accuracy_keras": round(rule["accuracy_reference"], 4),
        "accuracy": round(rule["accuracy"], 4),
        "accuracy_delta": round(rule["accuracy_delta"], 4),
        "probability_mae": round(float(np.mean(np.abs(ref - out))), 5),
        "keras_probability_std": round(float(np.std(ref)), 4),
        "passed": rule["passed"],
    }


def artifact_probability(fmt, path, x, batch=SCORING_BATCH) -> np.ndarray:
    """Stego probability `[N]` of the artifact at `path` (of the format named `fmt`) on `x`,
    `batch` images at a time."""
    from edgetrunc.runtime import formats
    from edgetrunc.runtime.scoring import score_batch

    with formats.get(fmt).open(str(path)) as runner:
        return score_batch(runner, x, batch, clip=False)
