"""Random search, TPE + ASHA and a grid at equal budget on phantoms: trials and CPU-time to a target.

    python benchmarks/search_budget.py [--trials 12] [--parallel 2] [--epochs 10] [--seeds 0 1 2]

Each method trains ``--trials`` runs of the baseline CNN (48 px phantoms, ``--per-class`` training
images per class, ``--epochs`` epochs, 1 torch thread, no loader workers) through ``--cluster
local``: random search and TPE with ASHA pruning (each through the search driver, run in this
process, once per sampler seed in ``--seeds``), and the grid (``--trials`` points: 4 learning rates
x 3 dropouts) through the ordinary sweep. Space of the searches:
``optim.lr`` log-uniform in [1e-5, 1e-1], ``model.dropout`` uniform in [0, 0.7]. For each target
validation accuracy: the trials (in the order they were asked for) until a finished trial first
reached it, and the CPU time of those trials (each task's own CPU time, processes included, from
its local exit record); pruned trials count with what they spent. The driver's overhead per trial
is this process's CPU time while the driver ran, divided by the trials.
Writes benchmarks/results/search_budget.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import yaml  # noqa: E402

from _common import scratch_dir, write_result  # noqa: E402

from brainmri.data.phantoms import generate_phantoms  # noqa: E402
from brainmri.jobs.local_task import exit_record  # noqa: E402
from brainmri.jobs.search import SearchDriver  # noqa: E402
from brainmri.jobs.submit import run_sweep, submitit_folder  # noqa: E402
from brainmri.rundir import RunDir  # noqa: E402
from brainmri.sweep.expand import load_sweep  # noqa: E402
from brainmri.sweep.search import read_trials  # noqa: E402

SPACE = {"optim.lr": "loguniform(1e-5, 1e-1)", "model.dropout": "uniform(0, 0.7)"}
GRID = {"optim.lr": [1e-4, 1e-3, 1e-2, 1e-1], "model.dropout": [0.0, 0.35, 0.7]}


def overrides(data: Path, epochs: int) -> dict:
    return {"data.root": str(data), "data.input_size": 48, "data.batch_size": 16, "data.num_workers": 0,
            "train.mixed_precision": "no", "train.epochs": epochs, "wandb.enabled": False}


def cpu_of(sweep_dir: Path, job_id: str, wait_s: float = 300) -> float:
    """The task's CPU time from its exit record (written once its process ended, after its run directory)."""
    path, deadline = exit_record(submitit_folder(sweep_dir) / "%j", job_id), time.time() + wait_s
    while not path.exists() and time.time() < deadline:
        time.sleep(0.5)
    return json.loads(path.read_text())["cpu_s"]


def run_search(root: Path, name: str, sampler: str, pruner: str, args, data: Path, seed: int) -> dict:
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "recipe": "baseline_cnn", "overrides": overrides(data, args.epochs),
        "slurm": {"cpus_per_task": 1, "mem_gb": 2, "time_min": 60},
        "search": {"sampler": sampler, "trials": args.trials, "parallel": args.parallel, "pruner": pruner,
                   "metric": "val/acc", "seed": seed, "startup_trials": 4, "space": SPACE}}))
    sweep = load_sweep(path, sweeps_root=root)
    wall, cpu = time.perf_counter(), time.process_time()
    with open(root / f"{name}.log", "w") as log:
        code = SearchDriver(sweep, "local", poll_s=0.5, out=log).run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert code == 0, (root / f"{name}.log").read_text()
    trials = []
    for r in sorted(read_trials(sweep.dir)["trials"], key=lambda r: r["number"]):
        trials.append({"trial": r["number"], "state": r["state"], "params": r["params"],
                       "val_acc": r["value"] if r["state"] == "finished" else None,
                       "epochs": len(RunDir(r["run_dir"]).epoch_rows()), "cpu_s": cpu_of(sweep.dir, r["job_id"])})
    return {"trials": trials, "wall_s": wall, "driver_cpu_s": cpu, "driver_cpu_per_trial_s": cpu / len(trials)}


def run_grid(root: Path, args, data: Path) -> dict:
    path = root / "grid.yaml"
    path.write_text(yaml.safe_dump({"name": "grid", "recipe": "baseline_cnn", "overrides": overrides(data, args.epochs),
                                    "grid": GRID, "slurm": {"cpus_per_task": 1, "mem_gb": 2, "time_min": 60,
                                                             "array_parallelism": args.parallel}}))
    sweep = load_sweep(path, sweeps_root=root)
    wall = time.perf_counter()
    run_sweep(sweep, "local")
    wall = time.perf_counter() - wall
    trials = []
    for i, t in enumerate(sweep.tasks[:args.trials]):
        summary = RunDir(t.run_dir).read_summary() or {}
        trials.append({"trial": i, "state": t.state, "params": t.params, "val_acc": summary.get("val/acc"),
                       "epochs": len(RunDir(t.run_dir).epoch_rows()), "cpu_s": cpu_of(sweep.dir, t.job_id)})
    return {"trials": trials, "wall_s": wall}


def to_target(trials: list[dict], target: float) -> dict:
    spent = 0.0
    for n, t in enumerate(trials, 1):
        spent += t["cpu_s"]
        if t["val_acc"] is not None and t["val_acc"] >= target - 1e-9:
            return {"trials": n, "cpu_s": spent}
    return {"trials": None, "cpu_s": None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--per-class", type=int, default=60, help="phantom training images per class")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="the samplers' seeds (one search each)")
    p.add_argument("--targets", type=float, nargs="+", default=[0.75, 0.8, 0.85, 0.9])
    p.add_argument("--methods", nargs="+", default=["random", "tpe_asha", "grid"])
    args = p.parse_args()
    if args.trials != 12 and "grid" in args.methods:
        p.error("the grid has 12 points (4 learning rates x 3 dropouts): --trials 12")
    os.environ.update(OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    root = Path(scratch_dir("brainmri-bench-search-"))
    data = root / "data"
    generate_phantoms(data, n_per_class=args.per_class, n_test_per_class=10, image_size=64, seed=0)
    runs = {}
    for method in args.methods:
        for seed in [None] if method == "grid" else args.seeds:
            key = method if seed is None else f"{method}/seed{seed}"
            start = time.perf_counter()
            if method == "grid":
                runs[key] = run_grid(root, args, data)
            else:
                runs[key] = run_search(root, key.replace("/", "-"), "random" if method == "random" else "tpe",
                                       "none" if method == "random" else "asha", args, data, seed)
            trials = runs[key]["trials"]
            runs[key].update(
                total_cpu_s=sum(t["cpu_s"] for t in trials), epochs_trained=sum(t["epochs"] for t in trials),
                pruned=sum(t["state"] == "pruned" for t in trials),
                best_val_acc=max((t["val_acc"] for t in trials if t["val_acc"] is not None), default=None),
                to_target={str(x): to_target(trials, x) for x in args.targets})
            print(f"{key}: {time.perf_counter() - start:.0f} s; best val/acc {runs[key]['best_val_acc']}; "
                  f"CPU {runs[key]['total_cpu_s']:.0f} s; epochs {runs[key]['epochs_trained']}; "
                  f"to target {runs[key]['to_target']}", flush=True)
    write_result("search_budget", {"trials_per_method": args.trials, "parallel": args.parallel, "epochs": args.epochs,
                                   "per_class": args.per_class, "seeds": args.seeds, "space": SPACE, "grid": GRID,
                                   "targets": args.targets, "methods": runs})


if __name__ == "__main__":
    main()
