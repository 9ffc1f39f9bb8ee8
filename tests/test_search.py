"""Search sweeps without SLURM: the space and its errors, --dry-run's worst case, the driver-only journal,
a pruned run, and a whole search with --cluster local (tests/test_search_slurm.py runs one on the cluster)."""

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
import yaml

from conftest import TINY, run_train
from slurm_cluster import ROOT, SMALL_JOBS

from brainmri.cli import sweep as sweep_cli
from brainmri.jobs.search import open_storage
from brainmri.jobs.submit import task_state
from brainmri.results.collect import collect_runs, compare
from brainmri.rundir import RunDir
from brainmri.sweep.expand import Task, load_sweep, task_id
from brainmri.sweep.search import SearchError, lock_driver, parse_param, read_trials, study_file

SPACE = {"optim.lr": "loguniform(1e-4, 1e-1)", "model.dropout": "uniform(0, 0.6)"}


def write_search(path: Path, name: str, search: dict | None = None, overrides: dict | None = None,
                 slurm: dict | None = None, **top) -> Path:
    spec = {"sampler": "tpe", "trials": 4, "parallel": 2, "pruner": "asha", "space": SPACE, **(search or {})}
    path.write_text(yaml.safe_dump({"name": name, "recipe": "baseline_cnn",
                                    "overrides": overrides or {"data.num_workers": 0},
                                    "slurm": slurm or SMALL_JOBS, "search": spec, **top}, sort_keys=False))
    return path


def test_space_entries_parse_into_distributions():
    assert parse_param("w", "optim.lr", "loguniform(1e-5, 1e-2)").__dict__ == {
        "key": "optim.lr", "kind": "loguniform", "low": 1e-5, "high": 1e-2, "choices": ()}
    assert (parse_param("w", "model.dropout", "uniform(0, 0.5)").low,
            parse_param("w", "k", "uniform(0, .5)").high) == (0.0, 0.5)
    p = parse_param("w", "model.hidden", "int(64, 512)")
    assert (p.kind, p.low, p.high) == ("int", 64, 512) and isinstance(p.low, int)
    assert parse_param("w", "optim.name", "choice(adam, adamw, sgd)").choices == ("adam", "adamw", "sgd")
    assert parse_param("w", "data.batch_size", [16, 32]).choices == (16, 32)  # a YAML list is a choice


@pytest.mark.parametrize("spec, named", [
    ("loguniform(0, 1e-2)", "0 < low < high"), ("uniform(0.5, 0.1)", "low < high"), ("int(1.5, 4)", "integer bounds"),
    ("normal(0, 1)", "unknown distribution 'normal'"), ("choice(adam)", "at least two values"),
    ("uniform(a, b)", "two numbers"), ("1e-3", "expected loguniform"), ("choice(a, a)", "twice"),
])
def test_bad_space_entry_is_named(spec, named):
    with pytest.raises(SearchError, match=named) as e:
        parse_param("s.yaml: search.space.optim.lr", "optim.lr", spec)
    assert str(e.value).startswith("s.yaml: search.space.optim.lr: ") and "\n" not in str(e.value)


