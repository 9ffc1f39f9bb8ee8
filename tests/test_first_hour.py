"""A new user's first hour: every tool answers --help, --version and usage errors at once (nothing heavy
imported), one grammar across tools (--data, --config NAME|PATH, error: lines naming the culprit), and a
tool that can do nothing writes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY, run_train

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ["train.py", "launch/sweep.py", "launch/collect.py", "launch/audit.py", "launch/predict.py",
         "launch/evaluate.py", "launch/export.py"]
HEAVY = ("torch", "torchvision", "accelerate", "sklearn", "wandb", "submitit", "optuna", "timm", "pandas")
# runs a tool's main() as its shim does, then reports which heavy modules were imported
PROBE = """
import runpy, sys, json
sys.argv = [sys.argv[1]] + sys.argv[2:]
code = 0
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
sys.stdout.flush()
print(json.dumps({"heavy": [m for m in HEAVY if m in sys.modules], "code": code}), file=sys.stderr)
""".replace("HEAVY", repr(HEAVY))


def probe(tool: str, *args: str, cwd: Path = ROOT) -> tuple[dict, subprocess.CompletedProcess]:
    proc = subprocess.run([sys.executable, "-c", PROBE, str(ROOT / tool), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, check=False)
    return json.loads(proc.stderr.strip().splitlines()[-1]), proc


@pytest.mark.parametrize("tool", TOOLS)
def test_help_version_and_usage_errors_import_nothing_heavy(tool):
    from brainmri.version import code_version

    got, proc = probe(tool, "--help")
    assert got == {"heavy": [], "code": 0} and proc.stdout.startswith("usage:") and "--version" in proc.stdout
    got, proc = probe(tool, "--version")
    assert got == {"heavy": [], "code": 0} and proc.stdout.strip() == code_version()
    got, proc = probe(tool, "--no-such-option")
    lines = proc.stderr.strip().splitlines()[:-1]
    assert got == {"heavy": [], "code": 2} and len(lines) == 1 and lines[0].startswith("error: ")


def test_version_names_the_package_and_the_commit():
    from brainmri.version import code_version

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    assert code_version().startswith("brainmri 0.1.0 (git ") and commit[:7] in code_version()


def test_config_errors_say_where_the_bad_value_came_from(tmp_path):
    got, proc = probe("train.py", "--config", "baseline_cnn", "optim.lrr=1")
    assert got["code"] == 2
    line = proc.stderr.strip().splitlines()[0]
    assert line.startswith("error: command line (with configs/baseline_cnn.yaml): unknown config key optim.lrr")
    bad = tmp_path / "bad.yaml"
    bad.write_text("recipe: mine\noptim: {lrr: 1}\n")
    _, proc = probe("train.py", "--config", str(bad), "optim.lr=0.1")
    assert proc.stderr.startswith(f"error: {bad}: unknown config key optim.lrr")


def test_config_takes_a_recipe_name_and_names_what_is_missing():
    _, proc = probe("train.py", "--config", "no_such_recipe")
    line = proc.stderr.strip().splitlines()[0]
    assert line.startswith("error: --config no_such_recipe: config file not found") and "baseline_cnn" in line
    _, proc = probe("launch/sweep.py", "--config", "no_such_sweep")
    assert "seed_lr_grid" in proc.stderr and proc.stderr.startswith("error: --config no_such_sweep")
    got, proc = probe("launch/sweep.py", "--config", "demo", "--cluster", "local", "--dry-run", "--sweeps-root",
                      "/nonexistent-sweeps")
    assert got["code"] == 0 and "sweep demo:" in proc.stdout


def test_train_takes_data_and_a_recipe_name(phantom_root, tmp_path):
    run = tmp_path / "run"
    run_train("--config", "baseline_cnn", "--data", str(phantom_root), f"run_dir={run}", *TINY, "train.epochs=1")
    assert json.loads((run / "summary.json").read_text())["config"]["data"]["root"] == str(phantom_root)


def test_bad_data_root_leaves_no_run_directory(tmp_path):
    proc = run_train("--config", "baseline_cnn", "--data", str(tmp_path / "nowhere"), f"run_dir={tmp_path / 'run'}",
                     *TINY, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and str(tmp_path / "nowhere") in proc.stderr
    assert not (tmp_path / "run").exists()


def test_collect_names_a_missing_path_and_makes_html(tmp_path):
    got, proc = probe("launch/collect.py", str(tmp_path / "nonexistent"))
    assert got["code"] == 2 and proc.stderr.startswith(f"error: {tmp_path / 'nonexistent'}: no such file")
    (tmp_path / "empty").mkdir()
    got, proc = probe("launch/collect.py", str(tmp_path / "empty"))
    assert got["code"] == 1 and f"error: no runs found in {tmp_path / 'empty'}" in proc.stderr


def test_collect_format_html(trained_run, tmp_path):
    out = tmp_path / "report.html"
    cmd = [sys.executable, "launch/collect.py", str(trained_run), "--format", "html", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text().lstrip().lower().startswith("<!doctype html")


def test_audit_takes_data(tmp_path):
    got, proc = probe("launch/audit.py", "--data", str(tmp_path / "nowhere"))
    assert got["code"] == 2 and proc.stderr.startswith("error: ") and "nowhere" in proc.stderr


def test_predict_on_text_files_writes_nothing(trained_run, tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    for i in range(3):
        (folder / f"note{i}.txt").write_text("not a scan")
    out = tmp_path / "out" / "preds.csv"
    got, proc = probe("launch/predict.py", str(trained_run), "--data", str(folder), "--out", str(out))
    assert got == {"heavy": [], "code": 2}  # refused before any model was loaded
    assert f"error: no usable input files in {folder}" in proc.stderr
    assert not out.parent.exists()


def test_sweep_status_usage_is_an_error_line():
    got, proc = probe("launch/sweep.py", "status")
    assert got["code"] == 2 and proc.stderr.startswith("error: usage: launch/sweep.py status SWEEP_DIR")


def test_the_cli_copies_of_choices_match_their_owners():
    from brainmri.cli import collect, export, sweep
    from brainmri.jobs.submit import CLUSTERS
    from brainmri.results.report import RENDERERS, TABLES
    from brainmri.use.export import FORMATS

    assert set(collect.FORMATS) == set(RENDERERS) | {"html"} and collect.TABLES == TABLES
    assert export.FORMATS == FORMATS and set(sweep.CLUSTERS) == set(CLUSTERS) | {"auto"}


def _path_without_slurm(tmp_path: Path) -> str:
    """A PATH with every tool of this machine except SLURM's (sbatch, srun, squeue ...)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for folder in os.environ["PATH"].split(os.pathsep):
        if not Path(folder).is_dir():
            continue
        for exe in Path(folder).iterdir():
            link = bin_dir / exe.name
            if exe.name.startswith(("sbatch", "srun", "squeue", "sacct", "scancel", "sinfo", "salloc")) \
                    or link.exists() or link.is_symlink():
                continue
            link.symlink_to(exe)
    return str(bin_dir)


