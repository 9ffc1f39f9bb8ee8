"""Baseline CNN on the real brain-tumour MRI scans, through the real engine (train.py), 3 seeds.

    python benchmarks/real_mri.py                          # ~15-25 min on a 2-core CPU
    python benchmarks/real_mri.py --image-size 64 --epochs 5 --seeds 0

Each seed is one ``train.py`` run (duplicate-aware stratified train/val split done by the engine,
decoded-image cache on); this script aggregates val accuracy, macro-F1 and ECE as mean ± std and
copies each seed's validation confusion matrix into benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATA = ROOT.parent / "shared" / "data" / "brain-tumor-mri"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=str(DATA))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--image-size", type=int, default=80)
    p.add_argument("--epochs", type=int, default=18)
    p.add_argument("--runs-dir", default=str(ROOT / "runs" / "benchmarks" / "real_mri"))
    p.add_argument("--extra", nargs="*", default=[], help="more key=value overrides for train.py")
    args = p.parse_args()

    overrides = [
        f"data.root={args.data_root}", f"data.input_size={args.image_size}", "data.cache=decoded",
        "data.num_workers=0",  # cached uint8 tensors: worker processes would only add overhead on 2 cores
        "data.augment=[hflip]", f"train.epochs={args.epochs}", "scheduler.name=cosine",
        "train.mixed_precision=no", "wandb.enabled=false", *args.extra,
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    per_seed = []
    start = time.perf_counter()
    for seed in args.seeds:
        run_dir = Path(args.runs_dir) / f"px{args.image_size}-e{args.epochs}-seed{seed}"
        cmd = [sys.executable, str(ROOT / "train.py"), "--config", "configs/baseline_cnn.yaml",
               f"seed={seed}", f"run_dir={run_dir}", *overrides]
        print("+", " ".join(cmd), flush=True)
        t = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"})
        summary = json.loads((run_dir / "summary.json").read_text())
        png = RESULTS / f"real_mri_confusion_val_seed{seed}.png"
        shutil.copyfile(run_dir / "confusion_val.png", png)
        per_seed.append({"seed": seed, "run_dir": str(run_dir), "wall_s": time.perf_counter() - t,
                         "best_epoch": summary["best_epoch"], "confusion_png": str(png.relative_to(ROOT)),
                         **{k: summary[k] for k in ("val/acc", "val/macro_f1", "val/ece", "val/auc", "val/loss")}})
        print(json.dumps(per_seed[-1]), flush=True)

    stats = {}
    for key in ("val/acc", "val/macro_f1", "val/ece", "val/auc"):
        v = np.array([r[key] for r in per_seed])
        stats[key] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
    split = json.loads((Path(per_seed[0]["run_dir"]) / "split.json").read_text())
    out = {"benchmark": "real_mri", "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
           "command": " ".join(sys.argv), "overrides": overrides, "image_size": args.image_size,
           "epochs": args.epochs, "split": {k: split[k] for k in ("train", "val", "test")},
           "total_wall_s": time.perf_counter() - start, "per_seed": per_seed, "stats": stats}
    (RESULTS / "real_mri.json").write_text(json.dumps(out, indent=2))
    for key, s in stats.items():
        print(f"{key}: {s['mean']:.4f} ± {s['std']:.4f}")


if __name__ == "__main__":
    main()
