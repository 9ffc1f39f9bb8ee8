"""5 folds × 1 seed against 1 split × 5 seeds on the real scans; fold ensembles; label issues.

    python benchmarks/cv_real.py train            # build the hold-out, run both sweeps (--cluster debug)
    python benchmarks/cv_real.py report           # collect, ensembles by band, label issues, JSON
    python benchmarks/cv_real.py train --epochs 2 --image-size 32     # a quick rehearsal

The shared set has no Testing split, so one is held out here honestly: the Training images are
grouped by near-duplicates (``brainmri.data.leakage.group_keys``, ``near``) and
``StratifiedGroupKFold(5)`` keeps one fold (≈ 20 %, stratified by class, no group straddling)
as Testing; the rest, linked into ``<work>/data/Training``, is the training pool. Two sweeps of the
baseline CNN (64 px, a short cosine schedule, hflip) run one task after the other in this process's
child (``launch/sweep.py --cluster debug``): ``cv5`` (``folds: 5``, seed 0) and ``seeds5`` (one
grouped train/val split, seeds 0–4). ``report`` collects each sweep (the collector's ensemble row
and label issues), compares the spread of the validation estimate and of the novel-band test
accuracy, the 5-model ensemble against the mean single model by band, and writes
``benchmarks/results/cv_real.json``.
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

from _common import DATA_ROOT, ROOT, machine, write_result

WORK = ROOT / "runs" / "benchmarks" / "cv_real"
# the real set sits beside the checkout (or beside its parent, for a worktree under wt/)
DATA = next((d for d in (DATA_ROOT, ROOT.parent.parent / "shared" / "data" / "brain-tumor-mri")
             if (d / "Training").is_dir()), DATA_ROOT)
BANDS = ("exact", "near_identical", "same_scan", "novel")


def held_out_root(src: Path, dest: Path, seed: int = 0) -> dict:
    """Link Training into ``dest/Training`` (80 %) and ``dest/Testing`` (20 %), grouped by near-duplicates."""
    from sklearn.model_selection import StratifiedGroupKFold

    from brainmri.data.files import scan_folder
    from brainmri.data.leakage import fingerprints, group_keys

    classes, samples, skipped = scan_folder(src / "Training", None)
    fp = fingerprints([s.path for s in samples])
    keys = group_keys(fp, [s.sha1 for s in samples], "near")
    cv = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=seed)
    _, test_idx = next(cv.split(np.zeros(len(samples)), [s.label for s in samples], keys))
    test = set(test_idx.tolist())
    counts = {"Training": {c: 0 for c in classes}, "Testing": {c: 0 for c in classes}}
    for i, s in enumerate(samples):
        part = "Testing" if i in test else "Training"
        cls = classes[s.label]
        folder = dest / part / cls
        folder.mkdir(parents=True, exist_ok=True)
        link = folder / Path(s.path).name
        if not link.exists():
            os.symlink(Path(s.path).resolve(), link)
        counts[part][cls] += 1
    straddling = len({keys[i] for i in test} & {keys[i] for i in range(len(samples)) if i not in test})
    return {"counts": counts, "groups": len(set(keys)), "groups_straddling": straddling, "skipped": len(skipped)}


def sweep_yaml(name: str, data_root: Path, args, folds: int | None, seeds: list[int]) -> Path:
    lines = [f"name: {name}", "recipes: [baseline_cnn]", f"seeds: {seeds}"]
    if folds:
        lines.append(f"folds: {folds}")
    lines += ["overrides:", f"  data.root: {json.dumps(str(data_root))}", f"  data.input_size: {args.image_size}",
              "  data.group_by: near", "  data.split_seed: 0", "  data.num_workers: 0", "  data.cache: decoded",
              "  data.augment: [hflip]", f"  train.epochs: {args.epochs}", "  scheduler.name: cosine",
              "  train.mixed_precision: 'no'", "  wandb.enabled: false", "slurm:", "  array_parallelism: 1"]
    path = WORK / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def train(args) -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    data_root = WORK / "data"
    info = held_out_root(DATA, data_root)
    (WORK / "holdout.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info), flush=True)
    env = {**os.environ, "WANDB_MODE": "disabled"}
    walls = {}
    for name, folds, seeds in (("cv5", 5, [0]), ("seeds5", None, [0, 1, 2, 3, 4])):
        cfg = sweep_yaml(name, data_root, args, folds, seeds)
        cmd = [sys.executable, str(ROOT / "launch" / "sweep.py"), "--config", str(cfg), "--cluster", "debug",
               "--sweeps-root", str(WORK / "sweeps")]
        print("+", " ".join(cmd), flush=True)
        t = time.perf_counter()
        cpu = os.times()
        subprocess.run(cmd, cwd=ROOT, check=True, env=env)
        after = os.times()
        walls[name] = {"wall_s": time.perf_counter() - t,
                       "cpu_s": (after.children_user + after.children_system) - (cpu.children_user + cpu.children_system)}
        print(name, walls[name], flush=True)
    (WORK / "train_times.json").write_text(json.dumps({"epochs": args.epochs, "image_size": args.image_size,
                                                       "sweeps": walls, "machine": machine()}, indent=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=("train", "report"))
    p.add_argument("--epochs", type=int, default=7)
    p.add_argument("--image-size", type=int, default=64)
    args = p.parse_args()
    if args.stage == "train":
        train(args)
    else:
        report(args)


def report(args) -> None:  # filled in below once the collector has ensembles and label issues
    raise SystemExit("report: not written yet")


if __name__ == "__main__":
    main()