def test_sweep_without_slurm_runs_locally_and_slurm_there_is_one_line(phantom_root, tmp_path):
    sweep = tmp_path / "tiny.yaml"
    sweep.write_text("name: tiny\nrecipe: baseline_cnn\nseeds: [0, 1]\n"
                     "overrides: {train.epochs: 1, data.input_size: 32, data.batch_size: 8, data.num_workers: 0, "
                     "wandb.enabled: false}\nslurm: {array_parallelism: 2, time_min: 10}\n")
    env = {**os.environ, "PATH": _path_without_slurm(tmp_path), "OMP_NUM_THREADS": "1"}
    root = tmp_path / "sweeps"
    cmd = [sys.executable, str(ROOT / "launch" / "sweep.py"), "--config", str(sweep), "--data", str(phantom_root),
           "--sweeps-root", str(root)]
    proc = subprocess.run([*cmd, "--cluster", "slurm"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("error: --cluster slurm: no SLURM here (sbatch not found on PATH)")
    assert not root.exists()
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.startswith("cluster: local (sbatch not found on PATH; tasks run on this machine")
    tasks = json.loads((root / "tiny" / "tasks.json").read_text())
    states = [t["state"] for t in (tasks["tasks"] if isinstance(tasks, dict) else tasks)]
    assert states == ["finished", "finished"]


def test_redirected_run_logs_progress_inside_the_epoch_and_stays_short(phantom_root, tmp_path):
    """Away from a terminal (a SLURM log, a file): a line every train.log_interval_s inside the epoch with images/s
    and ETAs; W&B (offline) says one line; the status file holds the epoch, batch and ETA `sweep.py status` shows."""
    from brainmri.jobs.submit import print_status, where_it_is
    from brainmri.sweep.expand import Task

    run = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", "baseline_cnn", "--data", str(phantom_root),
           f"run_dir={run}", "data.input_size=64", "data.batch_size=2", "data.num_workers=0", "train.epochs=1",
           "train.log_interval_s=0.05"]  # a line every few batches however fast the machine
    log = tmp_path / "log.txt"
    task = Task("t0", "baseline_cnn", "configs/baseline_cnn.yaml", {}, [], str(run), job_id="1", cluster="local",
                state="running")
    seen = None
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "WANDB_MODE": "offline"})
        while proc.poll() is None:
            place, eta = where_it_is(task)
            if place and eta is not None:
                seen = place, eta
            import time

            time.sleep(0.2)
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert seen is not None and seen[0].startswith("epoch 1/1 batch ") and seen[1] >= 0
    lines = log.read_text().splitlines()
    progress = [line for line in lines if " INFO epoch 1/1 batch " in line]
    assert progress and all("images/s" in line and "epoch ETA" in line and "run ETA" in line for line in progress)
    assert "\r" not in log.read_text()  # no progress-bar frames
    wandb_lines = [line for line in lines if "W&B" in line or "wandb" in line.lower()]
    assert len(wandb_lines) == 1 and "(offline): wandb sync " in wandb_lines[0]
    assert len(lines) - len(progress) <= 12, "\n".join(lines)
    print_status([task])  # a finished run: no place, no crash


