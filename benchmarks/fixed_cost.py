"""A run's fixed cost: process start to exit of a 1-epoch phantom run, minus its ``train_time_s``,
as a ratio to ``python -c "import torch"`` on the same machine.

    python benchmarks/fixed_cost.py [--repeats 5] [--no-wandb]
    python benchmarks/fixed_cost.py --compare-with /tmp/brainmri-old   # another checkout, measured alternately

Each repeat runs, one after the other, ``import torch``, the run (``python train.py --config
configs/baseline_cnn.yaml`` on a 48-image phantom set at 32 px, 1 epoch, W&B offline as in the tests)
and, with ``--compare-with``, the same run from the other checkout (``PYTHONPATH`` pointing at it).
One warm-up of each is discarded (it fills the decoded-image cache and the page cache). Wall time and
the CPU time of the process (user + system) are kept: other sessions share this machine, and under
contention wall time inflates while CPU time barely moves.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT, scratch_dir, write_result

ENV = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}


def timed_process(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds user + system) of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-wandb", action="store_true", help="train with wandb.enabled=false")
    parser.add_argument("--compare-with", type=Path, help="another brainmri checkout, run alternately")
    args = parser.parse_args()

    from brainmri.data.phantoms import generate_phantoms

    scratch = Path(scratch_dir("fixed-cost-"))
    data = scratch / "data"
    generate_phantoms(data, n_per_class=12, n_test_per_class=4, image_size=64, seed=0)
    env = {**os.environ, **ENV, "BRAINMRI_CACHE": str(scratch / "cache")}
    train = ["--config", "configs/baseline_cnn.yaml", "data.input_size=32", "data.batch_size=8",
             "data.num_workers=0", "train.mixed_precision=no", f"data.root={data}", "train.epochs=1",
             f"wandb.enabled={'false' if args.no_wandb else 'true'}"]
    sides: dict[str, tuple[Path, dict[str, str]]] = {"this": (ROOT, env)}
    if args.compare_with:
        other = args.compare_with.resolve()
        sides["other"] = (other, {**env, "PYTHONPATH": str(other)})

    results: dict[str, dict[str, list[float]]] = {"import_torch": {"wall": [], "cpu": []}}
    for name in sides:
        results[name] = {"wall": [], "cpu": [], "train": [], "fixed": [], "fixed_cpu": []}
    for repeat in range(args.repeats + 1):  # repeat 0 is the warm-up
        wall, cpu = timed_process([sys.executable, "-c", "import torch"], env, ROOT)
        if repeat:
            results["import_torch"]["wall"].append(wall)
            results["import_torch"]["cpu"].append(cpu)
        for name, (cwd, side_env) in sides.items():
            run_dir = scratch / f"{name}-run{repeat}"
            wall, cpu = timed_process([sys.executable, str(cwd / "train.py"), *train, f"run_dir={run_dir}"],
                                      side_env, cwd)
            train_s = json.loads((run_dir / "summary.json").read_text())["train_time_s"]
            if repeat:
                r = results[name]
                r["wall"].append(wall)
                r["cpu"].append(cpu)
                r["train"].append(train_s)
                r["fixed"].append(wall - train_s)
                r["fixed_cpu"].append(cpu - train_s)
        print(f"repeat {repeat}: " + ", ".join(f"{k} {v['wall'][-1]:.2f} s" for k, v in results.items() if v["wall"]),
              flush=True)

    torch_wall, torch_cpu = median(results["import_torch"]["wall"]), median(results["import_torch"]["cpu"])
    out: dict = {"repeats": args.repeats, "wandb": not args.no_wandb,
                 "import_torch": {"wall_median_s": torch_wall, "cpu_median_s": torch_cpu,
                                  "runs_s": [round(v, 3) for v in results["import_torch"]["wall"]]}}
    for name in sides:
        r = results[name]
        out[name] = {"checkout": str(sides[name][0]), "wall_median_s": median(r["wall"]),
                     "train_time_median_s": median(r["train"]), "fixed_median_s": median(r["fixed"]),
                     "fixed_cpu_median_s": median(r["fixed_cpu"]),
                     "fixed_over_import_torch_wall": median(r["fixed"]) / torch_wall,
                     "fixed_over_import_torch_cpu": median(r["fixed_cpu"]) / torch_cpu,
                     "runs_s": [round(v, 3) for v in r["wall"]]}
        print(f"{name}: fixed cost {median(r['fixed']):.2f} s wall ({median(r['fixed']) / torch_wall:.2f} x import "
              f"torch {torch_wall:.2f} s), {median(r['fixed_cpu']):.2f} s CPU "
              f"({median(r['fixed_cpu']) / torch_cpu:.2f} x {torch_cpu:.2f} s)")
    write_result("fixed_cost" + ("_no_wandb" if args.no_wandb else ""), out)


if __name__ == "__main__":
    main()
