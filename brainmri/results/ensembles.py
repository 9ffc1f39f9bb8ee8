"""Ensembles: the mean of a chosen configuration's replicates' test probabilities (from their test
predictions), scored as one model on the shared test images.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from brainmri.data.leakage import BANDS
from brainmri.results import metrics as M
from brainmri.results.comparison import EnsembleResult, Stat
from brainmri.results.runs import Run, load_predictions, run_name


def _max_similarity_rows(sims: np.ndarray) -> np.ndarray:
    """Per image, the member whose training images hold its most similar one (NaN similarity: never)."""
    filled = np.where(np.isnan(sims), -np.inf, sims)
    return filled.argmax(axis=0)


def ensemble_predictions(runs: list[Run]) -> tuple[pd.DataFrame | None, str | None]:
    """The members' test predictions averaged image by image: (frame, None) or (None, why not).

    Each member's test predictions are matched on ``path`` (the test set is shared); the
    frame has ``path``, ``label``, ``pred``, one ``prob_<class>`` per class (the mean of the
    members' softmax probabilities) and, when the members carry them, ``nearest_train``,
    ``similarity`` and ``band`` of the member whose training images hold the most similar image —
    the nearest training image in the union of the members' training images.
    """
    frames = []
    for r in runs:
        f = load_predictions(r)
        if f is None:
            return None, f"run {run_name(r)} has no test predictions"
        frames.append(f)
    cols = [c for c in frames[0].columns if c.startswith("prob_")]
    if not cols:
        return None, "the members' test predictions carry no probabilities"
    first = frames[0]
    for r, f in zip(runs, frames, strict=True):
        if [c for c in f.columns if c.startswith("prob_")] != cols:
            return None, f"run {run_name(r)} predicts other classes than run {run_name(runs[0])}"
        if "path" not in f or f["path"].isna().any() or f["path"].duplicated().any() \
                or set(f["path"]) != set(first["path"]):
            return None, f"runs {run_name(runs[0])} and {run_name(r)} were tested on different images"
    aligned = [f.set_index("path").loc[first["path"]] for f in frames]
    if any((a["label"].to_numpy() != aligned[0]["label"].to_numpy()).any() for a in aligned):
        return None, "the members' test labels differ for the same images"
    probs = np.mean([a[cols].to_numpy(dtype=np.float64) for a in aligned], axis=0)
    classes = [c.removeprefix("prob_") for c in cols]
    out = pd.DataFrame({"path": first["path"].to_numpy(), "label": aligned[0]["label"].to_numpy(),
                        "pred": [classes[k] for k in probs.argmax(1)]})
    for k, c in enumerate(cols):
        out[c] = probs[:, k]
    if all({"similarity", "band"} <= set(a.columns) for a in aligned):
        sims = np.stack([pd.to_numeric(a["similarity"], errors="coerce").to_numpy(dtype=float) for a in aligned])
        pick = _max_similarity_rows(sims)
        rows = np.arange(len(out))
        for col in ("nearest_train", "similarity", "band"):
            if all(col in a.columns for a in aligned):
                out[col] = np.stack([a[col].to_numpy(dtype=object) for a in aligned])[pick, rows]
    return out, None


def ensemble_result(runs: list[Run]) -> EnsembleResult | None:
    """The ensemble of ``runs`` (a chosen configuration's replicates) on the test split: its
    ``metrics`` (``test/...`` as a run's summary has them, per band too) and ``stats`` (metric ->
    ``Stat.one``, as the tables print them), or the ``reason`` there is none. None for a single run."""
    if len(runs) < 2:
        return None
    out = EnsembleResult(members=len(runs), runs=[run_name(r) for r in runs],
                         replicates=[list(r.replicate) for r in runs])
    frame, reason = ensemble_predictions(runs)
    if reason or frame is None:
        out.reason = reason
        return out
    classes = [c.removeprefix("prob_") for c in frame.columns if c.startswith("prob_")]
    index = {c: i for i, c in enumerate(classes)}
    labels = frame["label"].map(index)
    if labels.isna().any():
        out.reason = "a test label is not one of the predicted classes"
        return out
    labels, probs = labels.to_numpy(dtype=int), frame[[f"prob_{c}" for c in classes]].to_numpy()
    values = M.classification_metrics(labels, probs, classes, "test")
    if "band" in frame:
        values.update(M.band_metrics(labels, probs, frame["band"].fillna("novel").tolist(), classes, "test", BANDS))
    out.metrics = values
    out.stats = {k.removeprefix("test/"): Stat.one(v) for k, v in values.items()}
    return out
