"""Classification metrics on arrays and the confusion-matrix PNG.

Pure functions of (labels, probabilities): no torch, no distributed logic. The arithmetic is NumPy's,
defined as scikit-learn defines it (``tests/test_metrics.py`` holds every value to scikit-learn's on
random inputs with ties and missing classes): a training run computes these at every epoch, and
importing scikit-learn would cost it about a second of start-up for a few array operations.
Keys are flat ``<prefix>/<name>`` or ``<prefix>/<name>/<class>``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from brainmri.atomic import atomic_path

ECE_BINS = 15  # equal-width confidence bins of the one ECE brainmri reports


def calibration_bins(confidence: np.ndarray, correct: np.ndarray,
                     n_bins: int = ECE_BINS) -> tuple[list[float], list[float], float]:
    """Equal-width confidence bins: per non-empty bin its mean confidence and accuracy (the
    reliability curve), and the top-label ECE over them (Guo et al., 2017)."""
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=bool)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    xs, ys, ece = [], [], 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            xs.append(float(confidence[mask].mean()))
            ys.append(float(correct[mask].mean()))
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return xs, ys, float(ece)


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Top-label ECE with equal-width confidence bins (Guo et al., 2017)."""
    return calibration_bins(probs.max(axis=1), probs.argmax(axis=1) == labels, n_bins)[2]


def confusion_counts(labels, preds, num_classes: int) -> np.ndarray:
    """``C[i, j]``: how many samples of class ``i`` were predicted ``j`` (``sklearn.metrics.confusion_matrix``)."""
    labels, preds = np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)
    return np.bincount(labels * num_classes + preds, minlength=num_classes * num_classes).reshape(num_classes, -1)


def binary_auc(positive, scores) -> float:
    """ROC AUC of ``scores`` for the boolean ``positive`` (Mann-Whitney U with mid-ranks for ties, which
    equals the trapezoidal area under the ROC curve); NaN when one side is empty."""
    positive, scores = np.asarray(positive, dtype=bool), np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return math.nan
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    mid_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based average rank of each distinct score
    rank_sum = mid_rank[inverse][positive].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def macro_auc(labels: np.ndarray, probs: np.ndarray, num_classes: int) -> float:
    """Macro one-vs-rest ROC AUC; NaN when a class is missing from ``labels``."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < num_classes:
        return math.nan
    return float(np.mean([binary_auc(labels == c, probs[:, c]) for c in range(num_classes)]))


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den``, 0 where ``den`` is 0 (scikit-learn's ``zero_division=0``)."""
    return np.divide(num, den, out=np.zeros(len(num)), where=den > 0)


def per_class_scores(labels, preds, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per class: precision, recall, F1 (0 where undefined) and support, as
    ``sklearn.metrics.precision_recall_fscore_support(..., zero_division=0)``."""
    cm = confusion_counts(labels, preds, num_classes)
    tp, support = np.diag(cm).astype(np.float64), cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    return _ratio(tp, predicted), _ratio(tp, support), _ratio(2 * tp, support + predicted), support


def macro_f1(labels, probs) -> float:
    """Unweighted mean of the per-class F1 of the top-1 predictions of ``probs`` (N, K)."""
    probs = np.asarray(probs)
    return float(per_class_scores(labels, probs.argmax(axis=1), probs.shape[1])[2].mean())


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
    precision, recall, f1, support = per_class_scores(labels, preds, k)
    picked = np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)
    out = {
        f"{prefix}/acc": float((preds == labels).mean()),
        f"{prefix}/loss": float(-np.log(picked).mean()),
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


# matplotlib's "Blues" (ColorBrewer's nine steps), from 0 to 1
_BLUES = np.array([(247, 251, 255), (222, 235, 247), (198, 219, 239), (158, 202, 225), (107, 174, 214),
                   (66, 146, 198), (33, 113, 181), (8, 81, 156), (8, 48, 107)], dtype=np.float64)


def _blue(value: float) -> tuple[int, int, int]:
    at = min(max(value, 0.0), 1.0) * (len(_BLUES) - 1)
    lo = int(at)
    hi = min(lo + 1, len(_BLUES) - 1)
    r, g, b = (_BLUES[lo] + (_BLUES[hi] - _BLUES[lo]) * (at - lo)).round().astype(int)
    return int(r), int(g), int(b)


def save_confusion_png(labels, preds, classes: list[str], path: str | Path, title: str = "") -> np.ndarray:
    """Write the row-normalised confusion matrix as a PNG (true class per row, predicted per column,
    each cell its share of the row, shaded in matplotlib's Blues) and return it.

    Drawn with Pillow, which every run has loaded already (matplotlib would add about a second to a run).
    """
    from PIL import Image, ImageDraw, ImageFont

    k = len(classes)
    counts = confusion_counts(labels, preds, k).astype(np.float64)
    cm = np.nan_to_num(counts / np.maximum(counts.sum(axis=1, keepdims=True), 1))
    font, small = ImageFont.load_default(size=15), ImageFont.load_default(size=13)
    cell, pad = 84, 12
    text_w = lambda text, f: int(f.getlength(text))  # noqa: E731
    tick_w = max(text_w(c, small) for c in classes)
    vertical = tick_w > cell - 6  # long class names stand upright under their column
    left = pad + 22 + tick_w + 8
    top = pad + 28
    below = (tick_w + 8 if vertical else 20) + 30
    image = Image.new("RGB", (left + k * cell + pad, top + k * cell + below), "white")
    draw = ImageDraw.Draw(image)
    draw.text((left + k * cell / 2, pad), title or "normalised confusion matrix", fill="black", font=font,
              anchor="mt")
    for i in range(k):
        for j in range(k):
            x, y = left + j * cell, top + i * cell
            draw.rectangle((x, y, x + cell, y + cell), fill=_blue(cm[i, j]))
            draw.text((x + cell / 2, y + cell / 2), f"{cm[i, j]:.2f}", font=font, anchor="mm",
                      fill="white" if cm[i, j] > 0.5 else "black")
        draw.text((left - 8, top + i * cell + cell / 2), classes[i], fill="black", font=small, anchor="rm")
        if vertical:
            label = Image.new("L", (text_w(classes[i], small) + 4, 18), 0)
            ImageDraw.Draw(label).text((0, 9), classes[i], fill=255, font=small, anchor="lm")
            label = label.rotate(90, expand=True)
            image.paste("black", (int(left + i * cell + cell / 2 - label.width / 2), top + k * cell + 6), label)
        else:
            draw.text((left + i * cell + cell / 2, top + k * cell + 6), classes[i], fill="black", font=small,
                      anchor="mt")
    draw.rectangle((left, top, left + k * cell, top + k * cell), outline="black")
    draw.text((left + k * cell / 2, image.height - pad), "predicted label", fill="black", font=font, anchor="mb")
    axis = Image.new("L", (text_w("true label", font) + 4, 20), 0)
    ImageDraw.Draw(axis).text((0, 10), "true label", fill=255, font=font, anchor="lm")
    axis = axis.rotate(90, expand=True)
    image.paste("black", (pad, int(top + k * cell / 2 - axis.height / 2)), axis)
    with atomic_path(path) as tmp:
        image.save(tmp, format="png")
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
