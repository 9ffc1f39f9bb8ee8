"""Sweeps and templates on the real local SLURM cluster (slurm/local_cluster.sh start).

Skipped, with the reason, when the cluster is not running. Every task trains a tiny baseline CNN
on CPU; the fake GPUs of the local cluster only shape the allocation.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import submitit
import yaml

from conftest import run_train
from slurm_cluster import (
    ROOT,
    SMALL_JOBS,
    TINY,
    cluster_problem,
    images_per_epoch,
    run_sweep,
    wait_for_job,
    write_sweep,
)

from brainmri.config import load_config
from brainmri.jobs.train_job import TrainJob

RECIPES = ["baseline_cnn", "resnet50_feature", "resnet50_finetune", "resnet152_ranger"]
TRAIN_PAST_THE_WARNING_S = 75  # a 2-minute job with --signal=USR2@60 is warned within its first 60 s

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
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "epoch" in r]


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
    # pre-emption's two signals, the warning first: SIGTERM then reaches every process of the step while
    # the job requeues itself (submitit's _interrupt() sends them the other way round)
    subprocess.check_call(["scancel", jobs["preempted"].job_id, "--signal", "USR2"])
    subprocess.check_call(["scancel", jobs["preempted"].job_id, "--signal", "SIGTERM"])

    straight, resumed = jobs["straight"].result(), jobs["preempted"].result()
    log = (tmp_path / "preempted" / "train.log").read_text()
    assert "resuming" in log and "from epoch 0" not in log
    assert [r["epoch"] for r in rows(tmp_path / "preempted")] == [1, 2, 3, 4]
    for a, b in zip(rows(tmp_path / "straight"), rows(tmp_path / "preempted"), strict=False):
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-6)
        assert a["val/loss"] == pytest.approx(b["val/loss"], rel=1e-6)
    for key in ("val/acc", "val/loss", "val/macro_f1", "best_epoch", "epochs_run"):
        assert resumed[key] == pytest.approx(straight[key], rel=1e-6), key
    assert len(wandb_files(tmp_path / "preempted")) == 2  # the requeued run continues the same W&B id
    assert len({p.stem for p in wandb_files(tmp_path / "preempted")}) == 1


def test_crashed_task_is_reported_and_only_it_is_resubmitted(tmp_path, phantom_root):
    late = tmp_path / "late-data"  # this task crashes: its data is not there yet
    path = write_sweep(tmp_path / "crash.yaml", "crash", {"data.root": [str(phantom_root), str(late)]}, TINY,
                       SMALL_JOBS)
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
    # the local nodes have 2 CPUs each: fewer than the template asks for by default
    proc = subprocess.run(["sbatch", "--parsable", f"--output={tmp_path}/%x-%j.out", "--cpus-per-task=2",
                           "slurm/train_multinode.sbatch", "configs/baseline_cnn.yaml", *overrides], cwd=ROOT,
                          capture_output=True, text=True, check=True)
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
    ("train_single_node", ["--cpus-per-task=2"], ["."], 2),  # gres gpu:2 on a CPU node: two gloo processes
    ("train_array", ["--array=0-1", "--cpus-per-task=1"], ["seed0", "seed1"], 1),
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


def show_job(job_id: str) -> dict[str, str]:
    """``scontrol show job`` as key → value (the job must have ended less than MinJobAge ago)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True,
                         check=True).stdout
    return {k: v.strip() for k, v in re.findall(r"(\S+?)=(.*?)(?= \S+?=|$)", out.splitlines()[0])}


def attempts(text: str) -> int:
    return len(re.findall(r"\(attempt \d+\)", text))


def epochs_lasting(seconds: float, args: list[str], run_dir: Path) -> int:
    """How many epochs of this training take ``seconds`` on this machine now (from a 2-epoch run)."""
    run_train("--config", "configs/baseline_cnn.yaml", *args, "train.epochs=2", f"run_dir={run_dir}")
    epoch_s = max(r["time/epoch_s"] for r in rows(run_dir))
    # no cap that a fast, idle machine would hit: 60 epochs of 0.8 s end before a 60 s warning
    return max(4, round(seconds / epoch_s))