def test_a_sweeps_status_shows_each_running_task_and_an_eta(tmp_path, capsys):
    from brainmri.jobs.submit import print_status
    from brainmri.rundir import RunDir
    from brainmri.sweep.expand import Task

    tasks = []
    for i, (status, eta) in enumerate((("running", 120.0), ("running", 300.0))):
        run = RunDir(tmp_path / f"r{i}")
        run.create()
        run.set_status(status, 1, in_epoch=2, batch=10 * (i + 1), batches=40, epochs=5, run_eta_s=eta)
        tasks.append(Task(f"t{i}", "baseline_cnn", "configs/baseline_cnn.yaml", {}, [], str(run.path), job_id=str(i),
                          cluster="local", state="running"))
    tasks.append(Task("t2", "baseline_cnn", "configs/baseline_cnn.yaml", {}, [], str(tmp_path / "r2"), state="new"))
    print_status(tasks)
    out = capsys.readouterr().out
    assert "[epoch 2/5 batch 10/40]" in out and "[epoch 2/5 batch 20/40]" in out
    assert "2 running, 1 new of 3; sweep ETA >= 5m00s (+ 1 waiting task(s))" in out


@pytest.mark.slurm
def test_auto_picks_slurm_and_a_refused_first_array_leaves_no_sweep_directory(tmp_path, phantom_root):
    """Where sbatch answers, --cluster auto is SLURM; SLURM refusing the only array (a partition that does not
    exist) before any task was accepted is one line, exit 2, and no half-made sweep directory."""
    from slurm_cluster import cluster_problem

    problem = cluster_problem()
    if problem:
        pytest.skip(problem)
    sweep = tmp_path / "refused.yaml"
    sweep.write_text("name: refused\nrecipe: baseline_cnn\nseeds: [0]\noverrides: {train.epochs: 1, "
                     "data.input_size: 32, data.num_workers: 0}\n"
                     "slurm: {partition: no-such-partition, cpus_per_task: 1, mem_gb: 2, time_min: 30}\n")
    root = tmp_path / "sweeps"
    cmd = [sys.executable, str(ROOT / "launch" / "sweep.py"), "--config", str(sweep), "--data", str(phantom_root),
           "--sweeps-root", str(root)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "SBATCH_HOLD": "1"})
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("cluster: slurm (sbatch answers")
    assert proc.returncode == 2 and len(lines) == 2, proc.stderr
    assert lines[1].startswith("error: SLURM refused array 1/1 (baseline_cnn, 1 task(s)): ") and "partition" in lines[1]
    assert not (root / "refused").exists()
