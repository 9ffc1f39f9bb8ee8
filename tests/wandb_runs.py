"""Write real offline W&B runs for tests/benchmarks: one subprocess runs wandb.init/log/finish per spec.

A spec: {"dir", "id", "project", "group", "job_type", "tags", "config", "rows": [...],
"summary": {...}, "del_summary": [...], "exit_code": int}. Rows are logged with step=row["epoch"], commit=True
(without commit an explicit-step row is committed at finish, after -- and over -- summary values set later).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

_SCRIPT = r"""
import json, sys, wandb
for s in json.load(open(sys.argv[1])):
    run = wandb.init(dir=s["dir"], id=s.get("id"), resume="allow" if s.get("id") else None,
                     project=s.get("project", "brainmri"), group=s.get("group"), job_type=s.get("job_type"),
                     tags=s.get("tags"), config=s.get("config"), settings=wandb.Settings(console="off",
                     x_disable_stats=True, x_disable_meta=True, save_code=False))
    for row in s.get("rows", []):
        run.log(row, step=row.get("epoch"), commit=True)
    for k, v in s.get("summary", {}).items():
        run.summary[k] = v
    for k in s.get("del_summary", []):
        del run.summary[k]
    run.finish(exit_code=s.get("exit_code", 0))
"""


def write_runs(specs: list[dict], tmp_dir) -> None:
    spec_file = os.path.join(str(tmp_dir), f"specs-{os.getpid()}-{id(specs)}.json")
    with open(spec_file, "w") as f:
        json.dump(specs, f)
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    subprocess.run([sys.executable, "-c", _SCRIPT, spec_file], check=True, env=env)
