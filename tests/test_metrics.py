"""Detection metrics against hand-computed values."""

import math

import numpy as np
import pytest

from edgetrunc import metrics
from edgetrunc.errors import InputError

Y = [0, 0, 0, 0, 1, 1, 1, 1]
S = [0.1, 0.4, 0.35, 0.8, 0.9, 0.6, 0.3, 0.7]


def test_accuracy_and_confusion():
    # decisions at 0.5: 0 0 0 1 | 1 1 0 1 -> TN 3, FP 1, FN 1, TP 3
    assert metrics.accuracy(Y, S) == 0.75
    assert metrics.confusion_matrix(Y, S) == [[3, 1], [1, 3]]


def test_roc_auc_hand_computed():
    # pairs (stego > cover): 0.9 beats 4, 0.6 beats 3, 0.3 beats 1, 0.7 beats 3 -> 11/16
    assert metrics.roc_auc(Y, S) == pytest.approx(11 / 16)
    assert metrics.roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert metrics.roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert math.isnan(metrics.roc_auc([1, 1], [0.2, 0.3]))


def test_p_e_hand_computed():
    # threshold 0.6: P_FA = 1/4 (0.8), P_MD = 1/4 (0.3) -> 0.25; no threshold does better
    assert metrics.p_e(Y, S) == pytest.approx(0.25)
    assert metrics.p_e([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 0.0
    assert metrics.p_e([0, 0, 1, 1], [0.9, 0.8, 0.1, 0.2]) == 0.5  # never above chance
    assert metrics.p_e([0, 1, 0, 1], [0.3, 0.3, 0.3, 0.3]) == 0.5


def test_p_e_matches_brute_force():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.random(200) + 0.3 * y, 2)
    best = min((np.mean(s[y == 0] >= t) + np.mean(s[y == 1] < t)) / 2
               for t in np.concatenate([np.unique(s), [2.0]]))
    assert metrics.p_e(y, s) == pytest.approx(best)


def test_detection_report_per_source_and_photo_mean():
    y = [0, 1, 0, 1, 0, 1, 0, 1]
    s = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.1, 0.9],
                  [0.4, 0.6], [0.6, 0.4], [0.5, 0.5], [0.5, 0.5]])
    sources = ["a", "a", "a", "a", "b", "b", "b", "b"]
    report = metrics.detection_report(y, s, sources)
    assert report["per_source"]["a"]["p_e"] == 0.0
    assert report["per_source"]["b"]["p_e"] == 0.5
    # one shared threshold, photos weighted equally: t = 0.8 -> photo a 0, photo b 0.5
    assert report["p_e_photo_mean"] == 0.25
    assert report["per_source"]["a"]["error"] == 0.0
    assert report["per_source"]["b"]["error"] == 0.5
    assert report["per_source"]["a"]["accuracy"] == 1.0
    assert report["per_source"]["b"]["confusion"] == [[0, 2], [1, 1]]
    assert report["samples"] == 8 and report["confusion"] == [[2, 2], [1, 3]]


def test_photo_mean_weighs_photos_equally():
    # photo "big": 8 pairs perfectly separated; photo "small": 2 pairs at chance
    y = [0, 1] * 10
    s = [0.1, 0.9] * 8 + [0.9, 0.9, 0.1, 0.1]
    sources = ["big"] * 16 + ["small"] * 4
    report = metrics.detection_report(y, s, sources)
    assert report["p_e"] == pytest.approx(0.1)  # pooled: the big photo dominates
    assert report["p_e_photo_mean"] == pytest.approx(0.25)  # (0 + 0.5) / 2
    assert report["per_source"]["small"]["error"] == 0.5
    assert metrics.error_at([0, 1, 0, 1], [0.2, 0.6, 0.7, 0.9], 0.5) == 0.25


def test_bad_inputs():
    with pytest.raises(InputError, match="length"):
        metrics.p_e([0, 1], [0.1])
    with pytest.raises(InputError, match="labels"):
        metrics.accuracy([0, 2], [0.1, 0.2])
    with pytest.raises(InputError, match="output shape"):
        metrics.stego_probability(np.zeros((2, 3)))


def test_two_column_logits_get_a_softmax_so_scores_rank_by_stego_evidence():
    from edgetrunc.metrics import stego_probability

    logits = np.array([[5.0, 6.0], [-4.0, -3.5], [0.0, 3.0]])
    expected = 1 / (1 + np.exp(-(logits[:, 1] - logits[:, 0])))
    np.testing.assert_allclose(stego_probability(logits), expected)
    # the raw stego logit would rank the first row highest; its evidence (1.0) is the lowest
    assert np.argmax(stego_probability(logits)) == 2
    softmax = np.array([[0.2, 0.8], [0.9, 0.1]])
    np.testing.assert_array_equal(stego_probability(softmax), [0.8, 0.1])


def test_known_linear_output_is_a_logit():
    from edgetrunc.metrics import stego_probability

    logits = np.array([[-2.0], [0.0], [3.0]])
    np.testing.assert_allclose(stego_probability(logits, "linear"), 1 / (1 + np.exp([2.0, 0.0, -3.0])))
    np.testing.assert_array_equal(stego_probability(np.array([[0.2], [0.9]]), "sigmoid"), [0.2, 0.9])
    # two logits that happen to sum to 1 still get a softmax when the model says they are logits
    np.testing.assert_allclose(stego_probability(np.array([[0.25, 0.75]]), "linear"),
                               [1 / (1 + np.exp(-0.5))])
