"""Submitting sweep tasks through submitit, and reading their states back.

``submit`` sends the chosen tasks of a sweep as job arrays, one per resource shape (``slurm``),
as local processes (``local``, waves of ``array_parallelism``) or runs them in this process
(``debug``); ``refresh`` works out each task's state from its run directory, the scheduler and,
for local tasks, how their process ended, with the tail of the job's stderr for failures. Knows
the task table, not the training.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shlex
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import FailedJobError, JobPaths
from submitit.local.local import LOCAL_REQUEUE_RETURN_CODE

from brainmri.config import load_config
from brainmri.jobs.local_task import exit_record
from brainmri.jobs.train_job import TrainJob
from brainmri.models.registry import ensure_weights
from brainmri.rundir import STOPPED, RunDir, RunStatus
from brainmri.sweep.expand import (
    Sweep,
    SweepError,
    Task,
    arrays,
    bill,
    check_same_sweep,
    describe,
    format_params,
    load_table,
    save_sweep,
    save_table,
)
from brainmri.sweep.resources import SlurmResources
from brainmri.sweepdir import SLURM_ACTIVE, TASK_RESUBMITTABLE, SweepDir, TaskState, task_state_of_job

CLUSTERS = ("slurm", "local", "debug")
ACTIVE = set(SLURM_ACTIVE)  # SLURM states of a job that is not over
ERROR_TAIL_LINES = 20


def submitit_folder(sweep_dir: Path) -> Path:
    return SweepDir(sweep_dir).submitit


def executor_parameters(res: SlurmResources, name: str, cluster: str) -> dict:
    """submitit parameters for one task asking for ``res`` (generic names, ``slurm_`` for SLURM only).

    On SLURM the job gets ``--signal=USR2@<signal_delay_s>`` (submitit's default signal: the task
    requeues itself and resumes from its last epoch checkpoint), ``--requeue`` and
    ``--open-mode=append``; every value is shell-quoted by submitit.
    """
    params: dict[str, Any] = {"name": name, "timeout_min": res.time_min, "tasks_per_node": res.ntasks_per_node,
              "cpus_per_task": res.cpus_per_task or 1, "mem_gb": res.mem_gb}
    if res.gpus_per_node:
        params["gpus_per_node"] = res.gpus_per_node
    # the job unpickles brainmri.jobs.train_job.TrainJob from the installed package: no PYTHONPATH needed
    setup: list[str] = []
    if cluster == "slurm":
        params.update(nodes=res.nodes, slurm_array_parallelism=res.array_parallelism,
                      slurm_signal_delay_s=res.signal_delay_s,
                      # one task failing (a rank that cannot start) ends the others instead of leaving
                      # them waiting for it until the time limit
                      slurm_srun_args=["--kill-on-bad-exit=1"],
                      slurm_additional_parameters={"requeue": True, **res.sbatch})
        params.update({f"slurm_{k}": getattr(res, k) for k in ("partition", "account", "qos", "constraint", "exclude")
                       if getattr(res, k)})
        setup += res.setup
    elif res.nodes > 1:
        raise SweepError(f"--cluster {cluster} runs on this machine; the sweep asks for slurm.nodes={res.nodes}")
    params[f"{cluster}_setup"] = setup
    return params


def make_executor(sweep: Sweep, res: SlurmResources, cluster: str) -> submitit.AutoExecutor:
    kwargs: dict[str, Any] = {}
    if cluster == "slurm":
        kwargs["slurm_max_num_timeout"] = res.max_requeues
    elif cluster == "local":  # each task runs under jobs.local_task, which records how it ended
        python = shlex.quote(sys.executable)
        kwargs["local_python"] = f"{python} -m brainmri.jobs.local_task {python}"
    executor = submitit.AutoExecutor(folder=submitit_folder(sweep.dir) / "%j", cluster=cluster, **kwargs)
    executor.update_parameters(**executor_parameters(res, sweep.name, cluster))
    return executor


@contextlib.contextmanager
def _quiet_submitit():
    """submitit prints sbatch's stderr and logs an error when sbatch refuses; we say it in one line."""
    log = logging.getLogger("submitit")
    disabled, log.disabled = log.disabled, True
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        log.disabled = disabled


