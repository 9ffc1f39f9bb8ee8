"""The honest numbers: baseline CNN on the real scans with near-duplicate-grouped vs byte-grouped splits.

    python benchmarks/leakage_real.py                       # 3 seeds × {near, exact}, 64 px, 8 epochs
    python benchmarks/leakage_real.py --seeds 0 --epochs 3

The real set in ../shared/data has no Testing split, so one is held out here: every 5th file
name per class (as one would hold out "the last files"), linked into a scratch root as Testing/.
That hold-out is deliberately naive — it keeps near-duplicates and neighbouring slices on both
sides — so the per-band test accuracy shows what such a split inflates. Training then splits
train/val with ``data.group_by=near`` or ``exact``; val accuracy (the selection metric) and test
accuracy per band of similarity to the training images are aggregated over seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _common import DATA_ROOT, ROOT, machine, scratch_dir, write_result

BANDS = ("exact", "near_identical", "same_scan", "novel")


def held_out_root(src: Path) -> Path:
    root = Path(scratch_dir("brainmri-leakage-real"))
    for cls in sorted(p.name for p in (src / "Training").iterdir() if p.is_dir()):
        for k, f in enumerate(sorted((src / "Training" / cls).iterdir())):
            part = "Testing" if k % 5 == 0 else "Training"
            (root / part / cls).mkdir(parents=True, exist_ok=True)
            os.symlink(f.resolve(), root / part / cls / f.name)
    return root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--group-by", nargs="+", default=["near", "exact"])
    args = p.parse_args()
    root = held_out_root(DATA_ROOT)
    runs = Path(scratch_dir("brainmri-leakage-runs"))
    rows = []
    start = time.perf_counter()
    for group_by in args.group_by:
        for seed in args.seeds:
            run_dir = runs / f"{group_by}-seed{seed}"
            cmd = [sys.executable, str(ROOT / "train.py"), "--config", "configs/baseline_cnn.yaml", f"seed={seed}",
                   f"run_dir={run_dir}", f"data.root={root}", f"data.group_by={group_by}",
                   f"data.input_size={args.image_size}", "data.cache=decoded", "data.num_workers=0",
                   "data.augment=[hflip]", f"train.epochs={args.epochs}", "scheduler.name=cosine",
                   "train.mixed_precision=no", "wandb.enabled=false"]
            print("+", " ".join(cmd), flush=True)
            subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, "WANDB_MODE": "disabled"})
            s = json.loads((run_dir / "summary.json").read_text())
            split = json.loads((run_dir / "split.json").read_text())
            rows.append({"group_by": group_by, "seed": seed, "val_acc": s["val/acc"], "test_acc": s["test/acc"],
                         "val_bands": split["bands"]["val"],
                         **{f"test_{b}_acc": s.get(f"test/band/{b}/acc") for b in BANDS},
                         **{f"test_{b}_n": s.get(f"test/band/{b}/n") for b in BANDS}})
            print(json.dumps(rows[-1]), flush=True)
    stats = {}
    for group_by in args.group_by:
        mine = [r for r in rows if r["group_by"] == group_by]
        stats[group_by] = {k: {"mean": float(np.mean([r[k] for r in mine if r[k] is not None])),
                               "std": float(np.std([r[k] for r in mine if r[k] is not None], ddof=1))
                               if len(mine) > 1 else 0.0}
                           for k in ["val_acc", "test_acc", *[f"test_{b}_acc" for b in BANDS]]
                           if any(r[k] is not None for r in mine)}
    write_result("leakage_real", {"machine": machine(), "command": " ".join(sys.argv), "image_size": args.image_size,
                                  "epochs": args.epochs, "wall_s": time.perf_counter() - start,
                                  "rows": rows, "stats": stats})
    for group_by, st in stats.items():
        print(group_by, {k: f"{v['mean']:.3f}±{v['std']:.3f}" for k, v in st.items()})


if __name__ == "__main__":
    main()
