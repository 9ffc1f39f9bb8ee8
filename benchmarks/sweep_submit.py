"""Time to expand a 100-task sweep and submit it to SLURM as one array (target < 5 s).

    slurm/local_cluster.sh start && source /tmp/brainmri-slurm/env.sh
    python benchmarks/sweep_submit.py [--tasks 100] [--repeats 3]

Expansion validates every task's config; submission pickles one TrainJob per task and calls
sbatch once; ``cli_total`` times the whole ``python launch/sweep.py --cluster slurm`` command.
The jobs are submitted held (SBATCH_HOLD) and cancelled at once, so nothing trains.
Writes benchmarks/results/sweep_submit.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, summary, write_result  # noqa: E402

from brainmri.jobs.submit import submit  # noqa: E402
from brainmri.sweep.expand import load_sweep  # noqa: E402


def write_config(path: Path, n_tasks: int) -> None:
    lrs = [1e-3, 3e-4, 1e-4, 3e-5]
    seeds = list(range(-(-n_tasks // len(lrs))))
    path.write_text(f"name: bench\nrecipe: baseline_cnn\noverrides: {{train.epochs: 1}}\n"
                    f"grid: {{seed: {seeds}, optim.lr: {lrs}}}\n"
                    "slurm: {cpus_per_task: 1, mem_gb: 1, time_min: 10, array_parallelism: 100}\n")


def one_run(config: Path, root: Path) -> tuple[float, float, int]:
    start = time.perf_counter()
    sweep = load_sweep(config, sweeps_root=root)
    expanded = time.perf_counter()
    jobs = submit(sweep, sweep.tasks, "slurm")
    submitted = time.perf_counter()
    subprocess.run(["scancel", jobs[0].job_id.split("_")[0]], check=True)
    return expanded - start, submitted - expanded, len(jobs)


def one_cli_run(config: Path, root: Path) -> float:
    """The same through ``python launch/sweep.py`` (interpreter start and imports included)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "launch" / "sweep.py"), "--config", str(config), "--cluster", "slurm",
                    "--sweeps-root", str(root)], check=True, capture_output=True)
    elapsed = time.perf_counter() - start
    array = json.loads((root / "bench" / "tasks.json").read_text())[0]["job_id"].split("_")[0]
    subprocess.run(["scancel", array], check=True)
    return elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if not os.environ.get("SLURM_CONF"):
        sys.exit("set SLURM_CONF (slurm/local_cluster.sh start prints it)")
    os.environ["SBATCH_HOLD"] = "1"
    expand, submit_s, total, cli = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.yaml"
        write_config(config, args.tasks)
        for i in range(args.repeats):
            e, s, n = one_run(config, Path(tmp) / f"sweeps{i}")
            expand.append(e)
            submit_s.append(s)
            total.append(e + s)
            cli.append(one_cli_run(config, Path(tmp) / f"cli{i}"))
            print(f"run {i}: {n} tasks, expand {e:.2f} s, submit {s:.2f} s, total {e + s:.2f} s; "
                  f"launch/sweep.py {cli[-1]:.2f} s")
    write_result("sweep_submit", {"tasks": n, "target_s": 5.0, "expand": summary(expand),
                                  "submit": summary(submit_s), "total": summary(total), "cli_total": summary(cli),
                                  "cluster": "local slurm (slurm/local_cluster.sh)"})


if __name__ == "__main__":
    main()
