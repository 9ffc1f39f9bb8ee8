"""The search driver: the one writer of a search sweep's Optuna study, keeping ``parallel`` trials running.

``launch/sweep.py --config <search sweep>`` runs :class:`SearchDriver` (on a login node, or as a
small SLURM job: ``slurm/search_driver.sbatch``). It asks Optuna for a trial whenever a slot is free
(never waiting for a batch), turns its values into an ordinary task (``brainmri.sweep.expand.trial_task``:
same ids, run directories and W&B group as a grid's tasks) and submits it alone through submitit
(``--cluster slurm`` or ``local``). Each poll it reads every running trial's metrics rows (``RunDir.epoch_rows``),
reports each new epoch's metric once (by epoch number, so a requeued trial that redoes an epoch
is not counted twice), asks the pruner, and writes a prune request into the run directory; the
run reads it at its next epoch end and stops cleanly (status ``pruned``, checkpoints kept). A run
that ends is told to the study: finished with its summary's metric, pruned, or failed.

One writer. The study lives in ``<sweep dir>/study.journal``: Optuna's journal storage (every
change is one JSON line; opening replays them) on :class:`StudyJournal`, a backend that appends
through ``brainmri.atomic.append_line`` (fsynced; a failed write is cut back, a line torn by a kill
is dropped when the journal is opened). Only the driver opens it, and the driver holds the sweep's
lock (``brainmri.sweep.search.lock_driver``; a second driver is one line, exit 2); trials never
touch the study: they write their own run directory, as every run does. Optuna's SQLite storage
corrupts on NFS (its locking) and its file journal has lost lines with several hosts appending to
one file over NFS; with a single appending process, and each write fsynced, neither can happen.

Restart and adoption. Every step is written before the next one is taken: the trial to the
journal (``ask``), then the trial ↔ task row to ``trials.json`` (``submitting``), then the job id
(``running``), all through ``brainmri.atomic``. A restarted driver replays the journal and
``trials.json``; trials the study already ended are never run again; a trial whose job is still
queued or running (``sacct``/``squeue`` by its job id, or, if the driver died before it wrote the
id, by the job's name ``<sweep>.<task id>``) is adopted and polled as before; a trial asked but
never submitted is submitted now; its samplers are reseeded past the trials already drawn. With
``--cluster local`` the trials' processes outlive the driver; one interrupted together with it
(Ctrl-C reaches the whole process group) resumes from its checkpoint.

The run directory is the truth. A trial whose run directory a live process holds (its lock) is
running, whatever became of the job the driver knows: a driver that died between a submission
and writing its job id adopts the run on re-run, and a copy submitted anyway meets the run
directory's lock and ends "already running" (``brainmri.jobs.train_job``; on SLURM the lock's
holder names the original job, which is adopted). On every reopen and poll a trial recorded
failed whose run has finished since is recorded finished with its metric (the study gets a
completed copy of it, marked ``reconciles``: Optuna never reopens an ended trial), so the study,
``trials.json``, the task table and the collector's search view agree. A re-run that would be
another study (``brainmri.sweep.search.identity_differences``) is refused before anything is
written. ``$BRAINMRI_SEARCH_CRASH_AT=submitted`` kills the driver (``os._exit``) right after a
submission, before its job id is written: how the tests put a real crash there.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, TypeGuard

from brainmri.atomic import append_line
from brainmri.jobs.submit import (
    executor_parameters,
    live_holder_job,
    make_executor,
    refresh,
    scheduler_states,
    submit,
    submit_one,
    task_state,
    wait,
)
from brainmri.metric_names import TIE_BREAK, choice_key
from brainmri.rundir import RunDir, RunStatus
from brainmri.sweep.expand import (
    Sweep,
    SweepError,
    Task,
    confirm_task,
    describe,
    format_params,
    save_sweep,
    save_table,
    trial_task,
)
from brainmri.sweep.search import (
    DriverLockedError,
    identity_differences,
    lock_driver,
    read_trials,
    study_file,
    write_trials,
)
from brainmri.sweepdir import (
    TASK_ENDED,
    TASK_RESUBMITTABLE,
    TRIAL_ACTIVE,
    TRIAL_ENDED,
    TaskState,
    TrialState,
    trial_state_of_task,
)

ACTIVE_ROWS = TRIAL_ACTIVE
ENDED = TRIAL_ENDED
RECONCILES = "reconciles"  # user attribute of the completed copy of a failed trial whose run finished after all
END_GRACE_S = 30  # a trial whose job ended while its run directory still says running: failed after this
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
DRIVER_SBATCH = "slurm/search_driver.sbatch"


CRASH_AT = "BRAINMRI_SEARCH_CRASH_AT"  # tests: the driver dies (os._exit) at this named step


def crash_point(step: str) -> None:
    """Die here, as a kill -9 would, when ``$BRAINMRI_SEARCH_CRASH_AT`` names ``step`` (how the tests put
    a real crash of the real driver between two of its writes, e.g. after a submission, before its job id)."""
    if os.environ.get(CRASH_AT) == step:
        sys.stdout.flush()
        os._exit(137)


def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def _journal_backend():
    from optuna.storages.journal import BaseJournalBackend

    class StudyJournal(BaseJournalBackend):
        """Optuna's journal in one file, appended by one process through ``brainmri.atomic.append_line``."""

        def __init__(self, path: Path):
            self.path = Path(path)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            data = self.path.read_bytes() if self.path.exists() else b""
            if data and not data.endswith(b"\n"):  # a line torn by a kill mid-write: never applied, dropped
                with open(self.path, "r+b") as f:
                    f.truncate(data.rfind(b"\n") + 1)
                    os.fsync(f.fileno())
            self._offsets = [0]  # byte offset of each log line seen so far

        def read_logs(self, log_number_from: int):
            start = min(log_number_from, len(self._offsets) - 1)
            if not self.path.exists():
                return
            with open(self.path, "rb") as f:
                f.seek(self._offsets[start])
                for number, line in enumerate(f, start):
                    if not line.endswith(b"\n"):
                        break
                    if number + 1 == len(self._offsets):
                        self._offsets.append(self._offsets[number] + len(line))
                    if number >= log_number_from:
                        yield json.loads(line)

        def append_logs(self, logs: list[dict[str, Any]]) -> None:
            append_line(self.path, "\n".join(json.dumps(log, separators=(",", ":")) for log in logs))

    return StudyJournal