@pytest.mark.parametrize("change, named", [
    ({"search": {"space": {"optim.lr": "loguniform(0, 1)"}}}, "search.space.optim.lr: loguniform needs 0 < low"),
    ({"search": {"sampler": "grid"}}, "search.sampler: unknown sampler 'grid' (valid: random, tpe)"),
    ({"search": {"pruner": "hyperband"}}, "search.pruner: unknown pruner 'hyperband' (valid: asha, median, none)"),
    ({"grid": {"optim.lr": [1e-3, 1e-2]}}, "grid and search: both given"),
    ({"lr_scale": [0.3, 1]}, "lr_scale and search: both given"),
    ({"seeds": [0, 1]}, "seeds and search: both given"),
    ({"search": {"space": {"optim.lrr": "uniform(0, 1)"}}}, "search.space.optim.lrr"),  # not a config key
    ({"search": {"space": {"optim.name": "choice(adam, lion)"}}},
     "search.space.optim.name: choice(adam, lion) at 'lion'"),
    ({"search": {"space": {"seed": "int(0, 9)"}}}, "search.space.seed: not searchable"),
    ({"search": {"trials": 0}}, "search.trials must be an integer >= 1"),
    ({"search": {"metric": "test/acc"}}, "search.metric: unknown metric 'test/acc'"),
    # a misspelled metric would train every trial to its end and fail them all: refused, valid names listed
    ({"search": {"metric": "val/accuracy"}},
     "search.metric: unknown metric 'val/accuracy': every run logs val/acc, val/loss, val/macro_f1, val/auc, val/ece"),
    ({"search": {"space": {"optim.lrr": "uniform(0, 1)"}}}, "valid keys under optim: betas,"),
    ({"search": {"min_epochs": 11}}, "search.min_epochs=11 is more than the 10 epoch(s) a trial of baseline_cnn"),
    ({"search": {"min_epochs": 3}, "overrides": {"train.epochs": 3}}, "search.pruner asha can never act"),
    ({"search": {"space": {"train.epochs": "int(2, 6)"}, "min_epochs": 2}}, "search.pruner asha can never act"),
    ({"search": {"pruner": "median", "trials": 4, "pruner_startup": 4}},
     "search.pruner median can never prune: it waits for pruner_startup=4"),
    ({"search": {"colour": 1}}, "unknown key search.colour"),
    ({"overrides": {"optim.lr": 1e-3}}, "search.space.optim.lr: optim.lr is also fixed under overrides"),
])
def test_bad_search_is_one_line_exit_2_before_anything_is_written(tmp_path, capsys, change, named):
    search = {**{"sampler": "tpe", "trials": 4, "parallel": 2, "pruner": "asha", "space": dict(SPACE)},
              **change.pop("search", {})}
    path = write_search(tmp_path / "s.yaml", "bad", search, **change)
    code = sweep_cli.main(["--config", str(path), "--cluster", "slurm", "--sweeps-root", str(tmp_path / "sweeps")])
    err = capsys.readouterr().err
    assert code == 2 and named in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "sweeps").exists()


@pytest.mark.parametrize("trials, startup", [(2, 1), (4, 2), (10, 5), (40, 5)])
def test_the_median_pruner_starts_pruning_within_a_small_study(tmp_path, trials, startup):
    """With <= 10 trials the median pruner must not wait for all of them (it would never prune)."""
    path = write_search(tmp_path / "s.yaml", "med", {"pruner": "median", "trials": trials})
    spec = load_sweep(path, sweeps_root=tmp_path).search
    assert spec.pruner_startup == startup < trials


def test_search_needs_a_cluster_beside_its_driver(tmp_path, capsys):
    path = write_search(tmp_path / "s.yaml", "dbg")
    assert sweep_cli.main(["--config", str(path), "--cluster", "debug", "--sweeps-root", str(tmp_path)]) == 2
    assert "--cluster slurm or local" in capsys.readouterr().err


def test_dry_run_shows_the_worst_case_bill_and_submits_nothing(tmp_path, capsys):
    path = write_search(tmp_path / "s.yaml", "dry", {"trials": 12, "parallel": 3},
                        slurm={"gpus_per_node": 2, "time_min": 90, "cpus_per_task": 4})
    args = ["--config", str(path), "--cluster", "slurm", "--dry-run", "--sweeps-root", str(tmp_path / "sweeps")]
    assert sweep_cli.main(args) == 0
    out = capsys.readouterr().out
    # 12 trials x 1.5 h x 2 GPUs = 36 GPU-h; x 2 tasks x 4 CPUs = 144 CPU-h
    assert "worst case (every trial to its time limit): 36.0 GPU-h, 144.0 CPU-h" in out, out
    assert "space optim.lr: loguniform(0.0001, 0.1)" in out and "sbatch slurm/search_driver.sbatch" in out
    assert sweep_cli.main([*args, "--confirm-seeds", "0,1,2"]) == 0  # the confirmation runs are billed too
    assert "45.0 GPU-h" in capsys.readouterr().out  # 15 runs
    assert not (tmp_path / "sweeps").exists()


