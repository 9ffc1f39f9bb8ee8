"""Benchmark: collect 1,000 offline W&B runs (target < 10 s).

Generates 1,000 small real ``run-*.wandb`` files once with wandb.init/log/finish (cached under
/tmp/brainmri-bench-collect), then times ``compare(collect_runs([dir]))`` (median of 3) and writes
benchmarks/results/collect_offline.json.

    python benchmarks/collect_offline.py [--runs 1000] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CACHE = Path("/tmp/brainmri-bench-collect")
CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]

_WRITER = r"""
import sys, wandb
root, start, stop = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
classes = %r
for i in range(start, stop):
    recipe, lr, seed = ["baseline_cnn", "resnet50_finetune"][i %% 2], [1e-3, 3e-4, 1e-4][i %% 3], i // 6
    cfg = {"recipe": recipe, "seed": seed, "optim": {"name": "adam", "lr": lr}, "train": {"epochs": 10},
           "data": {"image_size": 224, "batch_size": 32}, "wandb": {"group": "bench"}}
    run = wandb.init(dir=f"{root}/run{i:04d}", project="brainmri", group="bench", config=cfg,
                     settings=wandb.Settings(console="off", x_disable_stats=True, x_disable_meta=True))
    for e in range(1, 11):
        acc = 0.5 + 0.04 * e - lr * 50 + 0.001 * (i %% 7)
        run.log({"epoch": e, "phase": "main", "step": 100 * e, "lr": lr, "train/loss": 1 / e, "train/acc": acc,
                 "val/loss": 1.1 / e, "val/acc": acc, "val/macro_f1": acc - 0.01, "val/auc": 0.9,
                 "val/ece": 0.05, "time/epoch_s": 3.0, "throughput/images_per_s": 500.0}, step=e, commit=True)
    for split in ("val", "test"):
        for m, v in {"acc": acc, "macro_f1": acc - 0.02, "auc": 0.95, "ece": 0.04, "loss": 0.3}.items():
            run.summary[f"{split}/{m}"] = v
        for c in classes:
            run.summary[f"{split}/recall/{c}"] = acc
    run.finish()
""" % (CLASSES,)  # noqa: UP031  (a script full of braces: % keeps them literal)


def generate(n: int, workers: int) -> None:
    have = len(list(CACHE.glob("run*/wandb/offline-run-*/run-*.wandb")))
    if have >= n:
        return
    CACHE.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    bounds = [have + (n - have) * k // workers for k in range(workers + 1)]
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(CACHE), str(a), str(b)], env=env)
             for a, b in zip(bounds, bounds[1:], strict=False)]
    if any(p.wait() for p in procs):
        sys.exit("generation failed")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    t0 = time.perf_counter()
    generate(args.runs, args.workers)
    gen_s = time.perf_counter() - t0

    from brainmri.results.collect import collect_runs, compare
    from brainmri.results.report import to_markdown

    times, n_runs = [], 0
    for _ in range(3):
        t0 = time.perf_counter()
        runs = collect_runs([CACHE])
        cmp = compare(runs)
        to_markdown(cmp)
        times.append(time.perf_counter() - t0)
        n_runs = len(runs)
    size = sum(f.stat().st_size for f in CACHE.rglob("run-*.wandb"))
    result = {"runs": n_runs, "wandb_bytes_total": size, "collect_s_median": statistics.median(times),
              "collect_s_all": times, "target_s": 10, "generation_s_this_call": gen_s,
              "recipes": len(cmp.recipes), "python": platform.python_version(), "cpus": os.cpu_count(),
              "machine": platform.machine(), "wandb": __import__("wandb").__version__}
    out = ROOT / "benchmarks" / "results" / "collect_offline.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
