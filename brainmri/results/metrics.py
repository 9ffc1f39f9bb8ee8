"""Classification metrics on arrays (scikit-learn does the math) and the confusion-matrix PNG.

Pure functions of (labels, probabilities): no torch, no distributed logic.
Keys are flat ``<prefix>/<name>`` or ``<prefix>/<name>/<class>``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    accuracy_score,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

from brainmri.atomic import atomic_path


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE with equal-width confidence bins (Guo et al., 2017)."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def macro_auc(labels: np.ndarray, probs: np.ndarray, num_classes: int) -> float:
    """Macro one-vs-rest ROC AUC; NaN when a class is missing from ``labels``."""
    if len(np.unique(labels)) < num_classes:
        return math.nan
    return float(roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=list(range(num_classes))))


def classification_metrics(labels, probs, classes: list[str], prefix: str) -> dict[str, float]:
    """All metrics for one split.

    Args:
        labels: int array (N,); probs: float array (N, K) of softmax probabilities.
    Returns:
        ``{"val/acc": …, "val/macro_f1": …, "val/recall/glioma": …, …}``
    """
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum(axis=1, keepdims=True)  # float32 softmax sums drift from 1 by ~1e-7
    k = len(classes)
    preds = probs.argmax(axis=1)
    idx = list(range(k))
    precision, recall, f1, support = precision_recall_fscore_support(labels, preds, labels=idx, zero_division=0)
    out = {
        f"{prefix}/acc": float(accuracy_score(labels, preds)),
        f"{prefix}/loss": float(log_loss(labels, np.clip(probs, 1e-12, 1.0), labels=idx)),
        f"{prefix}/macro_f1": float(f1.mean()),
        f"{prefix}/auc": macro_auc(labels, probs, k),
        f"{prefix}/ece": expected_calibration_error(labels, probs),
        f"{prefix}/n": int(len(labels)),
    }
    for i, name in enumerate(classes):
        out[f"{prefix}/precision/{name}"] = float(precision[i])
        out[f"{prefix}/recall/{name}"] = float(recall[i])
        out[f"{prefix}/f1/{name}"] = float(f1[i])
        out[f"{prefix}/support/{name}"] = int(support[i])
        out[f"{prefix}/acc/{name}"] = float(recall[i])  # per-class accuracy is that class's recall
    return out


def save_confusion_png(labels, preds, classes: list[str], path: str | Path, title: str = "") -> np.ndarray:
    """Write the row-normalised confusion matrix as a PNG and return it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = confusion_matrix(labels, preds, labels=list(range(len(classes))), normalize="true")
    cm = np.nan_to_num(cm)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ConfusionMatrixDisplay(cm, display_labels=classes).plot(ax=ax, cmap="Blues", values_format=".2f", colorbar=False)
    ax.set_title(title or "normalised confusion matrix")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return cm


BAND_MIN_N = 20  # below this many samples a band reports n and accuracy only


def band_metrics(labels, probs, bands, classes: list[str], prefix: str, band_names) -> dict[str, float]:
    """Metrics per similarity-to-training band: ``{prefix}/band/<band>/{n,acc,…}``.

    Every band gets ``n`` (0 when empty) and, when non-empty, ``acc``; a band of at least
    ``BAND_MIN_N`` samples gets the full set of ``classification_metrics``.
    """
    return subset_metrics(labels, probs, [b or "novel" for b in bands], band_names, classes, f"{prefix}/band")


def site_key(site: str) -> str:
    """A site's name as a metric-key part (no slashes)."""
    return str(site).replace("/", "_")


def site_metrics(labels, probs, sites, classes: list[str], prefix: str) -> dict[str, float]:
    """Metrics per acquisition site (a manifest's ``site`` column): ``{prefix}/site/<site>/{n,acc,…}``,
    by the rules of :func:`band_metrics`. Rows without a site count in no site."""
    keys = [site_key(s) if s else "" for s in sites]
    return subset_metrics(labels, probs, keys, sorted({k for k in keys if k}), classes, f"{prefix}/site")


def subset_metrics(labels, probs, members, names, classes: list[str], prefix: str) -> dict[str, float]:
    """``{prefix}/<name>/n`` and ``acc`` for each subset ``name`` (rows whose ``members`` value is it);
    the full ``classification_metrics`` for a subset of at least ``BAND_MIN_N`` rows."""
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    members = np.asarray(members)
    out: dict[str, float] = {}
    for name in names:
        mask = members == name
        key = f"{prefix}/{name}"
        out[f"{key}/n"] = int(mask.sum())
        if not mask.any():
            continue
        out[f"{key}/acc"] = float((probs[mask].argmax(axis=1) == labels[mask]).mean())
        if mask.sum() >= BAND_MIN_N:
            full = classification_metrics(labels[mask], probs[mask], classes, key)
            out.update({k: v for k, v in full.items() if k.count("/") == key.count("/") + 1})
    return out


def wilson_interval(successes: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (accuracy, a recall) from ``n`` trials."""
    if n <= 0:
        return math.nan, math.nan
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_interval(labels, probs, metric, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of ``metric(labels, probs)`` over resampled samples."""
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(labels), len(labels))
        v = metric(labels[idx], probs[idx])
        if v is not None and not math.isnan(v):
            values.append(v)
    if not values:
        return math.nan, math.nan
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)