def test_a_trial_is_an_ordinary_task_with_the_grids_identity_rules(tmp_path):
    from brainmri.sweep.expand import confirm_task, trial_task

    fixed = {"train.epochs": 2, "data.num_workers": 0}
    sweep = load_sweep(write_search(tmp_path / "s.yaml", "ids", overrides=fixed), sweeps_root=tmp_path / "sweeps")
    assert sweep.tasks == [] and sweep.search.fixed["baseline_cnn"] == {**fixed, "seed": 0}
    task, cfg = trial_task(sweep, "baseline_cnn", {"optim.lr": 0.0123, "model.dropout": 0.25}, 7)
    assert task.id == task_id("baseline_cnn", {**fixed, "seed": 0, "optim.lr": 0.0123, "model.dropout": 0.25})
    assert task.run_dir == str(tmp_path / "sweeps" / "ids" / "runs" / task.id)
    assert (cfg.optim.lr, cfg.model.dropout, cfg.wandb.group) == (0.0123, 0.25, "ids")
    assert {"search", "trial-7"} <= set(cfg.wandb.tags)
    same, _ = confirm_task(sweep, "baseline_cnn", {"optim.lr": 0.0123, "model.dropout": 0.25}, 0)
    other, _ = confirm_task(sweep, "baseline_cnn", {"optim.lr": 0.0123, "model.dropout": 0.25}, 1)
    assert same.id == task.id and other.id != task.id  # --confirm-seeds of the trial's own seed is the trial


