"""The sweep directory as one object, and the states of its tasks and trials: the only place both are spelled.

:class:`SweepDir` (beside :class:`brainmri.rundir.RunDir`, one floor up from nothing but it) names
every file a sweep keeps: ``sweep.yaml`` (the sweep as resolved), ``tasks.json``/``tasks.csv`` (the
task table), ``runs/<task id>/`` (each task's run directory), ``submitit/`` (the scheduler's
files), ``ensembles/<recipe>/`` (a recipe's ensemble evaluations) and, for a search,
``study.journal`` (the Optuna study), ``trials.json`` (trial ↔ task ↔ job) and the driver's lock.

The vocabularies, each defined once with its mapping:
- :class:`TaskState`: a task of the table (``sweep.py status``, ``tasks.csv``); what a run
  directory's status and a SLURM job state mean for it (:func:`task_state_of_job`).
- :class:`TrialState`: a search trial (``trials.json``, the driver, the collector's search view);
  what a task's state means for its trial (:func:`trial_state_of_task`).
A run's own status (finished, failed, running, interrupted, preempted, pruned) is the run
directory's (``brainmri.rundir``).
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from brainmri.locks import hold_lock
from brainmri.rundir import RunDir


class TaskState(StrEnum):
    NEW = "new"  # never submitted (or refused)
    SUBMITTED = "submitted"  # has a job id; neither the scheduler nor its run directory has said more
    PENDING = "pending"
    RUNNING = "running"
    REQUEUED = "requeued"  # a time-out or a pre-emption: it resumes from its last checkpoint
    FINISHED = "finished"
    PRUNED = "pruned"  # stopped early by a search driver: ended, never failed
    FAILED = "failed"


class TrialState(StrEnum):
    SUBMITTING = "submitting"  # asked of the study; its job id is not written yet
    RUNNING = "running"
    PRUNING = "pruning"  # the driver asked its run to stop at its next epoch end
    FINISHED = "finished"
    PRUNED = "pruned"
    FAILED = "failed"


TASK_ENDED = (TaskState.FINISHED, TaskState.PRUNED, TaskState.FAILED)
TASK_RESUBMITTABLE = (TaskState.NEW, TaskState.FAILED)
TRIAL_ENDED = (TrialState.FINISHED, TrialState.PRUNED, TrialState.FAILED)
TRIAL_ACTIVE = (TrialState.SUBMITTING, TrialState.RUNNING, TrialState.PRUNING)

# SLURM job states of a job that is not over, and the task state each means
SLURM_ACTIVE: dict[str, TaskState] = {
    "PENDING": TaskState.PENDING, "CONFIGURING": TaskState.PENDING, "SUSPENDED": TaskState.PENDING,
    "RUNNING": TaskState.RUNNING, "COMPLETING": TaskState.RUNNING, "RESIZING": TaskState.RUNNING,
    "READY": TaskState.RUNNING, "REQUEUED": TaskState.REQUEUED, "PREEMPTED": TaskState.REQUEUED,
}


def task_state_of_job(sched: str | None) -> TaskState | None:
    """The task state a SLURM job state means while the job is not over (None: it is over, or unknown)."""
    return SLURM_ACTIVE.get(sched or "")


def trial_state_of_task(state: str) -> TrialState | None:
    """The state a trial takes when its task is in ``state`` (None: the trial's own state stands)."""
    return _TRIAL_OF_TASK.get(str(state))


_TRIAL_OF_TASK = {TaskState.FINISHED.value: TrialState.FINISHED, TaskState.PRUNED.value: TrialState.PRUNED,
                  TaskState.FAILED.value: TrialState.FAILED}


class SweepDir:
    """Paths of one sweep directory (``<sweeps root>/<name>``)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"SweepDir({str(self.path)!r})"

    @staticmethod
    def is_sweep_dir(path: str | Path) -> bool:
        return SweepDir(path).tasks_json.is_file()

    @property
    def sweep_yaml(self) -> Path:
        return self.path / "sweep.yaml"

    @property
    def tasks_json(self) -> Path:
        return self.path / "tasks.json"

    @property
    def tasks_csv(self) -> Path:
        return self.path / "tasks.csv"

    @property
    def runs(self) -> Path:
        return self.path / "runs"

    def run_dir(self, task_id: str) -> RunDir:
        return RunDir(self.runs / task_id)

    @property
    def submitit(self) -> Path:
        """submitit's folder; each job's files under ``submitit/<job id>/``."""
        return self.path / "submitit"

    def ensemble_dir(self, recipe: str) -> RunDir:
        return RunDir(self.path / "ensembles" / recipe)

    # a search
    @property
    def study_journal(self) -> Path:
        return self.path / "study.journal"

    @property
    def trials_json(self) -> Path:
        return self.path / "trials.json"

    @property
    def driver_lock(self) -> Path:
        return self.path / ".driver.lock"

    def lock_driver(self, refused):
        """Take the search driver's lock (an OS file lock: it dies with its process); ``refused(holder)``
        makes the error raised when another driver holds it."""
        self.path.mkdir(parents=True, exist_ok=True)
        return hold_lock(self.driver_lock, refused)
