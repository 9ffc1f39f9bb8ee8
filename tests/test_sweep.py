"""Sweep expansion, validation, --dry-run and the in-process cluster (no SLURM needed)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import yaml

from brainmri.sweep import SweepError, load_sweep, task_id
from slurm_cluster import SMALL_JOBS, TINY, run_sweep, write_sweep

GRID = {"seed": [0, 1], "optim.lr": [1.0e-3, 3.0e-4]}


def test_grid_expands_to_tasks_with_stable_ids_and_run_dirs(tmp_path):
    path = write_sweep(tmp_path / "s.yaml", "grid", GRID, {"train.epochs": 2})
    sweep = load_sweep(path, sweeps_root=tmp_path / "sweeps")
    assert len(sweep.tasks) == 4 and len({t.id for t in sweep.tasks}) == 4
    assert [t.params for t in sweep.tasks][:2] == [{"seed": 0, "optim.lr": 1e-3}, {"seed": 0, "optim.lr": 3e-4}]
    again = load_sweep(path, sweeps_root=tmp_path / "sweeps")
    assert [t.id for t in again.tasks] == [t.id for t in sweep.tasks]
    task = sweep.tasks[3]
    assert task.run_dir == str(tmp_path / "sweeps" / "grid" / "runs" / task.id)
    cfg = task.resolved_config()
    assert (cfg["seed"], cfg["optim"]["lr"], cfg["train"]["epochs"]) == (1, 3e-4, 2)
    assert cfg["run_dir"] == task.run_dir
    assert (cfg["wandb"]["group"], cfg["wandb"]["job_type"]) == ("grid", "baseline_cnn")
    assert {"grid", "baseline_cnn", "seed=1", "optim.lr=0.0003"} <= set(cfg["wandb"]["tags"])


def test_task_id_ignores_spelling_and_order_of_overrides(tmp_path):
    # YAML 1.1 reads 1e-3 as a string; it must mean the same task as 1.0e-3
    a = write_sweep(tmp_path / "a.yaml", "a", {"optim.lr": ["1e-3"], "seed": [0]})
    b = write_sweep(tmp_path / "b.yaml", "b", {"seed": [0], "optim.lr": [0.001]})
    assert load_sweep(a, sweeps_root=tmp_path).tasks[0].id == load_sweep(b, sweeps_root=tmp_path).tasks[0].id
    assert task_id("baseline_cnn", {"seed": 0}) != task_id("resnet50_feature", {"seed": 0})


def test_several_recipes_and_command_line_overrides(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "two", "recipes": ["baseline_cnn", "resnet50_feature"],
                                    "overrides": {"train": {"max_steps_per_epoch": 2}},  # nested = dotted
                                    "grid": {"seed": [0, 1]}, "slurm": {"partition": "debug"}}))
    sweep = load_sweep(path, ["slurm.partition=gpu", "slurm.time_min=5", "train.epochs=3"], tmp_path)
    assert [t.recipe for t in sweep.tasks] == ["baseline_cnn"] * 2 + ["resnet50_feature"] * 2
    assert (sweep.slurm.partition, sweep.slurm.time_min) == ("gpu", 5)
    for task in sweep.tasks:
        train = task.resolved_config()["train"]
        assert (train["epochs"], train["max_steps_per_epoch"], train["monitor"]) == (3, 2, "val/acc")


@pytest.mark.parametrize("grid, cli, named", [
    ({"optim.lrr": [1e-3]}, [], "optim.lrr"),
    ({"seed": [0]}, ["trian.epochs=2"], "trian"),
    ({"seed": [0]}, ["slurm.partitoin=gpu"], "slurm.partitoin"),
    ({"seed": [0]}, ["slurm.nodes=two"], "slurm.nodes"),
    ({"optim.lr": [-1.0]}, [], "optim.lr"),
])
def test_bad_sweep_key_is_an_error_naming_it(tmp_path, grid, cli, named):
    path = write_sweep(tmp_path / "s.yaml", "bad", grid)
    with pytest.raises(SweepError, match=named.replace(".", r"\.")):
        load_sweep(path, cli, tmp_path)
    proc = run_sweep("--config", path, "--sweeps-root", tmp_path / "sweeps", "--dry-run", *cli)
    assert proc.returncode == 2 and named in proc.stderr
    assert not (tmp_path / "sweeps").exists()


def test_dry_run_prints_resources_and_commands_and_submits_nothing(tmp_path):
    marker = tmp_path / "sbatch-called"
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for tool in ("sbatch", "srun", "sacct", "squeue"):
        (fake_bin / tool).write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
        (fake_bin / tool).chmod(stat.S_IRWXU)
    path = write_sweep(tmp_path / "s.yaml", "dry", GRID, slurm={"partition": "debug", "gpus_per_node": 2})
    proc = run_sweep("--config", path, "--cluster", "slurm", "--dry-run", "--sweeps-root", tmp_path / "sweeps",
                     "slurm.mem_gb=4", env={"PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr
    assert "4 to submit" in proc.stdout
    assert all(s in proc.stdout for s in ("slurm_partition=debug", "gpus_per_node=2", "tasks_per_node=2", "mem_gb=4"))
    assert proc.stdout.count("python train.py --config") == 4 and "optim.lr=0.0003" in proc.stdout
    assert not marker.exists() and not (tmp_path / "sweeps").exists()


def test_debug_cluster_trains_in_process_and_skips_finished_tasks(tmp_path, phantom_root):
    path = write_sweep(tmp_path / "s.yaml", "inproc", {"seed": [0, 1]}, {"data.root": str(phantom_root), **TINY},
                       SMALL_JOBS)
    root = tmp_path / "sweeps"
    proc = run_sweep("--config", path, "--cluster", "debug", "--sweeps-root", root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = json.loads((root / "inproc" / "tasks.json").read_text())
    assert [row["state"] for row in table] == ["finished", "finished"]
    for row in table:
        summary = json.loads((Path(row["run_dir"]) / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["config"]["wandb"]["group"] == "inproc"
    assert (root / "inproc" / "sweep.yaml").is_file() and (root / "inproc" / "tasks.csv").is_file()
    again = run_sweep("--config", path, "--cluster", "debug", "--sweeps-root", root)
    assert again.returncode == 0 and "0 to submit (2 finished" in again.stdout
