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

Its parts: ``brainmri.jobs.search_study`` (the studies on ``<sweep dir>/study.journal``, which only
the driver, holding the sweep's lock, ever writes; the check that a re-run is the same study),
``brainmri.jobs.search_trials`` (the trial table, ``trials.json``) and ``brainmri.jobs.search_confirm``
(the best configurations re-run over other seeds). This module is the loop that ties them to the jobs.

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

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from brainmri.jobs.search_confirm import confirm_best
from brainmri.jobs.search_study import RECONCILES, SearchStudy, open_storage
from brainmri.jobs.search_trials import ACTIVE_ROWS, ENDED, TrialTable, duration, metric_value
from brainmri.jobs.submit import (
    executor_parameters,
    live_holder_job,
    make_executor,
    scheduler_states,
    submit_one,
    task_state,
)
from brainmri.rundir import RunDir, RunStatus
from brainmri.sweep.expand import Sweep, SweepError, Task, describe, format_params, save_sweep
from brainmri.sweep.search import DriverLockedError, lock_driver
from brainmri.sweepdir import TASK_ENDED, TaskState, TrialState, trial_state_of_task

__all__ = ["ACTIVE_ROWS", "CRASH_AT", "DRIVER_SBATCH", "ENDED", "END_GRACE_S", "RECONCILES", "STOP_SIGNALS",
           "SearchDriver", "crash_point", "open_storage", "print_plan", "run_search"]

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


class SearchDriver:
    """Runs one search sweep to its end (``run()``), resuming whatever an earlier driver left."""

    def __init__(self, sweep: Sweep, cluster: str, poll_s: float = 2.0, confirm_seeds: list | None = None,
                 out=None):
        self.sweep, self.spec, self.cluster, self.poll_s = sweep, sweep.search_spec, cluster, poll_s
        self.confirm_seeds = confirm_seeds or []
        self.out = out or sys.stdout
        self.study = SearchStudy(sweep)
        self.table = TrialTable(sweep)
        self.jobs: dict[str, Any] = {}  # task id -> the submitit job this process submitted
        self.executors: dict[str, Any] = {}
        self.stop_signal = 0
        self.started = time.monotonic()

    # ------------------------------------------------------------------ bookkeeping
    @property
    def studies(self) -> dict[str, Any]:
        """Each recipe's Optuna study."""
        return self.study.studies

    @property
    def tasks(self) -> dict[str, Task]:
        return self.table.tasks

    @property
    def data(self) -> dict:
        """The contents of trials.json."""
        return self.table.data

    @data.setter
    def data(self, value: dict) -> None:
        self.table.data = value

    @property
    def rows(self) -> list[dict]:
        return self.table.rows

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def save(self) -> None:
        """trials.json, then the task table (``launch/sweep.py status`` reads it), atomically."""
        self.table.save()

    def counts(self) -> dict[str, int]:
        return self.table.counts()

    def best(self, recipe: str) -> dict | None:
        """The study's best trial of ``recipe`` (``TrialTable.best``)."""
        return self.table.best(recipe)

    def asked(self, recipe: str) -> int:
        """Trials asked of ``recipe``'s study (a reconciled trial's completed copy is none)."""
        return self.study.asked(recipe)

    def progress(self) -> None:
        c = self.counts()
        total = sum(max(self.spec.trials, self.asked(r)) for r in self.studies)  # trials lowered: what was asked
        self.say(f"trials: {c['finished']} finished, {c['pruned']} pruned, {c['failed']} failed, "
                 f"{c['running']} running "
                 f"of {total}; elapsed {duration(time.monotonic() - self.started)}")

    # ------------------------------------------------------------------ the study
    def check_identity(self) -> dict | None:
        """The trial table the sweep directory holds; a SweepError when this search is another study."""
        return self.study.check_identity()

    def open(self) -> None:
        """Open (or create) one study per recipe and the trial table; refuse another study's settings."""
        old = self.check_identity()
        self.data = old or {"sweep": self.sweep.name, "trials": []}
        self.data["search"] = self.spec.to_dict()
        self.data["recipes"] = self.spec.resolved
        self.data["distributions"] = self.study.open()  # for the report's importance

    # ------------------------------------------------------------------ trials
    def ask(self, recipe: str) -> dict:
        """A new trial of ``recipe``: in the journal, then in trials.json (nothing submitted yet)."""
        row = self.table.add(recipe, self.study.ask(recipe))
        self.save()
        return row

    def job_name(self, task: Task) -> str:
        return f"{self.sweep.name}.{task.id}"

    def launch(self, row: dict) -> None:
        """Submit the trial's task, or attach it to the job of an earlier trial with the same values."""
        task = self.table.task(row)
        twin = next((r for r in self.rows if r is not row and r["task"] == row["task"] and r["job_id"]), None)
        if twin is not None:  # the same values as an earlier trial: the same run directory, trained once
            row.update(job_id=twin["job_id"], cluster=twin["cluster"], state=TrialState.RUNNING, twin_of=twin["number"],
                       submitted_at=time.time())
        elif (ended := RunDir(task.run_dir).state().status) in (RunStatus.FINISHED, RunStatus.PRUNED):
            # e.g. a confirmation run, or the run of a driver that died before it wrote the job id
            row.update(state=TrialState.RUNNING, submitted_at=time.time())
            self.say(f"trial {row['number']} ({row['recipe']}) is already {ended} ({task.run_dir}): adopted")
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
            epoch, value = r["epoch"], metric_value(r.get(metric))
            if row["state"] == TrialState.PRUNING or str(epoch) in row["intermediate"] or value is None:
                continue
            trial = self.study.trial(row)
            trial.report(value, epoch)
            row["intermediate"][str(epoch)] = value
            new = True
            if not ended and epoch < row["epochs"] and trial.should_prune():
                reason = f"{self.spec.pruner} pruner at epoch {epoch}: {metric} {value:.4g}"
                RunDir(row["run_dir"]).request_prune(trial=row["number"], epoch=epoch, reason=reason)
                row.update(state=TrialState.PRUNING, pruned_at=epoch)
                self.say(f"trial {row['number']} ({row['recipe']}) pruned: {reason}")
        return new

    def end(self, row: dict, state: str, error: str | None) -> None:
        """Tell the study how the trial's run ended (unless it already knows: a restarted driver)."""
        result = metric_value((RunDir(row["run_dir"]).read_summary() or {}).get(self.spec.metric)) \
            if state == TrialState.FINISHED else None
        if state == TrialState.FINISHED and result is None:
            state, error = TrialState.FAILED, f"the finished run's summary has no {self.spec.metric}"
        if result is not None and self.study.failed(row):
            self.reconcile(row, result)
            return
        self.study.tell(row, state, result)
        self.table.record_end(row, state, result, error)
        self.say(self.table.ending(row, state, result, error))
        self.progress()

    def reconcile(self, row: dict, value: float) -> None:
        """A trial the study failed whose run finished after all (its job was thought lost): the study gets a
        completed copy of it (Optuna never reopens an ended trial), and the row says finished with its value."""
        self.study.add_completed_copy(row, value)
        self.table.record_reconciled(row, value)
        self.say(f"trial {row['number']} ({row['recipe']}) was recorded failed, but its run finished: "
                 f"{self.spec.metric} {value:.4g}; recorded finished")

    def reconcile_ended(self) -> bool:
        """Every failed trial whose run directory has finished since is recorded finished (the run is the truth)."""
        changed = False
        for row in self.rows:
            if row["state"] != TrialState.FAILED or not RunDir(row["run_dir"]).state().finished:
                continue
            for r in RunDir(row["run_dir"]).epoch_rows():  # the study's copy carries the epochs' values
                if (epoch_value := metric_value(r.get(self.spec.metric))) is not None:
                    row["intermediate"].setdefault(str(r["epoch"]), epoch_value)
            value = metric_value((RunDir(row["run_dir"]).read_summary() or {}).get(self.spec.metric))
            if value is not None:
                self.reconcile(row, value)
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
        tasks = [self.table.task(r) for r in active]
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

    # ------------------------------------------------------------------ restart
    def _find_job(self, row: dict) -> str | None:
        """The SLURM job of a trial submitted just before an earlier driver died, by its name."""
        if self.cluster != "slurm":
            return None
        proc = subprocess.run(["squeue", "-h", "-o", "%i", "-n", self.job_name(self.table.task(row))],
                              capture_output=True, text=True, check=False)
        ids = proc.stdout.split()
        return ids[0] if proc.returncode == 0 and ids else None

    def adopt(self) -> None:
        """Take over what an earlier driver left: trials it asked, jobs it submitted, results it missed."""
        known = {(r["recipe"], r["number"]) for r in self.rows}
        for recipe, trial in list(self.study.unlisted(known)):  # asked, but the driver died before the table had them
            self.table.add(recipe, trial)
        adopted, resumed = 0, 0
        for row in self.rows:
            if row["state"] in ENDED:
                continue
            frozen = self.study.frozen(row)
            row["intermediate"].update({str(k): v for k, v in frozen.intermediate_values.items()})
            task = self.table.task(row)
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
        """Re-run each recipe's best configuration over ``confirm_seeds`` (``search_confirm.confirm_best``)."""
        return confirm_best(self.table, list(self.studies), self.confirm_seeds, self.cluster, self.say)


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
