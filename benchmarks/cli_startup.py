"""Start-up of every tool: ``--help`` against ``python -c "import torch"`` (the floor a torch-importing tool pays).

    python benchmarks/cli_startup.py [--runs 7]

Each tool's ``--help`` and the torch import run in turn (tool, torch, tool, torch, ...), each as a
fresh process; the ratio is taken pair by pair and its median reported, with the median wall times.
Writes benchmarks/results/cli_startup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ["train.py", "launch/sweep.py", "launch/collect.py", "launch/audit.py", "launch/predict.py",
         "launch/evaluate.py", "launch/export.py"]
TORCH = [sys.executable, "-c", "import torch"]


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=7)
    args = p.parse_args()
    wall(TORCH)  # warm the page cache
    rows = {}
    for tool in TOOLS:
        cmd = [sys.executable, str(ROOT / tool), "--help"]
        wall(cmd)
        pairs = [(wall(cmd), wall(TORCH)) for _ in range(args.runs)]
        rows[tool] = {"help_s": statistics.median(a for a, _ in pairs),
                      "import_torch_s": statistics.median(b for _, b in pairs),
                      "ratio": statistics.median(a / b for a, b in pairs)}
        r = rows[tool]
        print(f"{tool:<20} --help {r['help_s']:.3f} s  import torch {r['import_torch_s']:.3f} s  "
              f"ratio {r['ratio']:.3f}")
    out = ROOT / "benchmarks" / "results" / "cli_startup.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"runs": args.runs, "tools": rows, "cores": os.cpu_count(),
                               "loadavg_1_5_15_at_end": [round(v, 2) for v in os.getloadavg()]}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
