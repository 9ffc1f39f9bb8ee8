"""The training state and the decisions taken on it at each epoch end: pure, no model, no accelerate.

:class:`TrainerState` holds every counter a resume needs (it is saved in each checkpoint).
:func:`after_epoch` decides, from one epoch's metrics row, whether the monitored metric improved
(a new best checkpoint) and whether early stopping ends the phase; :func:`step_scheduler` steps
the LR schedule (ReduceLROnPlateau on its monitored metric, any other per epoch);
:func:`next_phase` moves the state to the next phase.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields

log = logging.getLogger("brainmri")


@dataclass
class TrainerState:
    """Every counter a resume needs; saved in each checkpoint."""

    epoch: int = 0  # epochs completed over all phases
    phase: int = 0
    phase_epoch: int = 0  # epochs completed in the current phase
    phase_stopped: bool = False  # early stopping ended the current phase
    step: int = 0  # optimizer steps
    best_metric: float | None = None
    best_epoch: int = 0
    best_weights: str = "raw"  # raw | ema: which weights the best checkpoint holds (train.ema)
    es_best: float | None = None
    es_bad_epochs: int = 0
    wandb_id: str | None = None
    images_seen: int = 0
    train_time_s: float = 0.0

    @classmethod
    def from_dict(cls, data: dict) -> TrainerState:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def better(value: float | None, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """Is ``value`` better than ``best`` (``mode`` "min" or "max") by more than ``min_delta``? NaN never is."""
    if value is None or math.isnan(value):
        return False
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


def after_epoch(state: TrainerState, row: dict, monitor: str, mode: str, early_stop, phase_name: str = "") -> bool:
    """Record epoch ``row`` (the epoch just trained, ``row["epoch"]``) in ``state``; True when it is a new best.

    ``early_stop`` has ``enabled``, ``monitor``, ``mode``, ``min_delta`` and ``patience``: after
    ``patience`` epochs without an improvement the phase is stopped (``state.phase_stopped``).
    Advances ``state.epoch`` and ``state.phase_epoch``.
    """
    epoch = row["epoch"]
    improved = better(row[monitor], state.best_metric, mode)
    if improved:
        state.best_metric, state.best_epoch = row[monitor], epoch
    if early_stop.enabled:
        if better(row[early_stop.monitor], state.es_best, early_stop.mode, early_stop.min_delta):
            state.es_best, state.es_bad_epochs = row[early_stop.monitor], 0
        else:
            state.es_bad_epochs += 1
            if state.es_bad_epochs >= early_stop.patience:
                state.phase_stopped = True
                log.info("early stopping phase %r at epoch %d (%s did not improve for %d epochs)",
                         phase_name, epoch, early_stop.monitor, early_stop.patience)
    state.epoch += 1
    state.phase_epoch += 1
    return improved


def better_weights(row: dict, monitor: str, mode: str) -> dict:
    """Which weights validated better this epoch: ``{"name": "raw"|"ema", "monitor": the row's key}``.

    With ``train.ema`` the row also holds ``val_ema/...``, the averaged weights' validation; they
    win only when strictly better on the monitored metric.
    """
    ema_key = "val_ema/" + monitor.split("/", 1)[1] if monitor.startswith("val/") else None
    if ema_key and ema_key in row and better(row[ema_key], row[monitor], mode):
        return {"name": "ema", "monitor": ema_key}
    return {"name": "raw", "monitor": monitor}


def phase_done(state: TrainerState, epochs: int) -> bool:
    return state.phase_epoch >= epochs or state.phase_stopped


def next_phase(state: TrainerState) -> None:
    """Start the next phase: its own epoch count and early-stopping record."""
    state.phase += 1
    state.phase_epoch = 0
    state.phase_stopped = False
    state.es_best = None
    state.es_bad_epochs = 0


def step_scheduler(scheduler, row: dict, monitor: str) -> None:
    """One epoch's step of ``scheduler`` (None: constant LR); ReduceLROnPlateau reads ``row[monitor]``."""
    if scheduler is None:
        return
    if type(scheduler).__name__ == "ReduceLROnPlateau":
        scheduler.step(row[monitor])
    else:
        scheduler.step()

