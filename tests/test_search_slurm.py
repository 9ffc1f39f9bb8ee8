"""A TPE + ASHA search on the real local SLURM cluster (slurm/local_cluster.sh start), its driver a SLURM job.

One 12-trial search on 32-px phantoms (4 epochs of 2 steps each): its driver runs as
slurm/search_driver.sbatch; mid-study a running trial and then the driver are scancelled, and the
same command started again finishes the study. Skipped, with the reason, when the cluster is not up.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import TINY
from slurm_cluster import ROOT, SMALL_JOBS, cluster_problem, run_sweep

from brainmri.results.collect import collect_runs, compare
from brainmri.rundir import RunDir
from brainmri.sweep.search import read_trials

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(900)]
TRIALS, PARALLEL, EPOCHS = 12, 3, 4


def setup_module() -> None:
    problem = cluster_problem()
    if problem:
        pytest.skip(problem, allow_module_level=True)


def squeue(job_id: str) -> str:
    return subprocess.run(["squeue", "-h", "-o", "%T", "-j", job_id], capture_output=True, text=True).stdout.strip()


def wait_until(what: str, check, timeout: float = 400):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise TimeoutError(what)


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def test_tpe_asha_search_runs_async_prunes_and_survives_scancel_of_its_driver_and_a_trial(tmp_path, phantom_root):
    # epochs of about 0.6 s (96 px, batch 4, every step): the driver (polling every 0.5 s) reaches a trial it
    # prunes while the trial still trains; at 32 px and 2 steps an epoch took 0.04 s and a whole trial
    # could end before the driver saw its first epoch, so whether any trial was pruned was luck
    overrides = {"data.root": str(phantom_root), **dict(t.split("=") for t in TINY), "train.epochs": EPOCHS,
                 "data.input_size": 96, "data.batch_size": 4, "train.max_steps_per_epoch": None,
                 "wandb.enabled": False}
    search = {"sampler": "tpe", "trials": TRIALS, "parallel": PARALLEL, "pruner": "asha", "metric": "val/loss",
              "startup_trials": 4, "reduction_factor": 2, "seed": 0,
              "space": {"optim.lr": "loguniform(1e-4, 0.5)", "model.dropout": "uniform(0, 0.6)"}}
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump({"name": "srch", "recipe": "baseline_cnn", "overrides": overrides,
                                    "slurm": SMALL_JOBS, "search": search}))
    sweep_dir = tmp_path / "srch"
    args = [str(path), "--sweeps-root", str(tmp_path), "--poll", "0.5"]
    idle = int(subprocess.run(["sinfo", "-h", "-o", "%C"], capture_output=True, text=True).stdout.split("/")[1])
    sbatch = subprocess.run(["sbatch", "--parsable", "--mem=2G", f"--output={tmp_path}/driver-%j.out",
                             "slurm/search_driver.sbatch", *args], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "BRAINMRI_PYTHON": sys.executable}, check=True)
    driver = sbatch.stdout.strip().split(";")[0]

    def rows():
        return (read_trials(sweep_dir) or {}).get("trials", [])

    def running_victim():  # mid-study: a trial in its second epoch while 3 have ended
        ended = [r for r in rows() if r["state"] in ("finished", "pruned")]
        for r in rows() if len(ended) >= 3 else []:
            if r["state"] == "running" and len(RunDir(r["run_dir"]).epoch_rows()) == 1:
                return r
        return None

    wait_until("the driver's first trial", rows)
    second = run_sweep("--config", path, "--cluster", "slurm", "--sweeps-root", tmp_path)  # one writer
    assert second.returncode == 2 and "a search driver is already running" in second.stderr
    assert f"SLURM job {driver}" in second.stderr and len(second.stderr.strip().splitlines()) == 1
    victim = wait_until("a running trial after 3 ended ones", running_victim)
    subprocess.run(["scancel", victim["job_id"]], check=True)
    subprocess.run(["scancel", driver], check=True)
    log = tmp_path / f"driver-{driver}.out"
    wait_until("the driver stops", lambda: "search driver stopped by SIGTERM" in log.read_text(), 60)
    wait_until("the driver's job ends", lambda: not squeue(driver), 60)
    before = {r["number"]: r for r in rows()}
    assert len(before) < TRIALS

    restart = run_sweep("--config", path, "--cluster", "slurm", *args[1:], timeout=800)
    assert restart.returncode == 0, restart.stdout[-3000:] + restart.stderr[-3000:]
    assert "adopted" in restart.stdout

    table = read_trials(sweep_dir)
    trials = table["trials"]
    assert sorted(r["number"] for r in trials) == list(range(TRIALS))
    states = [r["state"] for r in trials]
    assert states.count("finished") + states.count("pruned") + states.count("failed") == TRIALS
    cancelled = next(r for r in trials if r["number"] == victim["number"])
    ended_as = RunDir(cancelled["run_dir"]).state().status
    if ended_as == "pruned":  # the pruner's request (epoch 1) reached the run at its epoch end before the SIGTERM
        assert cancelled["state"] == "pruned" and RunDir(cancelled["run_dir"]).prune_request() is not None
    else:  # stopped by scancel's SIGTERM: the run says preempted, the trial failed (the job was cancelled)
        assert ended_as == "preempted" and cancelled["state"] == "failed" and "cancelled" in (cancelled["error"] or "")
    # no trial ran twice: one job per trial, each run directory trained each epoch once
    submitted = {p.name for p in (sweep_dir / "submitit").iterdir() if p.name.isdigit()}  # job folders
    assert len({r["job_id"] for r in trials}) == TRIALS and {r["job_id"] for r in trials} == submitted
    for r in trials:
        run = RunDir(r["run_dir"])
        if r is not cancelled:
            assert run.state().status == r["state"]
        epochs = [row["epoch"] for row in run.epoch_rows()]
        assert epochs == list(range(1, len(epochs) + 1))
        assert "resuming" not in run.log_file.read_text()
        assert list(r["intermediate"]) == [str(e) for e in range(1, len(r["intermediate"]) + 1)]
    # pruned trials stopped early, on their own, with their checkpoints
    pruned = [r for r in trials if r["state"] == "pruned"]
    assert pruned, states
    for r in pruned:
        run = RunDir(r["run_dir"])
        assert (run.state().epoch < EPOCHS and run.last_checkpoint.is_file()
                and run.prune_request()["trial"] == r["number"])
    # asynchronous: up to `parallel` trials at once, from the trials' own start and end times
    spans = [(run.started_at, run.ended_at) for run in (RunDir(r["run_dir"]) for r in trials)
             if run.started_at and run.ended_at]
    assert max_overlap(spans) <= PARALLEL, spans
    if idle > PARALLEL:  # the cluster had room for the driver and `parallel` trials (it is shared)
        assert max_overlap(spans) >= 2, spans
    # the driver never waited for a batch: it kept `parallel` trials submitted while trials were left
    held = [(r["submitted_at"], r["ended_at"]) for r in trials]
    assert max_overlap(held) == PARALLEL
    # the study's best trial is the collector's best; pruned trials are never averaged
    best = table["best"]["baseline_cnn"]
    cmp = compare(collect_runs([sweep_dir]), metric="val/loss")
    chosen = cmp.recipes[0].runs
    assert [r.run_dir.name for r in chosen] == [Path(best["run_dir"]).name]
    assert chosen[0].summary["val/loss"] == best["value"] == min(r["value"] for r in trials if r["state"] == "finished")
    assert {r.run_dir.name for r in cmp.incomplete if r.status == "pruned"} == {Path(r["run_dir"]).name for r in pruned}
