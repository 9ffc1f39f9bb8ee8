"""Test helpers for sweeps: is the local SLURM cluster up, tiny sweep files, the sweep CLI, job waits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
READY_STATES = {"idle", "mixed", "allocated", "completing"}
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "COMPLETING", "CONFIGURING", "SUSPENDED"}
# every task trains in seconds on one CPU
TINY = {"data.input_size": 32, "data.batch_size": 8, "data.num_workers": 0, "train.mixed_precision": "no",
        "train.epochs": 2, "train.max_steps_per_epoch": 2}
SMALL_JOBS = {"cpus_per_task": 1, "mem_gb": 2, "time_min": 30}


def _slurm_conf() -> str | None:
    if os.environ.get("SLURM_CONF"):
        return os.environ["SLURM_CONF"]
    env_sh = Path(os.environ.get("BRAINMRI_SLURM_DIR", "/tmp/brainmri-slurm")) / "env.sh"
    if env_sh.is_file():
        return env_sh.read_text().strip().removeprefix("export SLURM_CONF=")
    return None


def cluster_problem(min_nodes: int = 2) -> str | None:
    """Why the local cluster cannot run the tests, or None when it can (SLURM_CONF is then set)."""
    start = "start it with `slurm/local_cluster.sh start`"
    conf = _slurm_conf()
    if not conf or not Path(conf).is_file():
        return f"local SLURM cluster not running (no SLURM_CONF): {start}"
    try:
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, timeout=20,
                              check=False, env={**os.environ, "SLURM_CONF": conf})
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"local SLURM cluster not reachable ({e}): {start}"
    states = proc.stdout.split()
    if proc.returncode != 0 or len(states) < min_nodes or not set(states) <= READY_STATES:
        return f"local SLURM cluster not ready (sinfo: {proc.stderr.strip() or states}): {start}"
    os.environ["SLURM_CONF"] = conf
    return None


def write_sweep(path: Path, name: str, grid: dict, overrides: dict | None = None, slurm: dict | None = None,
                recipe: str = "baseline_cnn") -> Path:
    path.write_text(yaml.safe_dump({"name": name, "recipe": recipe, "overrides": overrides or {},
                                    "grid": grid, "slurm": slurm or {}}, sort_keys=False))
    return path


def run_sweep(*args: str, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python launch/sweep.py ARGS`` as a user runs it (from the repository root)."""
    return subprocess.run([sys.executable, str(ROOT / "launch" / "sweep.py"), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, **(env or {})})


def wait_for_job(job_id: str, timeout: float = 500) -> str:
    """Poll sacct until the job (every task of an array) ended; return its final state(s).

    ``sbatch --wait`` would do, but it polls only every ~30 s.
    """
    deadline = time.time() + timeout
    while time.time() < deadline:
        states = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "State", "-j", job_id], capture_output=True,
                                text=True, check=False).stdout.split()
        if states and not set(states) & ACTIVE_STATES:
            return ",".join(sorted(set(states)))
        time.sleep(1)
    raise TimeoutError(f"job {job_id} still running after {timeout} s")


def images_per_epoch(run_dir: Path) -> list[int]:
    """Training images each epoch saw over all ranks: world size x per-rank images."""
    rows = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "epoch" in r]
    return [round(r["time/epoch_s"] * r["throughput/images_per_s"]) for r in rows]
