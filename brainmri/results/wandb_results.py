"""What a finished run shows in W&B besides its curves.

Confusion matrices of val and test as W&B plots (``<split>/confusion``, data in
``<split>/confusion_table``), a per-class metrics table (``per_class_metrics``) and a
predictions table (``test/predictions``, ``val/predictions`` without a test split: path, label,
prediction, probabilities, band, and a downsized thumbnail for each misclassified image).
Everything is built from the run directory's own files (``predictions_<split>.csv``) and the
summary, the same ones the collector reads, so W&B and the run directory cannot disagree.
Knows nothing about training; brainmri.train.tracking logs what this builds, on rank 0.
"""

from __future__ import annotations

import pandas as pd

from brainmri.data.files import thumbnail
from brainmri.rundir import RunDir

THUMB_PX = 64      # longest side of a thumbnail
MAX_THUMBS = 64    # misclassified images shown as thumbnails (the rest keep their path)
PER_CLASS = ("precision", "recall", "f1", "support")


def per_class_rows(summary: dict, classes: list[str], splits: list[str]) -> list[list]:
    """``[split, class, precision, recall, f1, support]`` per split and class, from the summary."""
    return [[split, c, *(summary.get(f"{split}/{m}/{c}") for m in PER_CLASS)]
            for split in splits for c in classes]


def predictions_table(df: pd.DataFrame, classes: list[str], max_thumbs: int = MAX_THUMBS,
                      px: int = THUMB_PX):
    """A ``wandb.Table`` of one split's predictions; misclassified rows get a thumbnail."""
    import wandb

    probs = [f"prob_{c}" for c in classes]
    extra = [c for c in ("band", "similarity", "nearest_train") if c in df.columns]
    columns: list[str | int] = ["path", "label", "prediction", *probs, *extra, "correct", "image"]
    rows, shown = [], 0
    for r in df.to_dict("records"):
        correct = r["label"] == r["pred"]
        image = None
        if not correct and shown < max_thumbs:
            thumb = thumbnail(r["path"], px)
            if thumb is not None:
                image, shown = wandb.Image(thumb, caption=f"{r['label']} → {r['pred']}"), shown + 1
        rows.append([r["path"], r["label"], r["pred"], *(float(r[p]) for p in probs),
                     *(r[c] for c in extra), bool(correct), image])
    return wandb.Table(columns=columns, data=rows)


def results_media(run: RunDir, summary: dict) -> dict:
    """The W&B objects of a finished run, keyed as they are logged (see the module docstring)."""
    import wandb

    classes = list(summary["classes"])
    index = {c: i for i, c in enumerate(classes)}
    frames = {s: df for s in ("val", "test") if (df := run.read_predictions(s)) is not None}
    out: dict = {}
    for split, df in frames.items():
        out[f"{split}/confusion"] = wandb.plot.confusion_matrix(
            y_true=df["label"].map(index).tolist(), preds=df["pred"].map(index).tolist(), class_names=classes,
            title=f"{split} confusion matrix (best checkpoint, epoch {summary.get('best_epoch')})")
    out["per_class_metrics"] = wandb.Table(columns=["split", "class", *PER_CLASS],
                                           data=per_class_rows(summary, classes, list(frames)))
    shown = "test" if "test" in frames else "val"
    if shown in frames:
        out[f"{shown}/predictions"] = predictions_table(frames[shown], classes)
    return out
