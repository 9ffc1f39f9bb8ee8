"""Shared helpers for the benchmark scripts: machine description, medians, result files."""

from __future__ import annotations

import atexit
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATA_ROOT = ROOT.parent / "shared" / "data" / "brain-tumor-mri"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            # other sessions share this machine: a load above the core count means the timings were contended
            "loadavg_1_5_15_at_end": [round(v, 2) for v in os.getloadavg()]}


def scratch_dir(prefix: str) -> str:
    """A temporary directory removed when the script exits."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, True)
    return path


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) for one call of ``fn``.

    Other sessions share this machine; under contention wall time inflates while the process's
    own CPU time (with 1 torch thread and no worker processes) barely moves, so both are kept.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def summary(times: list[tuple[float, float]]) -> dict:
    walls, cpus = [t[0] for t in times], [t[1] for t in times]
    return {"median_s": statistics.median(walls), "min_s": min(walls), "cpu_median_s": statistics.median(cpus),
            "runs_s": [round(t, 4) for t in walls], "cpu_runs_s": [round(t, 4) for t in cpus]}


def ratio(a: dict, b: dict) -> dict:
    """a / b on wall-time medians, wall-time minima and CPU-time medians."""
    return {"wall_median": a["median_s"] / b["median_s"], "wall_min": a["min_s"] / b["min_s"],
            "cpu_median": a["cpu_median_s"] / b["cpu_median_s"]}


def write_result(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    result = {"benchmark": name, "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine(),
              **result}
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return path