def test_journal_has_one_writer_survives_a_torn_line_and_replays(tmp_path):
    import optuna

    lock = lock_driver(tmp_path)
    other = subprocess.run([sys.executable, "-c", "import sys\nfrom brainmri.sweep.search import DriverLockedError, "
                            "lock_driver\ntry:\n    lock_driver(sys.argv[1])\nexcept DriverLockedError as e:\n"
                            "    sys.exit(str(e))", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert other.returncode == 1 and "a search driver is already running (host" in other.stderr
    assert f"pid {os.getpid()}" in other.stderr
    study = optuna.create_study(storage=open_storage(tmp_path), study_name="s/r", direction="maximize")
    for x in (0.1, 0.5):
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        trial.report(x / 2, 1)
        study.tell(trial, x)
    running = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    running.report(0.3, 1)
    with open(study_file(tmp_path), "ab") as f:  # a kill in the middle of writing the next line
        f.write(b'{"op_code":6,"worker_id":"x","trial_id":2,"step":2,"intermed')
    lock.release()
    again = optuna.load_study(storage=open_storage(tmp_path), study_name="s/r")
    assert [t.state.name for t in again.trials] == ["COMPLETE", "COMPLETE", "RUNNING"]
    assert again.best_value == 0.5 and again.trials[2].intermediate_values == {1: 0.3}
    adopted = optuna.trial.Trial(again, again.trials[2]._trial_id)  # a restarted driver goes on with it
    adopted.report(0.4, 2)
    again.tell(2, 0.4)
    assert study_file(tmp_path).read_bytes().endswith(b"\n")
    assert [t.value for t in optuna.load_study(storage=open_storage(tmp_path), study_name="s/r").trials] \
        == [0.1, 0.5, 0.4]


def test_a_pruned_run_stops_at_its_next_epoch_end_with_its_checkpoints(tmp_path, phantom_root):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.request_prune(trial=3, epoch=1, reason="asha")  # already there: the run stops after its first epoch
    proc = run_train("--config", "configs/baseline_cnn.yaml", *TINY, f"data.root={phantom_root}",
                     f"run_dir={run.path}", "train.epochs=4", "train.max_steps_per_epoch=2", "wandb.enabled=false")
    assert proc.returncode == 0 and "pruned by the search driver after epoch 1" in proc.stdout
    state = run.state()
    assert (state.status, state.epoch) == ("pruned", 1) and state.record["request"]["trial"] == 3
    assert [r["epoch"] for r in run.epoch_rows()] == [1] and run.read_summary() is None
    assert run.last_checkpoint.is_file() and run.best_checkpoint.is_file()
    task = Task("t", "baseline_cnn", "", {}, [], str(run.path), job_id="1", cluster="slurm")
    assert task_state(tmp_path, task, "COMPLETED") == ("pruned", None)  # never "failed"
    cmp = compare(collect_runs([tmp_path]))
    assert cmp.recipes == [] and [r.status for r in cmp.incomplete] == ["pruned"]  # never averaged
    # resumed by hand, a pruned run trains on to its last epoch (the carried-out request is withdrawn)
    proc = run_train("--resume", str(run.path))
    assert proc.returncode == 0 and "pruned by the search driver" not in proc.stdout and run.prune_request() is None
    assert [r["epoch"] for r in run.epoch_rows()] == [1, 2, 3, 4] and run.state().status == "finished"


@pytest.mark.slow
def test_local_search_runs_its_trials_confirms_the_best_and_lands_in_the_report(tmp_path, phantom_root, capsys):
    from brainmri.cli import collect as collect_cli

    overrides = {"data.root": str(phantom_root), **dict(t.split("=") for t in TINY), "train.epochs": 2,
                 "train.max_steps_per_epoch": 2, "wandb.enabled": False}
    path = write_search(tmp_path / "s.yaml", "loc", {"trials": 3, "parallel": 3, "metric": "val/loss", "pruner": "none",
                                                     "sampler": "random",
                                                     "space": {"optim.lr": "loguniform(1e-4, 3e-1)"}},
                        overrides)
    proc = subprocess.run([sys.executable, str(ROOT / "launch" / "sweep.py"), "--config", str(path), "--cluster",
                           "local", "--sweeps-root", str(tmp_path), "--poll", "0.3", "--confirm-seeds", "0,1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = read_trials(tmp_path / "loc")
    rows = table["trials"]
    assert [r["number"] for r in rows] == [0, 1, 2] and {r["state"] for r in rows} == {"finished"}
    for r in rows:
        assert RunDir(r["run_dir"]).state().finished and list(r["intermediate"]) == ["1", "2"]
    assert max(r["submitted_at"] for r in rows) < min(r["ended_at"] for r in rows)  # all 3 at once, no batch wait
    best = table["best"]["baseline_cnn"]
    assert best["value"] == min(r["value"] for r in rows)
    confirm = table["confirm"]["baseline_cnn"]
    assert confirm["trial"] == best["number"] and confirm["tasks"][0] == best["task"]  # seed 0 is the trial itself
    seed1 = RunDir(Path(best["run_dir"]).parent / confirm["tasks"][1])
    assert seed1.state().finished and seed1.read_summary()["seed"] == 1
    capsys.readouterr()
    assert collect_cli.main([str(tmp_path / "loc"), "--html", str(tmp_path / "r.html")]) == 0
    out = capsys.readouterr().out
    assert f"study's best trial {best['number']}" in out and "the comparison's choice" in out
    assert "chosen among configurations run over >= 2 seeds" in out and "| 2 |" in out  # the confirmed one, 2 seeds
    page = (tmp_path / "r.html").read_text()
    assert "11. Search" in page and "optimisation history" in page and "parcoords" in page
    if shutil.which("chromium"):  # the search view draws offline: history, curves, coordinates, importance
        dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--proxy-server=127.0.0.1:9",
                              "--host-resolver-rules=MAP * ~NOTFOUND", "--enable-logging=stderr", "--v=0",
                              "--virtual-time-budget=8000", "--dump-dom", f"file://{tmp_path}/r.html"],
                             capture_output=True, text=True, timeout=180)
        assert not re.search(r"CONSOLE.*(Error|Uncaught)", dom.stderr), dom.stderr[-2000:]
        search = dom.stdout.split("id=\"s11\"")[1]
        assert search.count('class="main-svg"') >= 4 and "parcoords" in search
    assert sweep_cli.main(["status", str(tmp_path / "loc")]) == 0 and "4 finished" in capsys.readouterr().out


def test_each_epoch_is_reported_once_even_when_a_requeued_trial_redoes_it(tmp_path):
    """The driver's reporting on a real study and run directory: a resumed trial rewrites epochs 2-3."""
    from brainmri.jobs.search import SearchDriver

    path = write_search(tmp_path / "s.yaml", "rep", {"pruner": "none", "metric": "val/loss"})
    driver = SearchDriver(load_sweep(path, sweeps_root=tmp_path), "local")
    driver.open()
    row = driver.ask("baseline_cnn")  # in the journal and trials.json; nothing submitted
    run = RunDir(row["run_dir"])
    run.path.mkdir(parents=True)
    for epoch, loss in ((1, 1.3), (2, 1.2), (3, 1.1)):
        run.append_metrics({"epoch": epoch, "val/loss": loss, "val/acc": 0.5})
    assert driver.report_epochs(row, ended=False) and not driver.report_epochs(row, ended=False)
    run.truncate_metrics(1)  # requeued from its epoch-1 checkpoint: epochs 2 and 3 are trained again
    for epoch, loss in ((2, 1.2), (3, 1.1), (4, 1.0)):
        run.append_metrics({"epoch": epoch, "val/loss": loss, "val/acc": 0.5})
    assert driver.report_epochs(row, ended=False)
    assert row["intermediate"] == {"1": 1.3, "2": 1.2, "3": 1.1, "4": 1.0}
    driver.save()
    again = SearchDriver(load_sweep(path, sweeps_root=tmp_path), "local")  # a restarted driver, same study
    again.open()
    assert again.studies["baseline_cnn"].trials[0].intermediate_values == {1: 1.3, 2: 1.2, 3: 1.1, 4: 1.0}
    assert not again.report_epochs(again.rows[0], ended=False)


def _tiny_search(tmp_path: Path, phantom_root: Path, name: str, epochs: int = 2, **search) -> tuple[Path, list[str]]:
    overrides = {"data.root": str(phantom_root), **dict(t.split("=") for t in TINY), "train.epochs": epochs,
                 "train.max_steps_per_epoch": 2, "wandb.enabled": False}
    path = write_search(tmp_path / f"{name}.yaml", name, {"trials": 1, "parallel": 1, "metric": "val/loss",
                                                          "pruner": "none", "sampler": "random",
                                                          "space": {"optim.lr": "loguniform(1e-4, 3e-1)"}, **search},
                        overrides)
    return path, [sys.executable, str(ROOT / "launch" / "sweep.py"), "--config", str(path), "--cluster", "local",
                  "--sweeps-root", str(tmp_path), "--poll", "0.3"]


EPOCHS_OVER_GRACE = 40  # the trial still trains when the driver is run again


@pytest.mark.slow
def test_a_driver_killed_between_a_submission_and_its_job_id_adopts_the_running_trial(tmp_path, phantom_root):
    """A real crash of the real driver right after it submitted a trial, before it wrote the job id: the
    re-run finds the trial's run directory held by the live run (or its copy meets that lock and ends
    "already running") and adopts it; the trial ends finished with its metric, trained once, never failed."""
    from brainmri.jobs.search import CRASH_AT

    _, cmd = _tiny_search(tmp_path, phantom_root, "crash", epochs=EPOCHS_OVER_GRACE)
    with open(tmp_path / "first.log", "w") as log:  # not a pipe: the trial it leaves behind keeps its end open
        first = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=600,
                               env={**os.environ, CRASH_AT: "submitted"})
    assert first.returncode == 137, (tmp_path / "first.log").read_text()
    (row,) = read_trials(tmp_path / "crash")["trials"]
    assert (row["state"], row["job_id"]) == ("submitting", None)  # the job id never reached trials.json
    run = RunDir(row["run_dir"])
    deadline = time.monotonic() + 300
    while not run.held_here() and time.monotonic() < deadline:  # the trial it submitted trains on
        time.sleep(0.2)
    assert run.held_here() and not run.state().finished
    second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "failed" not in second.stdout.replace("0 failed", ""), second.stdout
    # adopted, no copy (on a busy machine the trial may have finished before the re-run looked)
    assert re.search(r"is already (running|finished) .*: adopted", second.stdout), second.stdout
    assert "submitted as job" not in second.stdout
    (row,) = read_trials(tmp_path / "crash")["trials"]
    assert row["state"] == "finished" and row["value"] == run.read_summary()["val/loss"]
    assert [r["epoch"] for r in run.epoch_rows()] == list(range(1, EPOCHS_OVER_GRACE + 1))  # once, by one process
    assert [t.state for t in load_sweep(tmp_path / "crash.yaml", sweeps_root=tmp_path).tasks] == ["finished"]


def test_a_trial_failed_by_mistake_whose_run_finishes_is_reconciled_everywhere(tmp_path):
    """The run directory is the truth: a trial the study failed (its job thought lost) whose run then
    finished is recorded finished with its metric, in the study, trials.json, the task table and the search view."""
    from brainmri.jobs.search import SearchDriver
    from brainmri.results.collect import Comparison
    from brainmri.results.search import agreement, trials_frame

    path = write_search(tmp_path / "s.yaml", "rec", {"pruner": "none", "metric": "val/loss", "trials": 1})
    driver = SearchDriver(load_sweep(path, sweeps_root=tmp_path), "local")
    driver.open()
    row = driver.ask("baseline_cnn")
    row.update(state="running", job_id="999999", cluster="local")
    driver.end(row, "failed", "task process 999999 killed by SIGKILL")
    driver.save()
    assert driver.studies["baseline_cnn"].trials[0].state.name == "FAIL"
    run = RunDir(row["run_dir"])  # ... but the run it started trains on to its end
    run.path.mkdir(parents=True)
    for epoch, loss in ((1, 1.3), (2, 0.9)):
        run.append_metrics({"epoch": epoch, "val/loss": loss, "val/acc": 0.5})
    run.write_summary({"status": "finished", "val/loss": 0.9, "val/acc": 0.5, "epochs_run": 2})

    again = SearchDriver(load_sweep(path, sweeps_root=tmp_path), "local")  # a re-run of the same command
    again.open()
    again.adopt()
    table = read_trials(tmp_path / "rec")
    (row,) = table["trials"]
    assert (row["state"], row["value"], row["intermediate"]) == ("finished", 0.9, {"1": 1.3, "2": 0.9})
    study = again.studies["baseline_cnn"]
    assert study.best_value == 0.9 and study.best_trial.user_attrs == {"reconciles": 0}
    assert again.asked("baseline_cnn") == 1 and again.complete()  # the copy is no new trial
    assert [t.state for t in load_sweep(path, sweeps_root=tmp_path).tasks] == ["finished"]
    view = agreement(table, Comparison(metric="val/loss", recipes=[], incomplete=[]))
    assert view[0].startswith("baseline_cnn: 1 trial(s) (1 finished); study's best trial 0 (val/loss 0.9"), view
    assert list(trials_frame(table)["state"]) == ["finished"]


def _sweep_files(sweep_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(sweep_dir)): p.read_bytes() for p in sorted(sweep_dir.rglob("*")) if p.is_file()}