def longer_limit_once_requeued(job_ids: list[str], procs: list[subprocess.Popen], minutes: int = 20) -> None:
    """Once each job was requeued after its time-limit warning, let its next attempt run to the end."""
    pending, deadline = set(job_ids), time.time() + 600
    while pending:
        assert time.time() < deadline, f"jobs {sorted(pending)} never requeued"
        assert all(p.poll() in (None, 0) for p in procs), "a process of the test ended early"
        for job_id in sorted(pending):
            job = show_job(job_id)
            assert job["JobState"] not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), (job_id, job["JobState"])
            if int(job["Restarts"]) >= 1:
                subprocess.run(["scontrol", "update", f"JobId={job_id}", f"TimeLimit={minutes}"], check=True)
                pending.discard(job_id)
        time.sleep(0.5)


@pytest.mark.slow
def test_time_limit_signal_checkpoints_requeues_and_resumes_exactly(tmp_path, phantom_root):
    # a 2-minute limit, the warning 60 s before it: training that needs longer is stopped at a
    # checkpoint, requeued and resumed, in the sbatch template and in a sweep task alike
    overrides = {"data.root": str(phantom_root), **TINY, "data.input_size": 64, "data.batch_size": 4,
                 "train.max_steps_per_epoch": None}
    args = [f"{k}={'null' if v is None else v}" for k, v in overrides.items()]
    epochs = epochs_lasting(TRAIN_PAST_THE_WARNING_S, args, tmp_path / "calibration")
    args.append(f"train.epochs={epochs}")
    template = subprocess.run(
        ["sbatch", "--parsable", "--time=2", "--signal=B:USR2@60", "--gres=gpu:1", "--cpus-per-task=1",
         f"--output={tmp_path}/template-%j.out", "slurm/train_single_node.sbatch", "configs/baseline_cnn.yaml",
         *args, f"run_dir={tmp_path / 'template'}"], cwd=ROOT, capture_output=True, text=True, check=True)
    job_id = template.stdout.strip().split(";")[0]
    path = write_sweep(tmp_path / "limit.yaml", "limit", {"seed": [0]}, {**overrides, "train.epochs": epochs},
                       {**SMALL_JOBS, "time_min": 2, "signal_delay_s": 60})
    submitted = run_sweep("--config", path, "--cluster", "slurm", "--sweeps-root", tmp_path)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    (task,) = table(tmp_path / "limit").values()
    # the same training without interruption, meanwhile, on this machine
    straight = subprocess.Popen([sys.executable, "train.py", "--config", "configs/baseline_cnn.yaml", *args,
                                 f"run_dir={tmp_path / 'straight'}"], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
    try:
        longer_limit_once_requeued([job_id, task["job_id"]], [straight])
        assert straight.wait(timeout=900) == 0, straight.stderr.read()[-3000:]
    finally:
        if straight.poll() is None:
            straight.kill()
    state = wait_for_job(job_id, timeout=600)
    out = "".join(p.read_text() for p in tmp_path.glob("template-*.out"))
    assert state == "COMPLETED", out[-3000:]
    rerun = run_sweep("--config", path, "--cluster", "slurm", "--sweeps-root", tmp_path)
    assert "0 to submit" in rerun.stdout  # requeued or running, never submitted twice
    deadline = time.time() + 600
    while "1 finished" not in run_sweep("status", tmp_path / "limit").stdout:
        assert time.time() < deadline, "the sweep task did not finish"
        time.sleep(2)

    job = show_job(job_id)
    assert job["Restarts"] == "1" and job["NumCPUs"] == "1" and job["CPUs/Task"] == "1" and job["Requeue"] == "1"
    assert "stopped by USR2" in out and attempts(out) == 2  # --open-mode=append: both attempts in one log
    sweep_job = show_job(task["job_id"])
    assert sweep_job["Restarts"] == "1" and sweep_job["CPUs/Task"] == "1" and sweep_job["Requeue"] == "1"
    script = subprocess.run(["scontrol", "write", "batch_script", task["job_id"], "-"], capture_output=True,
                            text=True, check=True).stdout
    assert "#SBATCH --signal=USR2@60" in script and "#SBATCH --requeue" in script
    sweep_log = "".join(p.read_text() for p in (tmp_path / "limit" / "submitit").glob("*/*_0_log.*"))
    assert sweep_log.count("Starting with JobEnvironment") == 2
    assert "timed-out" in sweep_log and "Requeued job" in sweep_log
    reference = rows(tmp_path / "straight")
    for run_dir in (tmp_path / "template", Path(task["run_dir"])):
        log = (run_dir / "train.log").read_text()
        assert "resuming" in log and "from epoch 0" not in log
        resumed = rows(run_dir)
        assert [r["epoch"] for r in resumed] == list(range(1, epochs + 1))
        for a, b in zip(reference, resumed, strict=False):
            for key in ("train/loss", "val/loss", "val/acc"):
                assert a[key] == pytest.approx(b[key], rel=1e-6), (run_dir, a["epoch"], key)


def test_rejected_partition_is_one_line_and_a_rerun_submits_what_is_missing(tmp_path, phantom_root):
    path = tmp_path / "reject.yaml"
    path.write_text(yaml.safe_dump({
        "name": "reject", "recipes": ["baseline_cnn", "resnet50_feature"], "seeds": [0, 1],
        "overrides": {"data.root": str(phantom_root), **TINY}, "slurm": SMALL_JOBS,
        "per_recipe": {"resnet50_feature": {"slurm": {"partition": "no-such-partition"},
                                            "overrides": {"model.pretrained": False}}}}))
    held = {"SBATCH_HOLD": "1"}  # nothing needs to run: only what SLURM accepts counts
    proc = run_sweep("--config", path, "--cluster", "slurm", "--sweeps-root", tmp_path, env=held)
    try:
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stderr.strip().splitlines() == [
            "error: SLURM refused array 2/2 (resnet50_feature, 2 task(s)): "
            "Batch job submission failed: Invalid partition name specified"]
        first = table(tmp_path / "reject")
        submitted = {t["id"]: t["job_id"] for t in first.values() if t["recipe"] == "baseline_cnn"}
        assert all(t["state"] == "submitted" and t["job_id"] for t in first.values() if t["recipe"] == "baseline_cnn")
        assert all(t["state"] == "new" and t["job_id"] is None for t in first.values()
                   if t["recipe"] == "resnet50_feature")
        again = run_sweep("--config", path, "--cluster", "slurm", "--sweeps-root", tmp_path, "slurm.partition=debug",
                          env=held)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "2 to submit" in again.stdout
        second = table(tmp_path / "reject")
        assert all(t["job_id"] for t in second.values())
        assert {i: second[i]["job_id"] for i in submitted} == submitted  # the accepted array was left alone
    finally:
        ids = {t["job_id"].split("_")[0] for t in table(tmp_path / "reject").values() if t["job_id"]}
        subprocess.run(["scancel", *ids], check=False)


def test_four_recipes_with_own_resources_run_as_arrays_and_end_in_one_table(tmp_path, phantom_root):
    marker = tmp_path / "setup-ran"
    sweep = {
        "name": "four", "recipes": RECIPES, "seeds": [0],
        "overrides": {"data.root": str(phantom_root), **TINY, "model.pretrained": False, "train.epochs": 1},
        "slurm": {**SMALL_JOBS, "setup": [  # shell lines, run in each job before the task
            f"mkdir -p {marker}",
            f'touch "{marker}/${{SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}}_${{SLURM_ARRAY_TASK_ID:-}}"']},
        "per_recipe": {
            "resnet50_finetune": {"overrides": {"train.phases.0.epochs": 1, "train.phases.1.epochs": 1}},
            "resnet152_ranger": {"overrides": {"data.eval_batch_size": 16},
                                 "slurm": {"mem_gb": 3, "gpus_per_node": 1, "exclude": "node2",
                                           "sbatch": {"comment": "brainmri big"}}},
        },
    }
    path = tmp_path / "four.yaml"
    path.write_text(yaml.safe_dump(sweep))
    proc = run_sweep("--config", path, "--cluster", "slurm", "--wait", "--sweeps-root", tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tasks = table(tmp_path / "four")
    assert sorted(t["recipe"] for t in tasks.values()) == sorted(RECIPES)
    assert {t["state"] for t in tasks.values()} == {"finished"}
    big = next(t for t in tasks.values() if t["recipe"] == "resnet152_ranger")
    small = [t for t in tasks.values() if t["recipe"] != "resnet152_ranger"]
    assert len({t["job_id"].split("_")[0] for t in small}) == 1  # one array per resource shape
    assert big["job_id"].split("_")[0] != small[0]["job_id"].split("_")[0]
    job, other = show_job(big["job_id"]), show_job(small[0]["job_id"])
    assert job["ExcNodeList"] == "node2" and job["Comment"] == "brainmri big" and job["NodeList"] == "node1"
    assert "gres/gpu=1" in job["TRES"] and "mem=3G" in job["TRES"] and job["Requeue"] == "1"
    assert "gres/gpu" not in other["TRES"] and other["ExcNodeList"] == "(null)"
    # the setup lines ran inside every job, before the task
    assert sorted(p.name for p in marker.iterdir()) == sorted(t["job_id"] + ("" if "_" in t["job_id"] else "_")
                                                              for t in tasks.values())
    collect = subprocess.run([sys.executable, "launch/collect.py", str(tmp_path / "four"), "--format", "md"],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert collect.returncode == 0, collect.stderr
    table_rows = [line for line in collect.stdout.splitlines() if line.startswith("| ")]
    for recipe in RECIPES:
        assert sum(recipe in line for line in table_rows) >= 1, collect.stdout


@pytest.mark.slow
def test_warning_signal_reaches_every_process_through_the_launchers(tmp_path, phantom_root):
    # scancel --signal=USR2 --batch is what --signal=B:USR2@T sends at T before the limit: to the batch
    # shell only, which passes it on through accelerate's elastic agent (two processes on one node)
    # and through srun to the agent on each node (two nodes)
    overrides = [f"data.root={phantom_root}", *(f"{k}={v}" for k, v in TINY.items()), "data.input_size=64",
                 "data.batch_size=4", "train.max_steps_per_epoch=null", "train.epochs=30"]
    jobs = {}
    for template in ("train_single_node", "train_multinode"):
        proc = subprocess.run(["sbatch", "--parsable", "--cpus-per-task=1", f"--output={tmp_path}/{template}-%j.out",
                               f"slurm/{template}.sbatch", "configs/baseline_cnn.yaml", *overrides,
                               f"run_dir={tmp_path / template}"], cwd=ROOT, capture_output=True, text=True,
                              check=True)
        jobs[template] = proc.stdout.strip().split(";")[0]
    signalled, deadline = set(), time.time() + 300
    while len(signalled) < len(jobs):
        assert time.time() < deadline, "no checkpoint to stop at"
        for template, job_id in jobs.items():
            if template not in signalled and (tmp_path / template / "checkpoints" / "last.pt").exists():
                subprocess.run(["scancel", "--signal=USR2", "--batch", job_id], check=True)
                signalled.add(template)
        time.sleep(0.2)
    for template, job_id in jobs.items():
        state = wait_for_job(job_id)
        out = (tmp_path / f"{template}-{job_id}.out").read_text()
        assert state == "COMPLETED", out[-3000:]
        assert show_job(job_id)["Restarts"] == "1" and attempts(out) == 2, out[-3000:]
        assert out.count("WARNING SIGUSR2: stopped after step") == 2  # both processes stopped themselves
        run_dir = tmp_path / template
        assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"
        assert "resuming" in (run_dir / "train.log").read_text()
        assert [r["epoch"] for r in rows(run_dir)] == list(range(1, 31))
