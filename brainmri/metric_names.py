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


# ------------------------------------------------------------------ the one choice rule
TIE_BREAK = "val/loss"  # the second criterion: a tie in the metric goes to the lower validation loss


def choice_key(value: float, loss: float | None, order: tuple, direction: str) -> tuple:
    """Sort key (smallest = best) of the one rule by which brainmri picks the best trial or configuration:
    the better ``value`` of the metric, then the lower validation loss, then the earlier ``order``
    (a search's trial number, else when it started); the search driver, ``--confirm-seeds``, the
    collector, its search view and the reports all choose by it."""
    sign = -1.0 if direction == "maximize" else 1.0
    finite_loss = isinstance(loss, (int, float)) and loss == loss and abs(loss) != float("inf")
    return (sign * value, loss if finite_loss else float("inf"), order)