def _started_study(tmp_path: Path, name: str, **search) -> tuple[Path, list[str]]:
    """A search sweep directory as a driver leaves it: sweep.yaml, the journal, trials.json (one trial asked)."""
    from brainmri.jobs.search import SearchDriver
    from brainmri.sweep.expand import save_sweep

    path = write_search(tmp_path / f"{name}.yaml", name, {"pruner": "none", "metric": "val/loss", **search},
                        {"data.num_workers": 0, "train.epochs": 3, "data.input_size": 32})
    driver = SearchDriver(load_sweep(path, sweeps_root=tmp_path), "local")
    driver.open()
    save_sweep(driver.sweep)
    driver.ask("baseline_cnn")
    return path, ["--config", str(path), "--cluster", "local", "--sweeps-root", str(tmp_path)]


@pytest.mark.parametrize("change, named", [
    (["train.epochs=2", "data.input_size=48"],
     ["baseline_cnn data.input_size 32 -> 48", "baseline_cnn train.epochs 3 -> 2"]),  # the fixed settings
    (["data.root=/elsewhere"], ["baseline_cnn data.root"]),
    (["optim.weight_decay=0.01"], ["baseline_cnn optim.weight_decay"]),
])
def test_a_rerun_that_would_mix_another_study_in_is_refused_and_writes_nothing(tmp_path, capsys, change, named):
    _, args = _started_study(tmp_path, "mix")
    before = _sweep_files(tmp_path / "mix")
    assert sweep_cli.main([*args, *change]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds another study" in err and all(n in err for n in named), err
    assert _sweep_files(tmp_path / "mix") == before  # sweep.yaml, trials.json, tasks, journal: byte-identical


@pytest.mark.parametrize("search, named", [
    ({"metric": "val/acc"}, "search.metric 'val/loss' -> 'val/acc'"),
    ({"sampler": "random"}, "search.sampler 'tpe' -> 'random'"),
    ({"pruner": "asha"}, "search.pruner 'none' -> 'asha'"),
    ({"space": {"optim.lr": "loguniform(1e-5, 1e-1)"}}, "search.space"),
])
def test_a_rerun_with_another_search_block_is_refused_and_writes_nothing(tmp_path, capsys, search, named):
    path, args = _started_study(tmp_path, "blk")
    before = _sweep_files(tmp_path / "blk")
    write_search(path, "blk", {"pruner": "none", "metric": "val/loss", **search},
                 {"data.num_workers": 0, "train.epochs": 3, "data.input_size": 32})
    assert sweep_cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err, err
    assert _sweep_files(tmp_path / "blk") == before


def test_a_rerun_with_fewer_trials_counts_what_was_asked(tmp_path):
    """Lowering trials is the same study: progress counts the trials asked, never '6 finished of 3'."""
    import io

    from brainmri.jobs.search import SearchDriver

    path, _ = _started_study(tmp_path, "few", trials=4)
    driver = SearchDriver(load_sweep(path, sweeps_root=tmp_path), "local")
    driver.open()
    for _ in range(3):
        driver.ask("baseline_cnn")
    write_search(path, "few", {"pruner": "none", "metric": "val/loss", "trials": 2},
                 {"data.num_workers": 0, "train.epochs": 3, "data.input_size": 32})
    out = io.StringIO()
    again = SearchDriver(load_sweep(path, sweeps_root=tmp_path), "local", out=out)
    again.open()
    again.progress()
    assert "running of 4;" in out.getvalue() and not again.fill(), out.getvalue()


def _trial_run(root: Path, number: int, lr: float, loss: float) -> dict:
    """A finished run directory of search trial ``number`` (val/acc 0.8 for every trial: a tie)."""
    from run_dirs import make_run

    d = make_run(root, "baseline_cnn", 0, lr, 0.8, test_acc=0.7, extra={"val/loss": loss})
    for name in ("config.yaml", "summary.json"):  # tagged as the driver tags a trial's run
        text = (d / name).read_text()
        (d / name).write_text(text.replace("tags: []", f"tags: [search, trial-{number}]")
                              .replace('"tags": []', f'"tags": ["search", "trial-{number}"]'))
    return {"recipe": "baseline_cnn", "number": number, "state": "finished", "value": 0.8, "loss": loss,
            "run_dir": str(d), "params": {"optim.lr": lr}, "intermediate": {}}


@pytest.mark.parametrize("losses, chosen", [
    ((0.6, 0.6), 0),  # a tie in the metric and the loss: the earlier trial (sorted settings would say trial 4)
    ((0.7, 0.5), 4),  # a tie in the metric: the lower validation loss
])
def test_the_driver_the_collector_and_the_search_view_choose_by_one_rule(tmp_path, losses, chosen):
    from brainmri.jobs.search import SearchDriver
    from brainmri.results.search import agreement, study_best

    rows = [_trial_run(tmp_path / "runs", 0, 0.01, losses[0]), _trial_run(tmp_path / "runs", 4, 0.001, losses[1])]
    driver = SearchDriver(load_sweep(write_search(tmp_path / "s.yaml", "tie"), sweeps_root=tmp_path), "local")
    driver.data = {"trials": rows}
    table = {"search": {"metric": "val/acc", "direction": "maximize"}, "trials": rows}
    cmp = compare(collect_runs([tmp_path / "runs"]))
    assert driver.best("baseline_cnn")["number"] == study_best(table, "baseline_cnn").number == chosen
    assert cmp.recipes[0].chosen == (rows[chosen == 4]["params"]["optim.lr"],)
    assert agreement(table, cmp)[0].endswith("the comparison's choice")


def test_a_study_with_no_finished_trial_reads_as_such_not_as_a_broken_table(tmp_path, capsys):
    from run_dirs import make_run

    from brainmri.cli import collect as collect_cli

    sweep_dir = tmp_path / "none"
    make_run(sweep_dir / "runs", "baseline_cnn", 0, 0.01, 0.8, status="failed")
    (sweep_dir / "trials.json").write_text(json.dumps({
        "search": {"metric": "val/acc", "direction": "maximize", "sampler": "tpe", "pruner": "none", "trials": 2,
                   "parallel": 1},
        "trials": [{"recipe": "baseline_cnn", "number": 0, "state": "failed", "value": None, "intermediate": {},
                    "params": {"optim.lr": 0.01}, "run_dir": str(sweep_dir / "runs" / "x")}]}))
    assert collect_cli.main([str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    assert "|  |" not in out and "\n|\n" not in out and "Nothing finished: no row to show." in out, out
    assert "baseline_cnn: 1 trial(s) (1 failed); none finished" in out


def test_a_copy_of_a_running_task_ends_already_running_and_the_task_reads_running(tmp_path, phantom_root):
    """The copy of a trial submitted twice meets the run directory's lock held by the live run (here a process
    that takes it as a run does, and keeps it): it ends
    cleanly ("already running", nothing written), and the task's state is the live run's, not failed."""
    from brainmri.config import load_config
    from brainmri.jobs.train_job import ALREADY_RUNNING, TrainJob

    run = RunDir(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom brainmri.rundir import RunDir, "
                               "acquire_lock\nrun = RunDir(sys.argv[1])\nrun.create()\nlock = acquire_lock(run)\n"
                               "print('held', flush=True)\ntime.sleep(600)", str(run.path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = sorted(p.name for p in run.path.iterdir())
        cfg = load_config("configs/baseline_cnn.yaml", [*TINY, f"data.root={phantom_root}", f"run_dir={run.path}",
                                                        "wandb.enabled=false"])
        result = TrainJob(cfg.to_dict())()
        assert result["status"] == ALREADY_RUNNING and f"pid {holder.pid}" in result["holder"]
        assert sorted(p.name for p in run.path.iterdir()) == before  # the copy wrote nothing
        task = Task("t", "baseline_cnn", "", {}, [], str(run.path), job_id="4242", cluster="slurm")
        assert task_state(tmp_path, task, "COMPLETED") == ("running", None)  # the copy's job ended: not failed
    finally:
        holder.kill()
        holder.wait()
    assert task_state(tmp_path, task, "COMPLETED")[0] == "failed"  # nobody holds it any more


def test_the_collector_refuses_a_misspelled_metric_with_the_registry_names(tmp_path, capsys):
    from run_dirs import make_run

    from brainmri.cli import collect as collect_cli

    make_run(tmp_path / "runs", "baseline_cnn", 0, 0.01, 0.8)
    assert collect_cli.main([str(tmp_path / "runs"), "--metric", "val/accuracy"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: --metric val/accuracy: no finished run's summary has it (every run logs val/acc, "
                   "val/loss, val/macro_f1, val/auc, val/ece)"), err
