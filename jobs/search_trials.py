"""A search's trial table (``trials.json``): one row per trial, linking it to its task, job and run directory.

Each row names its trial (recipe, number, Optuna's trial id), its task and run directory, its values,
its state (``brainmri.sweepdir.TrialState``: submitting, running, pruning, then finished, pruned or
failed), its job, the metric of each epoch reported (``intermediate``) and, once ended, its value
and validation loss. :class:`TrialTable` keeps the rows beside the sweep's tasks and writes both
(``trials.json``, then the task table that ``launch/sweep.py status`` reads) atomically; the
collector's search view reads the same file. It knows nothing of Optuna's objects, only their numbers.
"""

from __future__ import annotations

import math
import time
from typing import Any

from brainmri.metric_names import TIE_BREAK, choice_key
from brainmri.rundir import RunDir
from brainmri.sweep.expand import Sweep, Task, save_table, trial_task
from brainmri.sweep.search import write_trials
from brainmri.sweepdir import TRIAL_ACTIVE, TRIAL_ENDED, TaskState, TrialState

ACTIVE_ROWS = TRIAL_ACTIVE
ENDED = TRIAL_ENDED


def metric_value(value: Any) -> float | None:
    """A logged metric as a float; None unless it is a real, finite number (not a bool, None, NaN or inf)."""
    finite = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if finite else None


def duration(seconds: float) -> str:
    """``42s``, ``3m07s`` or ``1h05m``."""
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else (f"{m}m{s:02d}s" if m else f"{s}s")


class TrialTable:
    """The trial rows of one search (``data``: the contents of trials.json) and the sweep's tasks by id."""

    def __init__(self, sweep: Sweep):
        self.sweep, self.spec = sweep, sweep.search_spec
        self.tasks: dict[str, Task] = {t.id: t for t in sweep.tasks}
        self.data: dict = {}

    @property
    def rows(self) -> list[dict]:
        return self.data["trials"]

    def save(self) -> None:
        """trials.json, then the task table (``launch/sweep.py status`` reads it), atomically."""
        write_trials(self.sweep.dir, self.data)
        self.sweep.tasks = list(self.tasks.values())
        save_table(self.sweep.dir, self.sweep.tasks)

    def task(self, row: dict) -> Task:
        return self.tasks[row["task"]]

    def counts(self) -> dict[str, int]:
        states = [r["state"] for r in self.rows]
        return {"finished": states.count(TrialState.FINISHED), "pruned": states.count(TrialState.PRUNED),
                "failed": states.count(TrialState.FAILED), "running": sum(s in ACTIVE_ROWS for s in states)}

    def add(self, recipe: str, trial) -> dict:
        """A new row (and task, unless a trial with the same values has it) for an Optuna trial of ``recipe``."""
        task, cfg = trial_task(self.sweep, recipe, dict(trial.params), trial.number)
        self.tasks.setdefault(task.id, task)
        row = {"recipe": recipe, "number": trial.number, "trial_id": trial._trial_id, "task": task.id,
               "run_dir": task.run_dir, "params": dict(trial.params), "state": TrialState.SUBMITTING, "value": None,
               "intermediate": {}, "epochs": sum(p.epochs for p in cfg.phases), "job_id": None, "cluster": None,
               "asked_at": time.time(), "submitted_at": None, "ended_at": None, "pruned_at": None, "error": None}
        self.rows.append(row)
        return row

    def best(self, recipe: str) -> dict | None:
        """The study's best trial of ``recipe`` (a finished one), by the one choice rule
        (``brainmri.metric_names.choice_key``: the metric, then the validation loss, then the earlier trial)."""
        rows = [r for r in self.rows if r["recipe"] == recipe and r["state"] == TrialState.FINISHED]
        return min(rows, key=lambda r: choice_key(r["value"], r.get("loss"), (r["number"],), self.spec.direction),
                   default=None)

    @staticmethod
    def loss(row: dict) -> float | None:
        """The finished run's validation loss: the choice rule's tie-break."""
        return metric_value((RunDir(row["run_dir"]).read_summary() or {}).get(TIE_BREAK))

    def record_end(self, row: dict, state: str, result: float | None, error: str | None) -> None:
        """The row of an ended trial: its state, value (a pruned trial's: its last epoch's), loss and error."""
        row.update(state=state, value=result, ended_at=time.time(), error=error,
                   loss=self.loss(row) if result is not None else None)
        if state == TrialState.PRUNED and row["intermediate"]:
            row["value"] = row["intermediate"][max(row["intermediate"], key=int)]

    def record_reconciled(self, row: dict, value: float) -> None:
        """The row (and task) of a trial recorded failed whose run finished after all: finished, with ``value``."""
        row.update(state=TrialState.FINISHED, value=value, error=None, ended_at=row.get("ended_at") or time.time(),
                   reconciled=True, loss=self.loss(row))
        self.task(row).state, self.task(row).error = TaskState.FINISHED, None

    def ending(self, row: dict, state: str, value: float | None, error: str | None) -> str:
        """How an ended trial is announced: its metric (and whether it is the best so far), its error's first
        line, or the epoch a pruned run stopped after."""
        best = self.best(row["recipe"])
        note = " (best so far)" if best is not None and best["number"] == row["number"] else ""
        shown = f": {self.spec.metric} {value:.4g}{note}" if state == TrialState.FINISHED else (
            f": {(error or '').strip().splitlines()[0][:200]}" if state == TrialState.FAILED and error else
            f" (stopped after epoch {RunDir(row['run_dir']).state().epoch})" if state == TrialState.PRUNED else "")
        return f"trial {row['number']} ({row['recipe']}) {state}{shown}"
