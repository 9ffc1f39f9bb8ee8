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
