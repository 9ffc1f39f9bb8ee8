"""Sweeps and templates on the real local SLURM cluster (slurm/local_cluster.sh start).

Skipped, with the reason, when the cluster is not running. Every task trains a tiny baseline CNN
on CPU; the fake GPUs of the local cluster only shape the allocation.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import submitit

from brainmri.config import load_config
from jobs.train_job import TrainJob
from slurm_cluster import (ROOT, SMALL_JOBS, TINY, cluster_problem, images_per_epoch, run_sweep, wait_for_job,
                           write_sweep)

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(600), pytest.mark.usefixtures("slurm_cluster")]


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """SLURM_CONF of the running local cluster; skips, saying how to start it, when there is none."""
    problem = cluster_problem()
    if problem:
        pytest.skip(problem)
    return os.environ["SLURM_CONF"]


def table(sweep_dir: Path) -> dict[str, dict]:
    return {row["id"]: row for row in json.loads((sweep_dir / "tasks.json").read_text())}


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def wandb_files(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))


def sacct_nodes(job_id: str) -> str:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "NodeList", "-j", job_id], capture_output=True,
                         text=True, check=True).stdout
    return out.split()[0]


def test_grid_2x2_runs_as_one_array_and_every_task_finishes(tmp_path, phantom_root):
    grid = {"seed": [0, 1], "optim.lr": [1.0e-3, 3.0e-4]}
    path = write_sweep(tmp_path / "grid.yaml", "grid2x2", grid, {"data.root": str(phantom_root), **TINY}, SMALL_JOBS)
    proc = run_sweep("--config", path, "--cluster", "slurm", "--wait", "--sweeps-root", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tasks = table(tmp_path / "grid2x2")
    assert len(tasks) == 4 and {t["state"] for t in tasks.values()} == {"finished"}
    assert len({t["job_id"].split("_")[0] for t in tasks.values()}) == 1  # one array
    for task in tasks.values():
        run_dir = Path(task["run_dir"])
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["seed"] == task["params"]["seed"]
        assert summary["config"]["optim"]["lr"] == task["params"]["optim.lr"]
        assert [r["epoch"] for r in rows(run_dir)] == [1, 2]
        assert len(wandb_files(run_dir)) == 1
    status = run_sweep("status", tmp_path / "grid2x2")
    assert status.returncode == 0 and "4 finished" in status.stdout


@pytest.mark.slow
def test_preempted_task_resumes_from_its_checkpoint_and_matches_an_uninterrupted_one(tmp_path, phantom_root):
    # larger images: an epoch must last long enough to be interrupted in the middle of the run
    common = ["data.root=" + str(phantom_root), *(f"{k}={v}" for k, v in TINY.items()), "data.input_size=96",
              "data.batch_size=4", "train.epochs=4", "train.max_steps_per_epoch=null"]
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit" / "%j", cluster="slurm")
    executor.update_parameters(timeout_min=30, cpus_per_task=1, mem_gb=2, slurm_signal_delay_s=30)
    jobs = {name: executor.submit(TrainJob(load_config(ROOT / "configs/baseline_cnn.yaml",
                                                       [*common, f"run_dir={tmp_path / name}"]).to_dict()))
            for name in ("straight", "preempted")}
    last = tmp_path / "preempted" / "checkpoints" / "last.pt"
    deadline = time.time() + 300
    while not last.exists():
        assert time.time() < deadline and not jobs["preempted"].done(), "no checkpoint before the interrupt"
        time.sleep(0.05)
    jobs["preempted"]._interrupt()  # SIGTERM then USR2, as SLURM does on pre-emption

    straight, resumed = jobs["straight"].result(), jobs["preempted"].result()
    log = (tmp_path / "preempted" / "train.log").read_text()
    assert "resuming" in log and "from epoch 0" not in log
    assert [r["epoch"] for r in rows(tmp_path / "preempted")] == [1, 2, 3, 4]
    for a, b in zip(rows(tmp_path / "straight"), rows(tmp_path / "preempted")):
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-6)
        assert a["val/loss"] == pytest.approx(b["val/loss"], rel=1e-6)
    for key in ("val/acc", "val/loss", "val/macro_f1", "best_epoch", "epochs_run"):
        assert resumed[key] == pytest.approx(straight[key], rel=1e-6), key
    assert len(wandb_files(tmp_path / "preempted")) == 2  # the requeued run continues the same W&B id
    assert len({p.stem for p in wandb_files(tmp_path / "preempted")}) == 1


def test_crashed_task_is_reported_and_only_it_is_resubmitted(tmp_path, phantom_root):
    late = tmp_path / "late-data"  # this task crashes: its data is not there yet
    path = write_sweep(tmp_path / "crash.yaml", "crash", {"data.root": [str(phantom_root), str(late)]}, TINY, SMALL_JOBS)
    proc = run_sweep("--config", path, "--cluster", "slurm", "--wait", "--sweeps-root", tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    first = table(tmp_path / "crash")
    failed = [t for t in first.values() if t["state"] == "failed"]
    finished = [t for t in first.values() if t["state"] == "finished"]
    assert len(failed) == 1 and len(finished) == 1 and failed[0]["params"]["data.root"] == str(late)
    assert str(late) in failed[0]["error"]  # the error tail names the cause
    status = run_sweep("status", tmp_path / "crash")
    assert status.returncode == 1 and "1 failed" in status.stdout and str(late) in status.stdout
    done_summary = Path(finished[0]["run_dir"]) / "summary.json"
    mtime = done_summary.stat().st_mtime_ns

    shutil.copytree(phantom_root, late)
    again = run_sweep("--config", path, "--cluster", "slurm", "--only-failed", "--wait", "--sweeps-root", tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 to submit" in again.stdout
    second = table(tmp_path / "crash")
    assert {t["state"] for t in second.values()} == {"finished"}
    assert second[failed[0]["id"]]["job_id"] != failed[0]["job_id"]
    assert second[finished[0]["id"]]["job_id"] == finished[0]["job_id"]
    assert done_summary.stat().st_mtime_ns == mtime  # never re-run
    rerun = run_sweep("--config", path, "--cluster", "slurm", "--sweeps-root", tmp_path)
    assert rerun.returncode == 0 and "0 to submit (2 finished" in rerun.stdout


def test_two_node_task_trains_with_ddp_across_both_nodes(tmp_path, phantom_root):
    path = write_sweep(tmp_path / "ddp.yaml", "ddp", {"seed": [0]}, {"data.root": str(phantom_root), **TINY},
                       {**SMALL_JOBS, "nodes": 2, "tasks_per_node": 1})
    proc = run_sweep("--config", path, "--cluster", "slurm", "--wait", "--sweeps-root", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (task,) = table(tmp_path / "ddp").values()
    assert sacct_nodes(task["job_id"]) == "node[1-2]"
    # 2 steps of 8 images per rank: 32 images per epoch only if both ranks trained one model
    assert images_per_epoch(Path(task["run_dir"])) == [2 * 2 * 8] * 2
    logs = sorted((tmp_path / "ddp" / "submitit").glob("*/*_1_log.out"))
    assert logs and "global_rank=1(2)" in logs[0].read_text()


def test_multinode_sbatch_template_runs_as_written(tmp_path, phantom_root):
    run_dir = tmp_path / "run"
    overrides = [f"data.root={phantom_root}", *(f"{k}={v}" for k, v in TINY.items()), f"run_dir={run_dir}"]
    proc = subprocess.run(["sbatch", "--parsable", f"--output={tmp_path}/%x-%j.out", "slurm/train_multinode.sbatch",
                           "configs/baseline_cnn.yaml", *overrides], cwd=ROOT, capture_output=True, text=True,
                          check=True)
    job_id = proc.stdout.strip().split(";")[0]
    state = wait_for_job(job_id)
    out = "".join(p.read_text() for p in tmp_path.glob("*.out"))
    assert state == "COMPLETED", out[-3000:]
    assert "2 node(s) x 1 process(es) on CPU" in out
    assert sacct_nodes(job_id) == "node[1-2]"
    assert (run_dir / "summary.json").is_file()
    assert images_per_epoch(run_dir) == [2 * 2 * 8] * 2


@pytest.mark.slow
@pytest.mark.parametrize("template, sbatch_args, runs, world_size", [
    ("train_single_node", [], ["."], 2),  # gres gpu:2 on a CPU node: two gloo processes
    ("train_array", ["--array=0-1"], ["seed0", "seed1"], 1),
])
def test_single_node_and_array_templates_run_as_written(tmp_path, phantom_root, template, sbatch_args, runs,
                                                        world_size):
    run_dir = tmp_path / "run"
    overrides = [f"data.root={phantom_root}", *(f"{k}={v}" for k, v in TINY.items()), f"run_dir={run_dir}"]
    proc = subprocess.run(["sbatch", "--parsable", f"--output={tmp_path}/%x-%A_%a.out", *sbatch_args,
                           f"slurm/{template}.sbatch", "configs/baseline_cnn.yaml", *overrides], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    state = wait_for_job(proc.stdout.strip().split(";")[0])
    out = "".join(p.read_text() for p in tmp_path.glob("*.out"))
    assert state == "COMPLETED", out[-3000:]
    for i, name in enumerate(runs):
        summary = json.loads((run_dir / name / "summary.json").read_text())
        assert summary["seed"] == (i if template == "train_array" else 0)
        assert images_per_epoch(run_dir / name) == [world_size * 2 * 8] * 2