def open_storage(sweep_dir: Path):
    """The study's storage: Optuna's journal storage on the driver-only journal file."""
    from optuna.storages.journal import JournalStorage

    return JournalStorage(_journal_backend()(study_file(sweep_dir)))


def _finite(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else (f"{m}m{s:02d}s" if m else f"{s}s")


class SearchDriver:
    """Runs one search sweep to its end (``run()``), resuming whatever an earlier driver left."""

    def __init__(self, sweep: Sweep, cluster: str, poll_s: float = 2.0, confirm_seeds: list | None = None,
                 out=None):
        self.sweep, self.spec, self.cluster, self.poll_s = sweep, sweep.search_spec, cluster, poll_s
        self.confirm_seeds = confirm_seeds or []
        self.out = out or sys.stdout
        self.tasks: dict[str, Task] = {t.id: t for t in sweep.tasks}
        self.jobs: dict[str, Any] = {}  # task id -> the submitit job this process submitted
        self.executors: dict[str, Any] = {}
        self.trial_objs: dict[tuple, Any] = {}
        self.stop_signal = 0
        self.started = time.monotonic()
        self.data: dict = {}

    # ------------------------------------------------------------------ bookkeeping
    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    @property
    def rows(self) -> list[dict]:
        return self.data["trials"]

    def save(self) -> None:
        """trials.json, then the task table (``launch/sweep.py status`` reads it), atomically."""
        write_trials(self.sweep.dir, self.data)
        self.sweep.tasks = list(self.tasks.values())
        save_table(self.sweep.dir, self.sweep.tasks)

    def _task(self, row: dict) -> Task:
        return self.tasks[row["task"]]

    def counts(self) -> dict[str, int]:
        states = [r["state"] for r in self.rows]
        return {"finished": states.count(TrialState.FINISHED), "pruned": states.count(TrialState.PRUNED),
                "failed": states.count(TrialState.FAILED), "running": sum(s in ACTIVE_ROWS for s in states)}

    def progress(self) -> None:
        c = self.counts()
        total = sum(max(self.spec.trials, self.asked(r)) for r in self.studies)  # trials lowered: what was asked
        self.say(f"trials: {c['finished']} finished, {c['pruned']} pruned, {c['failed']} failed, "
                 f"{c['running']} running "
                 f"of {total}; elapsed {_duration(time.monotonic() - self.started)}")

    # ------------------------------------------------------------------ the study
    def _sampler(self, index: int, drawn: int):
        optuna = _optuna()
        seed = self.spec.seed + 1000 * index + drawn  # a restarted driver draws past the trials it already has
        if self.spec.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.spec.startup_trials, constant_liar=True)

    def _pruner(self):
        optuna, spec = _optuna(), self.spec
        if spec.pruner == "asha":
            return optuna.pruners.SuccessiveHalvingPruner(min_resource=spec.min_epochs,
                                                          reduction_factor=spec.reduction_factor)
        if spec.pruner == "median":
            return optuna.pruners.MedianPruner(n_startup_trials=spec.pruner_startup, n_warmup_steps=spec.min_epochs - 1)
        return optuna.pruners.NopPruner()

    def check_identity(self) -> dict | None:
        """The trial table of the study the sweep directory holds (None: none yet); a SweepError naming every
        difference when this search is another study (nothing is written before this check)."""
        old = read_trials(self.sweep.dir)
        diffs = identity_differences(old, self.spec) if old is not None else []
        if diffs:
            raise SweepError(f"{self.sweep.dir} holds another study: {'; '.join(diffs)}; nothing was changed "
                             "(run it with the study's settings, or give the sweep another name: name=...)")
        return old

    def open(self) -> None:
        """Open (or create) one study per recipe and the trial table; refuse another study's settings."""
        optuna = _optuna()
        old = self.check_identity()
        self.data = old or {"sweep": self.sweep.name, "trials": []}
        self.data["search"] = self.spec.to_dict()
        self.data["recipes"] = self.spec.resolved
        storage = open_storage(self.sweep.dir)
        self.studies = {}
        for i, recipe in enumerate(self.spec.fixed):
            study = optuna.create_study(storage=storage, study_name=f"{self.sweep.name}/{recipe}",
                                        direction=self.spec.direction, pruner=self._pruner(), load_if_exists=True)
            study.sampler = self._sampler(i, len(study.trials))
            self.studies[recipe] = study
        self.distributions = {k: self._distribution(p) for k, p in self.spec.space.items()}
        self.data["distributions"] = {k: optuna.distributions.distribution_to_json(d)
                                      for k, d in self.distributions.items()}  # for the report's importance

    @staticmethod
    def _distribution(param):
        d = _optuna().distributions
        if param.kind == "choice":
            return d.CategoricalDistribution(list(param.choices))
        if param.kind == "int":
            return d.IntDistribution(param.low, param.high)
        return d.FloatDistribution(param.low, param.high, log=param.kind == "loguniform")

    def _trial(self, row: dict):
        key = (row["recipe"], row["number"])
        if key not in self.trial_objs:
            optuna, study = _optuna(), self.studies[row["recipe"]]
            self.trial_objs[key] = optuna.trial.Trial(study, row["trial_id"])
        return self.trial_objs[key]

    def asked(self, recipe: str) -> int:
        """Trials asked of ``recipe``'s study (a reconciled trial's completed copy is none)."""
        return sum(RECONCILES not in t.user_attrs for t in self.studies[recipe].get_trials(deepcopy=False))

    def _frozen(self, row: dict):
        return self.studies[row["recipe"]].get_trials(deepcopy=False)[row["number"]]

    # ------------------------------------------------------------------ trials
    def _row(self, recipe: str, trial) -> dict:
        task, cfg = trial_task(self.sweep, recipe, dict(trial.params), trial.number)
        self.tasks.setdefault(task.id, task)
        row = {"recipe": recipe, "number": trial.number, "trial_id": trial._trial_id, "task": task.id,
               "run_dir": task.run_dir, "params": dict(trial.params), "state": TrialState.SUBMITTING, "value": None,
               "intermediate": {}, "epochs": sum(p.epochs for p in cfg.phases), "job_id": None, "cluster": None,
               "asked_at": time.time(), "submitted_at": None, "ended_at": None, "pruned_at": None, "error": None}
        self.rows.append(row)
        return row

    def ask(self, recipe: str) -> dict:
        trial = self.studies[recipe].ask(self.distributions)  # the journal has it before anything else happens
        row = self._row(recipe, trial)
        self.trial_objs[(recipe, trial.number)] = trial
        self.save()
        return row

    def job_name(self, task: Task) -> str:
        return f"{self.sweep.name}.{task.id}"

    def launch(self, row: dict) -> None:
        """Submit the trial's task, or attach it to the job of an earlier trial with the same values."""
        task = self._task(row)
        twin = next((r for r in self.rows if r is not row and r["task"] == row["task"] and r["job_id"]), None)
        if twin is not None:  # the same values as an earlier trial: the same run directory, trained once
            row.update(job_id=twin["job_id"], cluster=twin["cluster"], state=TrialState.RUNNING, twin_of=twin["number"],
                       submitted_at=time.time())
        elif RunDir(task.run_dir).state().status in (RunStatus.FINISHED, RunStatus.PRUNED):  # e.g. a confirmation run
            row.update(state=TrialState.RUNNING, submitted_at=time.time())
        elif RunDir(task.run_dir).held_here():  # submitted by a driver that died before it wrote the job id
            row.update(state=TrialState.RUNNING, submitted_at=time.time())
            self.say(f"trial {row['number']} ({row['recipe']}) is already running ({task.run_dir}): adopted")
        else:
            if task.recipe not in self.executors:
                self.executors[task.recipe] = make_executor(self.sweep, self.sweep.resources(task.recipe), self.cluster)
            self.jobs[task.id] = submit_one(self.executors[task.recipe], task, self.cluster, self.job_name(task))
            crash_point("submitted")
            row.update(job_id=task.job_id, cluster=self.cluster, state=TrialState.RUNNING, submitted_at=time.time())
            self.say(f"trial {row['number']} ({row['recipe']}) submitted as job {task.job_id}: "
                     f"{format_params(row['params'])}")
        self.save()

    def fill(self) -> bool:
        """Ask for trials while fewer than ``parallel`` run; the recipe with the fewest trials first."""
        changed = False
        while self.counts()["running"] < self.spec.parallel and not self.stop_signal:
            left = [(self.asked(r), r) for r in self.studies if self.asked(r) < self.spec.trials]
            if not left:
                break
            self.launch(self.ask(min(left)[1]))
            changed = True
        return changed

    def report_epochs(self, row: dict, ended: bool) -> bool:
        """Report each new epoch's metric once (by epoch number) and, while the run goes on, ask the pruner."""
        metric, new = self.spec.metric, False
        for r in RunDir(row["run_dir"]).epoch_rows():
            epoch, value = r["epoch"], r.get(metric)
            if row["state"] == TrialState.PRUNING or str(epoch) in row["intermediate"] or not _finite(value):
                continue
            trial = self._trial(row)
            trial.report(float(value), epoch)
            row["intermediate"][str(epoch)] = float(value)
            new = True
            if not ended and epoch < row["epochs"] and trial.should_prune():
                reason = f"{self.spec.pruner} pruner at epoch {epoch}: {metric} {value:.4g}"
                RunDir(row["run_dir"]).request_prune(trial=row["number"], epoch=epoch, reason=reason)
                row.update(state=TrialState.PRUNING, pruned_at=epoch)
                self.say(f"trial {row['number']} ({row['recipe']}) pruned: {reason}")
        return new

    def end(self, row: dict, state: str, error: str | None) -> None:
        """Tell the study how the trial's run ended (unless it already knows: a restarted driver)."""
        optuna = _optuna()
        study, frozen = self.studies[row["recipe"]], self._frozen(row)
        value = (RunDir(row["run_dir"]).read_summary() or {}).get(self.spec.metric) \
            if state == TrialState.FINISHED else None
        if state == TrialState.FINISHED and not _finite(value):
            state, error = TrialState.FAILED, f"the finished run's summary has no {self.spec.metric}"
        result = float(value) if state == TrialState.FINISHED and _finite(value) else None
        if result is not None and frozen.state == optuna.trial.TrialState.FAIL:
            self.reconcile(row, result)
            return
        if not frozen.state.is_finished():
            if result is not None:
                study.tell(row["number"], result)
            else:
                study.tell(row["number"], state=optuna.trial.TrialState.PRUNED if state == TrialState.PRUNED
                           else optuna.trial.TrialState.FAIL)
        row.update(state=state, value=result, ended_at=time.time(), error=error,
                   loss=self._loss(row) if result is not None else None)
        if state == TrialState.PRUNED and row["intermediate"]:
            row["value"] = row["intermediate"][max(row["intermediate"], key=int)]
        best = self.best(row["recipe"])
        note = " (best so far)" if best is not None and best["number"] == row["number"] else ""
        shown = f": {self.spec.metric} {value:.4g}{note}" if state == TrialState.FINISHED else (
            f": {(error or '').strip().splitlines()[0][:200]}" if state == TrialState.FAILED and error else
            f" (stopped after epoch {RunDir(row['run_dir']).state().epoch})" if state == TrialState.PRUNED else "")
        self.say(f"trial {row['number']} ({row['recipe']}) {state}{shown}")
        self.progress()

    @staticmethod
    def _loss(row: dict) -> float | None:
        """The finished run's validation loss: the choice rule's tie-break."""
        loss = (RunDir(row["run_dir"]).read_summary() or {}).get(TIE_BREAK)
        return float(loss) if _finite(loss) else None

    def reconcile(self, row: dict, value: float) -> None:
        """A trial the study failed whose run finished after all (its job was thought lost): the study gets a
        completed copy of it (Optuna never reopens an ended trial), and the row says finished with its value."""
        optuna, frozen = _optuna(), self._frozen(row)
        self.studies[row["recipe"]].add_trial(optuna.trial.create_trial(
            params=frozen.params, distributions=frozen.distributions, value=value,
            intermediate_values={int(k): v for k, v in row["intermediate"].items()},
            user_attrs={RECONCILES: row["number"]}))
        row.update(state=TrialState.FINISHED, value=value, error=None, ended_at=row.get("ended_at") or time.time(),
                   reconciled=True, loss=self._loss(row))
        self._task(row).state, self._task(row).error = TaskState.FINISHED, None
        self.say(f"trial {row['number']} ({row['recipe']}) was recorded failed, but its run finished: "
                 f"{self.spec.metric} {value:.4g}; recorded finished")

    def reconcile_ended(self) -> bool:
        """Every failed trial whose run directory has finished since is recorded finished (the run is the truth)."""
        changed = False
        for row in self.rows:
            if row["state"] != TrialState.FAILED or not RunDir(row["run_dir"]).state().finished:
                continue
            for r in RunDir(row["run_dir"]).epoch_rows():  # the study's copy carries the epochs' values
                if _finite(r.get(self.spec.metric)):
                    row["intermediate"].setdefault(str(r["epoch"]), float(r[self.spec.metric]))
            value = (RunDir(row["run_dir"]).read_summary() or {}).get(self.spec.metric)
            if _finite(value):
                self.reconcile(row, float(value))
                changed = True
        return changed

    def _gone(self, row: dict, state: str) -> bool:
        """A local trial whose process ended without a word (no exit record, nothing in its run directory)."""
        if self.cluster != "local" or state not in (TaskState.SUBMITTED, TaskState.NEW) or not row["job_id"]:
            return False
        job = self.jobs.get(row["task"])
        return job.done() if job is not None else not Path(f"/proc/{row['job_id']}").exists()

    def poll(self) -> bool:
        """One look at every active trial: new epochs reported, ended runs told. True if anything changed."""
        changed = self.reconcile_ended()
        active = [r for r in self.rows if r["state"] in ACTIVE_ROWS and r["state"] != "submitting"]
        if not active:
            return changed
        tasks = [self._task(r) for r in active]
        sched = scheduler_states(tasks) if self.cluster == "slurm" else {}
        for row, task in zip(active, tasks, strict=True):
            state, error = task_state(self.sweep.dir, task, sched.get(row["job_id"] or ""))
            if state == TaskState.FAILED and (holder := live_holder_job(task)):  # a copy met the original's lock
                self.say(f"trial {row['number']} ({row['recipe']}) is already running as job {holder}: adopted")
                row.update(job_id=holder, state=TrialState.RUNNING)
                task.job_id, task.state, task.error = holder, TaskState.RUNNING, None
                changed = True
                continue
            changed |= self.report_epochs(row, state in TASK_ENDED)
            if self._gone(row, state):
                state, error = TaskState.FAILED, f"task process {row['job_id']} ended without a word"
            if state == TaskState.FAILED and RunDir(row["run_dir"]).state().status == RunStatus.RUNNING:
                # the job ended (scancel, time limit) but its process may still be writing (SLURM's KillWait)
                if time.time() - row.setdefault("ending_since", time.time()) < END_GRACE_S:
                    continue
            task.state, task.error = state, error
            if (ended := trial_state_of_task(state)) is not None:
                self.end(row, ended, error)
                changed = True
        return changed

    def best(self, recipe: str) -> dict | None:
        """The study's best trial of ``recipe`` (a finished one), by the one choice rule
        (``brainmri.metric_names.choice_key``: the metric, then the validation loss, then the earlier trial)."""
        rows = [r for r in self.rows if r["recipe"] == recipe and r["state"] == TrialState.FINISHED]
        return min(rows, key=lambda r: choice_key(r["value"], r.get("loss"), (r["number"],), self.spec.direction),
                   default=None)

    # ------------------------------------------------------------------ restart
    def _find_job(self, row: dict) -> str | None:
        """The SLURM job of a trial submitted just before an earlier driver died, by its name."""
        if self.cluster != "slurm":
            return None
        proc = subprocess.run(["squeue", "-h", "-o", "%i", "-n", self.job_name(self._task(row))],
                              capture_output=True, text=True, check=False)
        ids = proc.stdout.split()
        return ids[0] if proc.returncode == 0 and ids else None

    def adopt(self) -> None:
        """Take over what an earlier driver left: trials it asked, jobs it submitted, results it missed."""
        known = {(r["recipe"], r["number"]) for r in self.rows}
        for recipe, study in self.studies.items():  # asked, but the driver died before the table had them
            for t in study.get_trials(deepcopy=False):
                if (recipe, t.number) not in known and not t.state.is_finished():
                    self._row(recipe, t)
        adopted, resumed = 0, 0
        for row in self.rows:
            if row["state"] in ENDED:
                continue
            frozen = self._frozen(row)
            row["intermediate"].update({str(k): v for k, v in frozen.intermediate_values.items()})
            task = self._task(row)
            if row["job_id"] is None and (job_id := self._find_job(row)):
                row.update(job_id=job_id, cluster=self.cluster, state=TrialState.RUNNING)
                task.job_id, task.cluster = job_id, self.cluster
            if row["job_id"] is None:
                self.launch(row)
                continue
            adopted += 1
            if self.cluster == "local" and task_state(self.sweep.dir, task, None)[0] == TaskState.FAILED \
                    and RunDir(task.run_dir).state().status == RunStatus.INTERRUPTED:
                row["job_id"] = task.job_id = None  # stopped by the signal that stopped the driver: resume it
                self.launch(row)
                resumed += 1
        self.reconcile_ended()
        if adopted:
            self.say(f"adopted {adopted} trial(s) of an earlier driver" + (f", {resumed} resumed" if resumed else ""))
        self.save()

    # ------------------------------------------------------------------ the run
    def complete(self) -> bool:
        return all(self.asked(r) >= self.spec.trials for r in self.studies) \
            and not any(r["state"] in ACTIVE_ROWS for r in self.rows)

    def _on_signal(self, signum, _frame) -> None:
        self.stop_signal = self.stop_signal or signum

    def run(self) -> int:
        """Drive the search to its end; 0 when every recipe has a finished trial (1 if one has none),
        128+signal when stopped by one (the trials go on; the same command continues)."""
        self.check_identity()  # before anything is written: a refused re-run leaves every file as it was
        try:
            lock = lock_driver(self.sweep.dir)
        except DriverLockedError as e:
            raise SweepError(str(e)) from None
        previous = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        for key in [k for k in os.environ if k.startswith(("SLURM_", "SBATCH_", "SRUN_")) and k != "SLURM_CONF"]:
            os.environ.pop(key)  # the driver's own allocation must not leak into its trials' sbatch
        try:
            self.say(f"search {self.sweep.name}: {self.spec.sampler} sampler, {self.spec.pruner} pruner on "
                     f"{self.spec.metric} ({self.spec.direction}), {self.spec.trials} trial(s) per recipe, "
                     f"{self.spec.parallel} at once; {self.sweep.dir}")
            self.open()
            save_sweep(self.sweep)
            self.adopt()
            while not self.complete():
                changed = self.poll()
                changed |= self.fill()
                if self.stop_signal:
                    return self.stopped()
                if not changed:
                    self._sleep()
            code = self.finish()
            return self.confirm() if self.confirm_seeds and code == 0 else code
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            lock.release()

    def _sleep(self) -> None:
        end = time.monotonic() + self.poll_s
        while time.monotonic() < end and not self.stop_signal:
            time.sleep(min(0.1, self.poll_s))

    def stopped(self) -> int:
        self.save()
        running = self.counts()["running"]
        self.say(f"search driver stopped by {signal.Signals(self.stop_signal).name}: {running} trial(s) still "
                 f"running go on; run the same command again to adopt them and continue")
        return 128 + self.stop_signal

    def finish(self) -> int:
        """The study's best trial per recipe, saved in trials.json and printed."""
        self.data["best"] = {}
        code = 0
        for recipe in self.studies:
            best = self.best(recipe)
            if best is None:
                self.say(f"{recipe}: no trial finished")
                code = 1
                continue
            self.data["best"][recipe] = {k: best.get(k)
                                         for k in ("number", "value", "loss", "task", "run_dir", "params")}
            self.say(f"{recipe}: best trial {best['number']}, {self.spec.metric} {best['value']:.4g}: "
                     f"{format_params(best['params'])} ({best['run_dir']})")
        self.progress()
        self.save()
        self.say(f"python launch/collect.py {self.sweep.dir} --html {self.sweep.dir / 'report.html'}")
        return code

    def confirm(self) -> int:
        """Re-run each recipe's best configuration over ``confirm_seeds`` (ordinary tasks; done ones kept)."""
        chosen = []
        self.data["confirm"] = {}
        for recipe in self.studies:
            best = self.data["best"][recipe]
            ids = []
            for seed in self.confirm_seeds:
                task, _ = confirm_task(self.sweep, recipe, best["params"], seed)
                task = self.tasks.setdefault(task.id, task)
                ids.append(task.id)
                chosen.append(task)
            self.data["confirm"][recipe] = {"trial": best["number"], "seeds": list(self.confirm_seeds), "tasks": ids}
        self.save()
        refresh(self.sweep.dir, chosen)
        todo = [t for t in {t.id: t for t in chosen}.values() if t.state in TASK_RESUBMITTABLE]
        self.say(f"confirming the best configuration over seeds {', '.join(map(str, self.confirm_seeds))}: "
                 f"{len(todo)} run(s) to train")
        jobs = submit(self.sweep, todo, self.cluster) if todo else []
        if self.cluster == "slurm" and jobs:
            wait(jobs)
        refresh(self.sweep.dir, chosen)
        self.save()
        code = 0
        for recipe, entry in self.data["confirm"].items():
            values = [(RunDir(self.tasks[i].run_dir).read_summary() or {}).get(self.spec.metric)
                      for i in entry["tasks"]]
            done = [v for v in values if _finite(v)]
            if len(done) < len(values):
                code = 1
            mean = sum(done) / len(done) if done else math.nan
            std = (sum((v - mean) ** 2 for v in done) / (len(done) - 1)) ** 0.5 if len(done) > 1 else math.nan
            self.say(f"{recipe}: trial {entry['trial']} over {len(done)}/{len(values)} seed(s): "
                     f"{self.spec.metric} {mean:.4g} ± {std:.2g}")
        return code