def _refusal(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = next((line for line in reversed(lines) if "error" in line.lower()), lines[-1] if lines else "")
    return reason.removeprefix("sbatch: error: ") or type(error).__name__


def submit(sweep: Sweep, tasks: list[Task], cluster: str) -> list[submitit.Job]:
    """Submit ``tasks`` and record their job ids in the task table.

    ``slurm`` returns at once (one array per resource shape); ``local`` and ``debug`` return when
    all tasks ended. When SLURM refuses an array, the arrays accepted before it are recorded and
    a ``SweepError`` gives SLURM's reason; the refused tasks stay ``new``.
    """
    if cluster == "debug":
        run_in_process(sweep, tasks)
        return []
    groups = arrays(sweep, tasks)
    jobs: list[submitit.Job] = []
    t0 = time.monotonic()
    for i, (res, group) in enumerate(groups, 1):
        try:
            executor = make_executor(sweep, res, cluster)
        except RuntimeError as e:  # submitit cannot reach the scheduler (no srun, say)
            raise SweepError(f"--cluster {cluster}: cannot submit: {e}") from None
        if cluster == "slurm":
            try:
                with _quiet_submitit(), executor.batch():
                    group_jobs = [executor.submit(TrainJob(t.resolved_config())) for t in group]
            except (FailedJobError, OSError) as e:
                recipes = ", ".join(dict.fromkeys(t.recipe for t in group))
                raise SweepError(f"SLURM refused array {i}/{len(groups)} ({recipes}, {len(group)} task(s)): "
                                 f"{_refusal(e)}") from None
            _record(sweep, group, group_jobs, cluster)
            jobs += group_jobs
            continue
        wave = max(res.array_parallelism, 1)
        for start in range(0, len(group), wave):
            chunk = group[start:start + wave]
            chunk_jobs = [executor.submit(TrainJob(t.resolved_config())) for t in chunk]
            _record(sweep, chunk, chunk_jobs, cluster)
            # the whole sweep's counts and ETA, not this wave's
            earlier = job_counts(jobs)
            wait(chunk_jobs, earlier=(earlier["finished"], earlier["failed"]), total=len(tasks), start=t0)
            save_table(sweep.dir, refresh(sweep.dir, sweep.tasks))
            jobs += chunk_jobs
    return jobs


def submit_one(executor: submitit.AutoExecutor, task: Task, cluster: str, name: str) -> submitit.Job:
    """Submit ``task`` alone through ``executor`` as job ``name`` (a search trial; it finds the job again
    by its name) and set its job id; one-line ``SweepError`` with SLURM's reason when it is refused."""
    executor.update_parameters(name=name)
    try:
        with _quiet_submitit():
            job = executor.submit(TrainJob(task.resolved_config()))
    except (FailedJobError, OSError) as e:
        raise SweepError(f"SLURM refused task {task.id} ({task.recipe}): {_refusal(e)}") from None
    task.job_id, task.cluster, task.state, task.error = str(job.job_id), cluster, TaskState.SUBMITTED, None
    return job


def _record(sweep: Sweep, tasks: list[Task], jobs: list[submitit.Job], cluster: str) -> None:
    for task, job in zip(tasks, jobs, strict=True):
        task.job_id, task.cluster, task.state, task.error = str(job.job_id), cluster, TaskState.SUBMITTED, None
    save_table(sweep.dir, sweep.tasks)


def run_in_process(sweep: Sweep, tasks: list[Task]) -> None:
    for task in tasks:
        task.cluster, task.job_id, task.state, task.error = "debug", None, TaskState.RUNNING, None
        save_table(sweep.dir, sweep.tasks)
        try:
            TrainJob(task.resolved_config())()
            task.state = TaskState.FINISHED
        except Exception:  # a crashing task must not stop the others
            task.state, task.error = TaskState.FAILED, _tail(traceback.format_exc())
        save_table(sweep.dir, sweep.tasks)


def job_counts(jobs: list[submitit.Job]) -> dict[str, int]:
    """How many of ``jobs`` are pending, running, finished and failed (one scheduler query per poll)."""
    counts = dict.fromkeys(("pending", "running", "finished", "failed"), 0)
    for job in jobs:
        if job.done():
            try:
                ok = job.exception() is None  # read from the job's result file, no waiting
            except Exception:  # killed before it could write one
                ok = False
            counts["finished" if ok else "failed"] += 1
        else:
            counts["running" if str(job.state).split()[0] in ("RUNNING", "COMPLETING") else "pending"] += 1
    return counts


def wait(jobs: list[submitit.Job], poll_s: float = 2.0, stream=None, earlier: tuple[int, int] = (0, 0),
         total: int | None = None, start: float | None = None) -> None:
    """Block until every job ended, showing pending/running/finished/failed, elapsed time and ETA.

    ``earlier`` (finished, failed), ``total`` and ``start`` (``time.monotonic()``) count jobs of the same
    sweep that ran before these (earlier waves of a local sweep): the counts and the ETA are the sweep's.
    On a terminal: a live tqdm bar on stderr. Otherwise (logs, CI): one line per change of the counts.
    """
    import sys

    from tqdm import tqdm

    stream = stream or sys.stderr
    start, last = (time.monotonic() if start is None else start), None
    before = sum(earlier)
    total = max(total or 0, before + len(jobs))
    live = stream.isatty()
    bar = tqdm(total=total, initial=before, desc="tasks", unit="task", file=stream, dynamic_ncols=True) \
        if live else None
    try:
        while True:
            counts = job_counts(jobs)
            ended = counts["finished"] + counts["failed"]
            counts["finished"] += earlier[0]
            counts["failed"] += earlier[1]
            counts["pending"] += total - before - len(jobs)  # later waves
            done = ended + before
            text = ", ".join(f"{n} {state}" for state, n in counts.items())
            if bar is not None:
                bar.set_postfix_str(text, refresh=False)
                if done > bar.n:
                    bar.update(done - bar.n)  # redraws, with tqdm's rate and ETA
                else:
                    bar.refresh()  # elapsed time keeps moving while nothing ends
            elif counts != last:
                elapsed = time.monotonic() - start
                eta = elapsed / done * (total - done) if 0 < done < total else None
                print(f"tasks: {text} of {total}; elapsed {_duration(elapsed)}"
                      + (f", ETA {_duration(eta)}" if eta is not None else ""), file=stream, flush=True)
            last = counts
            if ended == len(jobs):
                return
            time.sleep(poll_s)
    finally:
        if bar is not None:
            bar.close()


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else (f"{m}m{s:02d}s" if m else f"{s}s")


def _tail(text: str, lines: int = ERROR_TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def error_tail(sweep_dir: Path, task: Task) -> str | None:
    """The end of the job's stderr (submitit writes the traceback there), else the run's error."""
    if task.job_id and task.cluster in ("slurm", "local"):
        stderr = JobPaths(submitit_folder(sweep_dir) / "%j", job_id=task.job_id, task_id=0).stderr
        if stderr.is_file():
            return _tail(stderr.read_text(errors="replace"))
    return RunDir(task.run_dir).state().error


def scheduler_states(tasks: list[Task]) -> dict[str, str]:
    """SLURM's state (PENDING, RUNNING, FAILED, ...) of each task's job, in one sacct call."""
    ids = [t.job_id for t in tasks if t.cluster == "slurm" and t.job_id]
    if not ids:
        return {}
    watcher = submitit.SlurmJob.watcher
    for job_id in ids:
        watcher.register_job(job_id)
    watcher.update()
    states = {job_id: watcher.get_state(job_id, mode="cache").split()[0] for job_id in ids}
    return {job_id: state for job_id, state in states.items() if state != "UNKNOWN"}


def live_holder_job(task: Task) -> str | None:
    """The SLURM job that holds ``task``'s run directory, when it is another job than the task's own and
    the scheduler says it is queued or running (the original of a task submitted twice)."""
    job = RunDir(task.run_dir).holder().get("slurm_job_id")
    if not job or str(job) == str(task.job_id) or task.cluster != "slurm":
        return None
    other = Task(task.id, task.recipe, task.config_path, {}, [], task.run_dir, job_id=str(job), cluster="slurm")
    return str(job) if scheduler_states([other]).get(str(job)) in ACTIVE else None


def refresh(sweep_dir: Path, tasks: list[Task]) -> list[Task]:
    """Update every task's state (and error tail) from its run dir and the scheduler; the caller saves."""
    states = scheduler_states(tasks)
    for task in tasks:
        task.state, task.error = task_state(sweep_dir, task, states.get(task.job_id or ""))
    return tasks


def _local_exit(sweep_dir: Path, task: Task) -> dict | None:
    """How a ``--cluster local`` task's process ended (jobs.local_task's record), if it did."""
    try:
        record = json.loads(exit_record(submitit_folder(sweep_dir) / "%j", task.job_id).read_text())
    except (OSError, ValueError, TypeError):
        return None
    return None if record.get("returncode") == LOCAL_REQUEUE_RETURN_CODE else record


def task_state(sweep_dir: Path, task: Task, sched: str | None) -> tuple[str, str | None]:
    """("finished"|"pruned"|"pending"|"running"|"requeued"|"failed"|"submitted"|"new", error tail) of one task.

    A task whose process died without a word (SIGKILL, the OOM killer) is "failed": for
    ``--cluster local`` with the signal that killed it; else, when its run directory says
    "running" but its process on this host is gone.
    """
    run = RunDir(task.run_dir).state()
    if run.finished:
        return TaskState.FINISHED, None
    if run.status == RunStatus.PRUNED:  # a search driver stopped it (brainmri.jobs.search): ended, never failed
        return TaskState.PRUNED, None
    if (active := task_state_of_job(sched)) is not None:
        return active, None  # a requeued job's run dir says "failed" until it restarts
    if RunDir(task.run_dir).held_here():  # a live process trains it, whatever became of this job (a copy of
        return TaskState.RUNNING, None   # the task that met the run directory's lock ends "already running")
    if task.cluster == "local" and task.job_id:
        ended = _local_exit(sweep_dir, task)
        if ended is not None:
            how = f"killed by {ended['signal']}" if ended.get("signal") else f"exited {ended.get('returncode')}"
            return TaskState.FAILED, f"task process {ended.get('pid')} {how}\n" + (error_tail(sweep_dir, task) or "")
    if run.status in STOPPED or sched is not None:
        # any ended SLURM state without a summary (FAILED, CANCELLED, TIMEOUT, ...) is a failure
        reason = "" if sched in (None, "FAILED", "COMPLETED") else f"job {sched.lower()}\n"
        if run.record.get("status") == RunStatus.RUNNING:  # it said running, but its process is gone
            reason += (run.error or "").partition("\n")[0] + "\n"
        return TaskState.FAILED, reason + (error_tail(sweep_dir, task) or "")
    if task.cluster == "debug":
        return task.state, task.error
    return (TaskState.SUBMITTED if task.job_id else TaskState.NEW), None


# ------------------------------------------------------------------ the sweep command
RESUBMITTABLE = set(TASK_RESUBMITTABLE)


def state_label(task: Task) -> str:
    """The task's state as shown: ``failed: no space`` when a full disk stopped its run."""
    return RunDir(task.run_dir).state().label if task.state == TaskState.FAILED else task.state


def where_it_is(task: Task) -> tuple[str, float | None]:
    """A running task's place (``epoch 2/10 batch 120/400``) and the seconds its run still needs, from its status."""
    if task.state not in ("running", "submitted", "requeued"):
        return "", None
    st = RunDir(task.run_dir).read_status()
    if st.get("status") != RunStatus.RUNNING or "in_epoch" not in st:
        return "", None
    place = f"epoch {st['in_epoch']}/{st.get('epochs', '?')} batch {st.get('batch', '?')}/{st.get('batches', '?')}"
    return place, st.get("run_eta_s")


def sweep_eta(tasks: list[Task], etas: dict[str, float | None]) -> str | None:
    """The sweep's ETA: the longest running task, plus the waiting tasks at the finished runs' mean wall time
    (as many at once as run now)."""
    running = [e for t, e in ((t, etas.get(t.id)) for t in tasks) if e is not None]
    waiting = sum(1 for t in tasks if t.state in ("pending", "new", "submitted") and etas.get(t.id) is None)
    found = [(RunDir(t.run_dir).read_summary() or {}).get("wall_time_s") for t in tasks if t.state == "finished"]
    walls = [float(w) for w in found if isinstance(w, (int, float))]
    if not running and not (waiting and walls):
        return None
    eta = max(running, default=0.0)
    if waiting:
        if not walls:
            return f">= {_duration(eta)} (+ {waiting} waiting task(s))"
        eta += -(-waiting // max(len(running), 1)) * sum(walls) / len(walls)
    return _duration(eta)


def print_status(tasks: list[Task]) -> int:
    labels = {t.id: state_label(t) for t in tasks}
    places = {t.id: where_it_is(t) for t in tasks}
    for t in tasks:
        place = places[t.id][0]
        print(f"{t.id}  {labels[t.id]:<16} {t.job_id or '-':<12} {t.recipe}  {format_params(t.params)}"
              + (f"  [{place}]" if place else ""))
    for t in tasks:
        if t.state == TaskState.FAILED:
            print(f"\n--- {t.id} {labels[t.id]} (job {t.job_id}):")
            print("\n".join(f"    {line}" for line in (t.error or "").splitlines()))
    counts = {s: sum(labels[t.id] == s for t in tasks) for s in dict.fromkeys(labels.values())}
    eta = sweep_eta(tasks, {k: v[1] for k, v in places.items()})
    print("\n" + ", ".join(f"{n} {s}" for s, n in counts.items()) + f" of {len(tasks)}"
          + (f"; sweep ETA {eta}" if eta else ""))
    return 1 if any(t.state == TaskState.FAILED for t in tasks) else 0


def status(sweep_dir: str | Path) -> int:
    """Print every task's state (refreshed from its run directory and the scheduler); 1 if any failed."""
    tasks = refresh(Path(sweep_dir), load_table(sweep_dir))
    save_table(Path(sweep_dir), tasks)
    return print_status(tasks)


def print_bill(sweep, tasks: list[Task]) -> None:
    b = bill(sweep, tasks)
    print(f"bill (requested at the time limits): {b['tasks']} task(s) in {b['arrays']} array(s)")
    print(f"  {'recipe':<22} {'tasks':>5} {'array':>5} {'GPU-h':>9} {'CPU-h':>9}")
    for r in b["rows"]:
        print(f"  {r['recipe']:<22} {r['tasks']:>5} {r['array']:>5} {r['gpu_hours']:>9.1f} {r['cpu_hours']:>9.1f}")
    print(f"  {'total':<22} {b['tasks']:>5} {b['arrays']:>5} {b['gpu_hours']:>9.1f} {b['cpu_hours']:>9.1f}")


def run_sweep(sweep: Sweep, cluster: str, only_failed: bool = False, dry_run: bool = False,
              wait_for_jobs: bool = False) -> int:
    """Submit the sweep's new and failed tasks (``only_failed``: the failed ones) and report.

    Every array's parameters are checked before anything is submitted; pretrained weights are
    fetched here once; with ``dry_run`` only the plan and the bill are printed. Returns the exit
    code: 0, or 1 when a task failed. A sweep directory that holds another sweep (other fixed settings,
    a task it would drop) is refused before anything is written.
    """
    check_same_sweep(sweep)
    refresh(sweep.dir, sweep.tasks)
    wanted = {TaskState.FAILED} if only_failed else RESUBMITTABLE
    chosen = [t for t in sweep.tasks if t.state in wanted]
    print(f"sweep {sweep.name}: {len(sweep.tasks)} task(s) in {sweep.dir}; {len(chosen)} to submit "
          f"({sum(t.state == 'finished' for t in sweep.tasks)} finished, "
          f"{sum(t.state not in RESUBMITTABLE | {'finished'} for t in sweep.tasks)} queued or running)")
    groups = arrays(sweep, chosen)
    for i, (res, group) in enumerate(groups, 1):  # every array's parameters are checked before any submission
        params = executor_parameters(res, sweep.name, cluster)
        recipes = ", ".join(dict.fromkeys(t.recipe for t in group))
        print(f"array {i}/{len(groups)} ({recipes}; {len(group)} task(s)), per task: {describe(res)}")
        print("  " + ", ".join(f"{k}={v}" for k, v in params.items() if not k.endswith("_setup")))
        for line in res.setup if cluster == "slurm" else ():
            print(f"  setup: {line}")
    for t in chosen:
        print(f"  {t.id}: {t.command()}")
    if chosen and (dry_run or cluster == "slurm"):
        print_bill(sweep, chosen)
    if dry_run or not chosen:
        return 0
    for t in chosen:  # pretrained weights: downloaded once here, read from the cache by every task
        ensure_weights(load_config(t.config_path, t.overrides))
    fresh = not sweep.dir.exists()
    save_sweep(sweep)
    try:
        jobs = submit(sweep, chosen, cluster)
    except SweepError:
        if fresh and not any(t.job_id for t in sweep.tasks):  # refused before any task was accepted: leave nothing
            shutil.rmtree(sweep.dir, ignore_errors=True)
        raise
    if cluster == "slurm":
        ids = list(dict.fromkeys(j.job_id.split("_")[0] for j in jobs))
        print(f"submitted {len(ids)} array(s) {' '.join(ids)} ({len(jobs)} task(s)); "
              f"python launch/sweep.py status {sweep.dir}")
        if not wait_for_jobs:
            return 0
        wait(jobs)
    save_table(sweep.dir, refresh(sweep.dir, sweep.tasks))
    return print_status(sweep.tasks)
