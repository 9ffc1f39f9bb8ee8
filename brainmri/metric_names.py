"""The metric names a run logs, defined once: what a search may optimise and a comparison may select on.

Every run writes, for its validation split at every epoch end (``metrics.jsonl``) and in its
summary, ``val/<score>`` for each score below (``brainmri.results.metrics.classification_metrics``
computes them). The search driver reports one of them to its pruner each epoch and tells the
study the summary's value; the collector selects each recipe's configuration on one of them
(or on any other summary key it is given). Bottom floor: no brainmri imports.
"""

from __future__ import annotations

# score -> the direction in which it improves
SCORES: dict[str, str] = {"acc": "maximize", "loss": "minimize", "macro_f1": "maximize", "auc": "maximize",
                          "ece": "minimize"}
EPOCH_METRICS: tuple[str, ...] = tuple(f"val/{s}" for s in SCORES)  # every epoch's row and the summary
DEFAULT_METRIC = "val/acc"


def lower_is_better(metric: str) -> bool:
    """A loss, a calibration error or an error rate improves downwards; anything else upwards."""
    return any(w in metric for w in ("loss", "ece", "error"))


def default_direction(metric: str) -> str:
    return "minimize" if lower_is_better(metric) else "maximize"


def unknown_epoch_metric(metric: object) -> str | None:
    """Why ``metric`` is not a metric every run logs at each epoch end (None when it is one)."""
    if metric in EPOCH_METRICS:
        return None
    return f"unknown metric {metric!r}: every run logs {', '.join(EPOCH_METRICS)} at each epoch end"
