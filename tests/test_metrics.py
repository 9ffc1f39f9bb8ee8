"""Metrics equal independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from brainmri.results.metrics import classification_metrics, expected_calibration_error, save_confusion_png


def test_metrics_match_hand_computation(tmp_path):
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    probs = np.full((8, 4), 0.1)
    preds = [0, 1, 1, 1, 2, 0, 3, 3]
    for i, p in enumerate(preds):
        probs[i, p] = 0.7
    m = classification_metrics(labels, probs, ["a", "b", "c", "d"], "val")
    assert m["val/acc"] == pytest.approx(6 / 8)
    assert m["val/recall/a"] == pytest.approx(0.5) and m["val/precision/a"] == pytest.approx(0.5)
    assert m["val/precision/b"] == pytest.approx(2 / 3) and m["val/recall/b"] == 1.0
    f1 = [0.5, 0.8, 2 / 3, 1.0]
    assert m["val/macro_f1"] == pytest.approx(np.mean(f1))
    # every prediction has confidence 0.7: ECE = |accuracy − 0.7|
    assert m["val/ece"] == pytest.approx(abs(6 / 8 - 0.7))
    assert m["val/loss"] == pytest.approx(-np.mean(np.log(np.where(np.array(preds) == labels, 0.7, 0.1))))
    cm = save_confusion_png(labels, np.array(preds), ["a", "b", "c", "d"], tmp_path / "cm.png")
    np.testing.assert_allclose(cm.sum(1), 1.0)
    assert (tmp_path / "cm.png").stat().st_size > 1000


def test_ece_bins_and_missing_class_auc():
    labels = np.array([0, 1, 0, 1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.45, 0.55]])
    # bins of width 1/15: four separate bins, each |correct − confidence|
    expected = np.mean([abs(1 - 0.9), abs(1 - 0.8), abs(1 - 0.6), abs(1 - 0.55)])
    assert expected_calibration_error(labels, probs) == pytest.approx(expected)
    m = classification_metrics(np.array([0, 0]), np.array([[0.6, 0.4], [0.7, 0.3]]), ["x", "y"], "t")
    assert math.isnan(m["t/auc"])


@pytest.mark.parametrize("seed", range(6))
def test_numpy_metrics_equal_scikit_learn(seed):
    """brainmri's NumPy arithmetic against scikit-learn's definitions: ties in the scores (rounded
    probabilities), a class never predicted, and (odd seeds) a class with no samples."""
    from sklearn.metrics import confusion_matrix, log_loss, precision_recall_fscore_support, roc_auc_score

    from brainmri.results.metrics import binary_auc, confusion_counts, macro_auc, macro_f1

    rng = np.random.default_rng(seed)
    k, n = 4, 60
    labels = rng.integers(0, k - (seed % 2), n)
    probs = np.round(rng.dirichlet(np.ones(k), n), 1) + 1e-3  # coarse: many tied scores
    probs[:, 2] *= 0.1  # class 2 is (almost) never the top prediction
    probs /= probs.sum(axis=1, keepdims=True)
    classes = list("abcd")
    m = classification_metrics(labels, probs, classes, "t")
    preds = probs.argmax(axis=1)
    p, r, f, s = precision_recall_fscore_support(labels, preds, labels=range(k), zero_division=0)
    for i, c in enumerate(classes):
        assert m[f"t/precision/{c}"] == pytest.approx(p[i]) and m[f"t/recall/{c}"] == pytest.approx(r[i])
        assert m[f"t/f1/{c}"] == pytest.approx(f[i]) and m[f"t/support/{c}"] == s[i]
    assert m["t/macro_f1"] == pytest.approx(f.mean()) == macro_f1(labels, probs)
    assert m["t/loss"] == pytest.approx(log_loss(labels, probs, labels=range(k)))
    np.testing.assert_array_equal(confusion_counts(labels, preds, k), confusion_matrix(labels, preds, labels=range(k)))
    if seed % 2:
        assert math.isnan(m["t/auc"])
    else:
        # (on the probabilities as given: classification_metrics renormalises them, which can split a tie)
        assert macro_auc(labels, probs, k) == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr",
                                                                         labels=range(k)))
        assert m["t/auc"] == pytest.approx(macro_auc(labels, probs, k), abs=0.01)
    for c in range(k):
        if 0 < (labels == c).sum() < n:
            assert binary_auc(labels == c, probs[:, c]) == pytest.approx(roc_auc_score(labels == c, probs[:, c]))
