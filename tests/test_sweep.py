"""Sweep expansion, validation, --dry-run and the in-process cluster (no SLURM needed)."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from slurm_cluster import ROOT, SMALL_JOBS, TINY, run_sweep, write_sweep

from brainmri.cli import sweep as sweep_cli
from brainmri.jobs.submit import executor_parameters
from brainmri.sweep.expand import SweepError, arrays, load_sweep, task_id

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


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


MIXED = {
    "name": "mixed",
    "recipes": ["baseline_cnn", "resnet50_feature", "resnet152_ranger"],
    "seeds": [0, 1],
    "lr_scale": [0.5, 2],
    "overrides": {"train.epochs": 2, "data.num_workers": 1},
    "grid": {"data.batch_size": [8, 16]},
    "slurm": {"gpus_per_node": 1, "time_min": 60, "mem_gb": 8, "setup": ["module load cuda"],
              "sbatch": {"mail-type": "END"}},
    "per_recipe": {
        # its own absolute LR grid replaces the sweep-wide lr_scale; batch size fixed
        "resnet50_feature": {"grid": {"optim.lr": [1.0e-2]}, "overrides": {"data.batch_size": 4}},
        # lr_scale relative to its own 1e-5; own resources merged over the sweep-wide ones
        "resnet152_ranger": {"lr_scale": [1, 10], "overrides": {"model.pretrained": False},
                             "slurm": {"gpus_per_node": 2, "time_min": 240, "constraint": "a100|h100",
                                       "exclude": "node[3-4]", "setup": ["source /opt/site/env.sh"],
                                       "sbatch": {"mail_type": "FAIL", "comment": "brain mri"}}},
    },
}


def test_mixed_sweep_expands_to_exactly_the_expected_tasks(tmp_path):
    sweep = load_sweep(write_yaml(tmp_path / "s.yaml", MIXED), sweeps_root=tmp_path)
    got = {(t.recipe, t.params["seed"], t.params.get("lr_scale"), t.params["optim.lr"],
            t.resolved_config()["data"]["batch_size"]) for t in sweep.tasks}
    expected = {("baseline_cnn", s, k, 1e-3 * k, b) for s in (0, 1) for k in (0.5, 2) for b in (8, 16)}
    expected |= {("resnet50_feature", s, None, 1e-2, 4) for s in (0, 1)}
    expected |= {("resnet152_ranger", s, k, 1e-5 * k, b) for s in (0, 1) for k in (1, 10) for b in (8, 16)}
    assert got == expected and len(sweep.tasks) == len(expected) == 18
    for task in sweep.tasks:
        cfg = task.resolved_config()
        assert cfg["train"]["epochs"] == 2 and cfg["optim"]["lr"] == task.params["optim.lr"]
        assert cfg["model"]["pretrained"] is (task.recipe == "resnet50_feature")  # the recipe's own default
        assert "lr_scale" not in " ".join(o.split("=")[0] for o in task.overrides)  # not a config key
    feature = next(t for t in sweep.tasks if t.recipe == "resnet50_feature")
    assert feature.params == {"seed": 0, "optim.lr": 1e-2}

    base, big = sweep.resources("baseline_cnn"), sweep.resources("resnet152_ranger")
    assert (base.gpus_per_node, base.time_min, base.cpus_per_task) == (1, 60, 2)  # data.num_workers + 1
    assert (big.gpus_per_node, big.time_min, big.mem_gb) == (2, 240, 8)
    assert big.setup == ["module load cuda", "source /opt/site/env.sh"]
    assert big.sbatch == {"mail-type": "FAIL", "comment": "brain mri"}
    assert sweep.resources("resnet50_feature") == base
    assert [len(tasks) for _, tasks in arrays(sweep, sweep.tasks)] == [10, 8]  # one array per shape

    params = executor_parameters(big, "mixed", "slurm")
    assert (params["slurm_constraint"], params["slurm_exclude"]) == ("a100|h100", "node[3-4]")
    assert params["slurm_additional_parameters"] == {"requeue": True, "mail-type": "FAIL", "comment": "brain mri"}
    # no PYTHONPATH: brainmri is installed
    assert params["slurm_setup"] == ["module load cuda", "source /opt/site/env.sh"]

    # the command line beats every level: one LR for every recipe, no LR axis left
    fixed = load_sweep(tmp_path / "s.yaml", ["optim.lr=1e-4", "slurm.time_min=5"], tmp_path)
    assert {t.params["optim.lr"] if "optim.lr" in t.params else t.resolved_config()["optim"]["lr"]
            for t in fixed.tasks} == {1e-4}
    assert len(fixed.tasks) == 4 + 2 + 4 and {fixed.resources(r).time_min for r in fixed.recipes} == {5}


def test_dry_run_bill_matches_a_hand_computation(tmp_path):
    path = write_yaml(tmp_path / "s.yaml", MIXED)
    proc = run_sweep("--config", path, "--cluster", "slurm", "--dry-run", "--sweeps-root", tmp_path / "sweeps")
    assert proc.returncode == 0, proc.stderr
    # baseline 8 tasks + feature 2 tasks: 1 GPU, 2 CPUs, 1 h; ranger 8 tasks: 2 GPUs (2 tasks x 2 CPUs), 4 h
    gpu_h = 8 * 1 * 1 + 2 * 1 * 1 + 8 * 2 * 4
    cpu_h = 8 * 2 * 1 + 2 * 2 * 1 + 8 * (2 * 2) * 4
    assert f"{'total':<22} {18:>5} {2:>5} {gpu_h:>9.1f} {cpu_h:>9.1f}" in proc.stdout
    assert f"{'resnet152_ranger':<22} {8:>5} {2:>5} {64:>9.1f} {128:>9.1f}" in proc.stdout
    assert "setup: source /opt/site/env.sh" in proc.stdout and "'mail-type': 'FAIL'" in proc.stdout
    assert not (tmp_path / "sweeps").exists()


@pytest.mark.parametrize("changes, named", [
    ({"recipes": []}, "recipes"),
    ({"grid": {}}, "grid is empty"),
    ({"seeds": []}, "seeds"),
    ({"grid": {"data.batch_size": []}}, "grid.data.batch_size"),
    ({"lr_scale": []}, "lr_scale"),
    ({"lr_scale": [0, 1]}, "lr_scale"),
    ({"per_recipe": {"resnet50_finetune": {"grid": {"optim.lr": [1e-3]}}}}, "per_recipe.resnet50_finetune"),
    ({"per_recipe": {"baseline_cnn": {"epochs": 3}}}, "per_recipe.baseline_cnn.epochs"),
    ({"per_recipe": {"baseline_cnn": {}}}, "per_recipe.baseline_cnn"),
    ({"per_recipe": {"baseline_cnn": {"lr_scale": [1], "grid": {"optim.lr": [1e-3]}}}}, "lr_scale"),
    ({"grid": {"optim.lr": [1e-3]}}, "lr_scale and grid.optim.lr"),
    ({"per_recipe": {"baseline_cnn": {"grid": {"seed": [5]}}}}, "per_recipe.baseline_cnn.grid.seed"),
    ({"slurm": {"sbatch": {"mail-tipe": "END"}}}, "slurm.sbatch.mail-tipe"),
    ({"slurm": {"sbatch": {"partition": "gpu"}}}, "slurm.partition"),
    ({"per_recipe": {"baseline_cnn": {"slurm": {"sbatch": {"no-such-option": 1}}}}},
     "per_recipe.baseline_cnn.slurm.sbatch.no-such-option"),
    ({"slurm": {"setup": "", "gpus_per_node": 1}}, "slurm.setup"),
    ({"slurm": {"cpus_per_task": 1}}, "slurm.cpus_per_task=1 is less than data.num_workers + 1 = 2"),
])
def test_meaningless_or_bad_sweep_is_one_line_exit_2_and_submits_nothing(tmp_path, changes, named):
    data = {**json.loads(json.dumps(MIXED)), **changes}
    path = write_yaml(tmp_path / "s.yaml", data)
    with pytest.raises(SweepError, match=re.escape(named)):
        load_sweep(path, sweeps_root=tmp_path / "sweeps")
    proc = run_sweep("--config", path, "--cluster", "slurm", "--sweeps-root", tmp_path / "sweeps")
    assert proc.returncode == 2 and named in proc.stderr and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "sweeps").exists()


def test_array_template_refuses_a_seed_argument():
    # the script itself, as the batch shell runs it: no sbatch needed to check its arguments
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_JOB_ID": "7", "SLURM_JOB_ID": "8"}
    proc = subprocess.run(["bash", "slurm/train_array.sbatch", "configs/baseline_cnn.yaml", "train.epochs=1",
                           "seed=3"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "error: seed=3: the seed of an array task is its index (sbatch --array=0-4); drop seed="]


def test_local_task_killed_from_outside_is_failed_with_its_signal(tmp_path, phantom_root):
    overrides = {"data.root": str(phantom_root), **TINY, "train.epochs": 500, "train.max_steps_per_epoch": 1}
    path = write_sweep(tmp_path / "s.yaml", "killed", {"seed": [0]}, overrides, SMALL_JOBS)
    root = tmp_path / "sweeps"
    sweep = subprocess.Popen([sys.executable, str(ROOT / "launch" / "sweep.py"), "--config", str(path), "--cluster",
                              "local", "--sweeps-root", str(root)], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        ckpts = list((root / "killed" / "runs").glob("*/checkpoints/last.pt")) if root.exists() else []
        deadline = time.time() + 300
        while not ckpts:
            assert time.time() < deadline and sweep.poll() is None, "the task never wrote a checkpoint"
            time.sleep(0.2)
            ckpts = list((root / "killed" / "runs").glob("*/checkpoints/last.pt")) if root.exists() else []
        run_dir = ckpts[0].parents[1]
        status = json.loads((run_dir / "status.json").read_text())
        assert status["status"] == "running"
        os.kill(status["pid"], signal.SIGKILL)
        out, err = sweep.communicate(timeout=120)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 1, out + err
    (row,) = json.loads((root / "killed" / "tasks.json").read_text())
    assert row["state"] == "failed" and f"task process {status['pid']} killed by SIGKILL" in row["error"]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "running"  # the run could not say
    shown = run_sweep("status", root / "killed")
    assert shown.returncode == 1 and "killed by SIGKILL" in shown.stdout and "1 failed" in shown.stdout
    # without the record of how it ended, the dead pid alone still marks it failed
    for record in (root / "killed" / "submitit").glob("*/*_exit.json"):
        record.unlink()
    shown = run_sweep("status", root / "killed")
    assert shown.returncode == 1 and "1 failed" in shown.stdout
    assert f"training process {status['pid']} on" in shown.stdout and "is gone" in shown.stdout


def test_templates_source_the_site_setup_first(tmp_path):
    marker = tmp_path / "setup-ran"
    setup = tmp_path / "site.sh"
    # a site file: module loads and the like; here it also picks the "python" that runs training
    setup.write_text(f'echo "$SLURM_JOB_ID" > {marker}\nexport BRAINMRI_PYTHON=echo\n')
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_JOB_ID": "7", "SLURM_JOB_ID": "9",
           "SLURM_CPUS_PER_TASK": "3", "BRAINMRI_SETUP": str(setup)}
    proc = subprocess.run(["bash", "slurm/train_array.sbatch", "configs/baseline_cnn.yaml", "optim.lr=3e-4"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert marker.read_text() == "9\n"
    # what training was started with: the seed from the index, workers from the CPUs (3 - 1)
    assert proc.stdout.splitlines()[-1] == ("train.py --config configs/baseline_cnn.yaml seed=2 "
                                            "data.num_workers=2 optim.lr=3e-4")
    missing = subprocess.run(["bash", "slurm/train_array.sbatch", "configs/baseline_cnn.yaml"], cwd=ROOT,
                             env={**env, "BRAINMRI_SETUP": str(tmp_path / "nope.sh")}, capture_output=True,
                             text=True, timeout=60)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"error: BRAINMRI_SETUP={tmp_path / 'nope.sh'} is not a readable file"]


def test_shipped_recipe_comparison_expands_into_one_array_per_recipe(tmp_path):
    sweep = load_sweep(ROOT / "configs" / "sweeps" / "compare_recipes.yaml", sweeps_root=tmp_path)
    per_recipe = {r: [t for t in sweep.tasks if t.recipe == r] for r in sweep.recipes}
    assert {r: len(ts) for r, ts in per_recipe.items()} == {"baseline_cnn": 9, "resnet_scratch": 9,
                                                            "resnet50_feature": 9, "resnet50_finetune": 9,
                                                            "resnet152_ranger": 12}
    assert sorted({t.params["optim.lr"] for t in per_recipe["resnet152_ranger"]}) == [3e-6, 1e-5, 3e-5, 1e-4]
    assert sorted({t.params["optim.lr"] for t in per_recipe["baseline_cnn"]}) == [3e-4, 1e-3, 3e-3]
    assert sorted({t.params["optim.lr"] for t in per_recipe["resnet_scratch"]}) == pytest.approx([6e-4, 2e-3, 6e-3])
    assert len(arrays(sweep, sweep.tasks)) == 5


CV = {"name": "cv", "recipes": ["baseline_cnn", "resnet50_feature"], "folds": 3, "seeds": [0, 1],
      "grid": {"optim.lr": [1.0e-3, 3.0e-4]}, "overrides": {"train.epochs": 2},
      "slurm": {"gpus_per_node": 1, "time_min": 30, "cpus_per_task": 3}}


def test_folds_are_an_axis_like_seeds_with_stable_distinct_tasks(tmp_path):
    sweep = load_sweep(write_yaml(tmp_path / "s.yaml", CV), sweeps_root=tmp_path)
    assert len(sweep.tasks) == 2 * 2 * 3 * 2 and sweep.folds == 3  # recipes x grid x folds x seeds
    assert len({t.id for t in sweep.tasks}) == len({t.run_dir for t in sweep.tasks}) == 24
    got = {(t.recipe, t.params["seed"], t.params["data.fold"], t.params["optim.lr"]) for t in sweep.tasks}
    assert got == {(r, s, f, lr) for r in CV["recipes"] for s in (0, 1) for f in range(3) for lr in (1e-3, 3e-4)}
    for task in sweep.tasks:
        data = task.resolved_config()["data"]
        assert (data["folds"], data["fold"]) == (3, task.params["data.fold"])
        assert f"data.fold={task.params['data.fold']}" in task.resolved_config()["wandb"]["tags"]
    assert [t.id for t in load_sweep(tmp_path / "s.yaml", sweeps_root=tmp_path).tasks] == [t.id for t in sweep.tasks]
    # the same tasks spelled as a grid over data.fold: the same ids, so a finished fold is never retrained
    spelled = {**CV, "grid": {**CV["grid"], "data.fold": [0, 1, 2]}, "overrides": {**CV["overrides"], "data.folds": 3}}
    spelled.pop("folds")
    assert {t.id for t in load_sweep(write_yaml(tmp_path / "g.yaml", spelled), sweeps_root=tmp_path).tasks} \
        == {t.id for t in sweep.tasks}
    # the command line: data.folds=K changes K, data.fold=i trains that fold only
    assert len(load_sweep(tmp_path / "s.yaml", ["data.folds=2"], tmp_path).tasks) == 2 * 2 * 2 * 2
    one = load_sweep(tmp_path / "s.yaml", ["data.fold=1"], tmp_path).tasks
    assert len(one) == 8 and {(t.resolved_config()["data"]["folds"], t.resolved_config()["data"]["fold"])
                              for t in one} == {(3, 1)}
    assert {t.id for t in one} <= {t.id for t in sweep.tasks}


@pytest.mark.parametrize("changes, named", [
    ({"folds": 1}, "folds must be an integer >= 2"),
    ({"folds": "five"}, "folds must be an integer >= 2"),
    ({"folds": True}, "folds must be an integer >= 2"),
    ({"overrides": {"data.fold": 0}}, "overrides.data.fold: folds: is the fold axis"),
    ({"grid": {"data.folds": [3, 5]}}, "grid.data.folds: folds: is the fold axis"),
    ({"per_recipe": {"baseline_cnn": {"grid": {"data.fold": [0]}}}}, "per_recipe.baseline_cnn.grid.data.fold"),
    ({"per_recipe": {"baseline_cnn": {"folds": 5}}}, "per_recipe.baseline_cnn.folds"),
])
def test_bad_fold_axis_is_one_line_exit_2(tmp_path, capsys, changes, named):
    path = write_yaml(tmp_path / "s.yaml", {**CV, **changes})
    with pytest.raises(SweepError, match=re.escape(named)):
        load_sweep(path, sweeps_root=tmp_path / "sweeps")
    assert sweep_cli.main(["--config", str(path), "--cluster", "slurm", "--dry-run", "--sweeps-root",
                           str(tmp_path / "sweeps")]) == 2
    out = capsys.readouterr()
    assert named in out.err and len(out.err.strip().splitlines()) == 1 and out.out == ""


def test_dry_run_bill_counts_folds_and_only_failed_resubmits_the_failed_fold(tmp_path, capsys):
    path = write_yaml(tmp_path / "s.yaml", {**CV, "recipes": ["baseline_cnn"], "seeds": [0]})
    root = tmp_path / "sweeps"
    proc = run_sweep("--config", path, "--cluster", "slurm", "--dry-run", "--sweeps-root", root)  # as a user runs it
    assert proc.returncode == 0, proc.stderr
    assert "6 task(s) in 1 array(s)" in proc.stdout  # 1 recipe x 2 LRs x 3 folds x 1 seed
    assert f"{'total':<22} {6:>5} {1:>5} {6 * 0.5:>9.1f} {6 * 3 * 0.5:>9.1f}" in proc.stdout
    # fold 0 of one LR finished, fold 1 failed: only that fold goes again; the rest are new
    tasks = {(t.params["optim.lr"], t.params["data.fold"]): t for t in load_sweep(path, sweeps_root=root).tasks}
    done, failed = Path(tasks[1e-3, 0].run_dir), Path(tasks[1e-3, 1].run_dir)
    for d in (done, failed):
        d.mkdir(parents=True)
    (done / "summary.json").write_text(json.dumps({"status": "finished"}))
    (failed / "status.json").write_text(json.dumps({"status": "failed", "error": "RuntimeError: fold 1"}))
    args = ["--config", str(path), "--cluster", "slurm", "--dry-run", "--sweeps-root", str(root)]
    assert sweep_cli.main([*args, "--only-failed"]) == 0
    again = capsys.readouterr().out
    assert "1 to submit (1 finished" in again
    (cmd,) = [line for line in again.splitlines() if "python train.py" in line]
    assert cmd.startswith(f"  {tasks[1e-3, 1].id}:") and "data.fold=1" in cmd and "data.folds=3" in cmd
    assert sweep_cli.main(args) == 0
    rest = capsys.readouterr().out
    assert "5 to submit (1 finished" in rest and tasks[1e-3, 0].id + ":" not in rest


def test_shipped_cv_comparison_trains_every_configuration_on_five_folds(tmp_path):
    sweep = load_sweep(ROOT / "configs" / "sweeps" / "cv_compare.yaml", sweeps_root=tmp_path)
    per_recipe = {r: [t for t in sweep.tasks if t.recipe == r] for r in sweep.recipes}
    assert {r: len(ts) for r, ts in per_recipe.items()} == {"baseline_cnn": 15, "resnet50_feature": 15,
                                                            "resnet50_finetune": 15, "resnet152_ranger": 20}
    for tasks in per_recipe.values():
        by_lr: dict = {}
        for t in tasks:
            by_lr.setdefault(t.params["optim.lr"], []).append(t.params["data.fold"])
        assert all(sorted(folds) == [0, 1, 2, 3, 4] for folds in by_lr.values())
    assert len(arrays(sweep, sweep.tasks)) == 4


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_rerun_with_other_fixed_settings_is_refused_and_leaves_every_file_as_it_was(tmp_path, phantom_root):
    path = write_sweep(tmp_path / "s.yaml", "same", {"seed": [0]}, {"data.root": str(phantom_root), **TINY},
                       SMALL_JOBS)
    root = tmp_path / "sweeps"
    proc = run_sweep("--config", path, "--cluster", "local", "--sweeps-root", root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    before = _files(root / "same")
    assert "tasks.json" in before and "sweep.yaml" in before
    for extra in (["train.epochs=3"], ["train.epochs=3", "--dry-run"], ["data.input_size=48", "optim.lr=0.01"]):
        again = run_sweep("--config", path, "--cluster", "local", "--sweeps-root", root, *extra)
        assert again.returncode == 2, again.stdout + again.stderr
        err = again.stderr.strip()
        assert len(err.splitlines()) == 1 and "holds another sweep" in err and "nothing was changed" in err, err
        assert _files(root / "same") == before, extra
    assert "baseline_cnn train.epochs 2 -> 3" in run_sweep("--config", path, "--cluster", "local", "--sweeps-root",
                                                           root, "train.epochs=3").stderr
    # more seeds only add tasks: allowed, the finished one is kept
    more = write_sweep(tmp_path / "s.yaml", "same", {"seed": [0, 1]}, {"data.root": str(phantom_root), **TINY},
                       SMALL_JOBS)
    plan = run_sweep("--config", more, "--cluster", "local", "--sweeps-root", root, "--dry-run")
    assert plan.returncode == 0 and "1 to submit (1 finished" in plan.stdout, plan.stdout + plan.stderr