def run_search(sweep: Sweep, cluster: str, dry_run: bool = False, poll_s: float = 2.0,
               confirm_seeds: list | None = None) -> int:
    """The sweep command for a search: its plan (``dry_run``), else the driver until the study ends."""
    if cluster not in ("slurm", "local"):
        raise SweepError(f"a search runs its trials beside its driver: --cluster slurm or local, not {cluster}")
    if dry_run:
        print_plan(sweep, cluster, confirm_seeds)
        return 0
    return SearchDriver(sweep, cluster, poll_s, confirm_seeds).run()


def print_plan(sweep: Sweep, cluster: str, confirm_seeds: list | None = None) -> None:
    """``--dry-run``: the search, each recipe's trial resources and the worst-case bill (every trial
    to its time limit), and how to run the driver as a SLURM job."""
    spec = sweep.search_spec
    print(f"search {sweep.name}: {spec.sampler} sampler, {spec.pruner} pruner on {spec.metric} ({spec.direction}), "
          f"{spec.trials} trial(s) per recipe, {spec.parallel} at once; {sweep.dir}")
    for key, param in spec.space.items():
        print(f"  space {key}: {param.text()}")
    print(f"  {'recipe':<22} {'trials':>6} {'GPU-h':>9} {'CPU-h':>9}  per trial")
    total = {"gpu_hours": 0.0, "cpu_hours": 0.0}
    runs = spec.trials + len(confirm_seeds or [])
    for recipe in spec.fixed:
        res = sweep.resources(recipe)
        hours = res.hours()
        for k in total:
            total[k] += hours[k] * runs
        print(f"  {recipe:<22} {runs:>6} {hours['gpu_hours'] * runs:>9.1f} {hours['cpu_hours'] * runs:>9.1f}  "
              f"{describe(res)}")
        print("    " + ", ".join(f"{k}={v}" for k, v in executor_parameters(res, sweep.name, cluster).items()
                                 if not k.endswith("_setup")))
    print(f"worst case (every trial{' and confirmation run' if confirm_seeds else ''} to its time limit): "
          f"{total['gpu_hours']:.1f} GPU-h, {total['cpu_hours']:.1f} CPU-h; pruned trials end sooner")
    print(f"driver as a SLURM job (1 CPU; restartable): sbatch {DRIVER_SBATCH} <this sweep YAML> [key=value ...]")
