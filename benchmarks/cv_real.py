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
import pandas as pd

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
                       "cpu_s": (after.children_user + after.children_system)
                       - (cpu.children_user + cpu.children_system)}
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


def _spread(values: list[float]) -> dict:
    x = np.asarray([v for v in values if v is not None], dtype=float)
    return {"values": [round(float(v), 4) for v in x], "mean": float(x.mean()),
            "std": float(x.std(ddof=1)) if len(x) > 1 else 0.0, "min": float(x.min()), "max": float(x.max())}


def _sweep_result(name: str) -> tuple[dict, object]:
    from brainmri.results.collect import (
        collect_runs,
        compare,
        ensemble_predictions,
        load_predictions,
        selection_stats,
    )

    cmp = compare(collect_runs([WORK / "sweeps" / name / "runs"]))
    (rr,) = cmp.recipes
    sel = selection_stats(rr)
    out = {"replicates": [list(r.replicate) for r in rr.runs], "folds": rr.folds, "rho": rr.rho,
           "val_estimate": {"mean": sel.mean, "std": sel.std, "ci95": [sel.ci_low, sel.ci_high],
                            "per_replicate": _spread([r.summary["val/acc"] for r in rr.runs])},
           "test_acc": _spread([r.summary["test/acc"] for r in rr.runs]),
           "ci95_test_acc": [rr.stats["acc"].ci_low, rr.stats["acc"].ci_high],
           "novel_acc": _spread([r.summary.get("test/band/novel/acc") for r in rr.runs]),
           "ci95_novel_acc": [rr.stats["band/novel/acc"].ci_low, rr.stats["band/novel/acc"].ci_high],
           "best_epochs": [r.summary.get("best_epoch") for r in rr.runs]}
    ens = rr.ensemble.metrics
    rows = []
    for band in ("all", *BANDS):
        pre = "test/" if band == "all" else f"test/band/{band}/"
        single = [r.summary.get(f"{pre}acc") for r in rr.runs]
        if ens.get(f"{pre}acc") is None and not any(v is not None for v in single):
            continue
        rows.append({"band": band, "n_ensemble": ens.get(f"{pre}n"),
                     "n_single": sorted({r.summary.get(f"{pre}n") for r in rr.runs}),
                     "single_acc": _spread(single), "ensemble_acc": ens.get(f"{pre}acc")})
    out["ensemble_by_band"] = rows
    # the same images per band for both: the ensemble's bands (nearest image among all members' training
    # images); each member's accuracy on them, so the comparison is paired image by image
    frame, _ = ensemble_predictions(rr.runs)
    bands = frame.set_index("path")["band"].fillna("novel")
    paired = []
    for band in ("all", *BANDS):
        paths = bands.index if band == "all" else bands.index[bands == band]
        if not len(paths):
            continue
        single = []
        for r in rr.runs:
            f = load_predictions(r).set_index("path").loc[paths]
            single.append(float((f["pred"] == f["label"]).mean()))
        e = frame.set_index("path").loc[paths]
        paired.append({"band": band, "n": len(paths), "single_acc": _spread(single),
                       "ensemble_acc": float((e["pred"] == e["label"]).mean())})
    out["ensemble_vs_single_same_images"] = paired
    out["ensemble_overall"] = {k: ens.get(f"test/{k}") for k in ("acc", "macro_f1", "auc", "ece", "loss")}
    out["single_overall"] = {k: rr.stats[k].mean for k in ("acc", "macro_f1", "auc", "ece", "loss") if k in rr.stats}
    return out, cmp


def report(args) -> None:
    from brainmri.results.label_issues import (
        contact_sheet,
        label_issues,
        out_of_fold,
        write_label_issues,
    )

    result = {"holdout": json.loads((WORK / "holdout.json").read_text()),
              "train": json.loads((WORK / "train_times.json").read_text())
              if (WORK / "train_times.json").is_file() else None}
    cmps = {}
    for name in ("cv5", "seeds5"):
        if not list((WORK / "sweeps" / name).glob("runs/*/summary.json")):
            print(f"{name}: no finished run yet", flush=True)
            continue
        result[name], cmps[name] = _sweep_result(name)
    files, lines = write_label_issues(cmps["cv5"], WORK / "label_issues")
    issues = pd.read_csv(files[0])
    rr = cmps["cv5"].recipes[0]
    oof = out_of_fold(rr.runs)
    ranked = label_issues(oof)
    top = ranked.head(24)
    (WORK / "label_issues_top24.html").write_text(
        contact_sheet([("baseline_cnn (64 px, 5 epochs), 5 folds × 1 seed: the top 24", ranked, oof.root)], 24))
    result["label_issues"] = {"pool": len(issues), "flagged": int(issues["is_issue"].sum()),
                              "flagged_by_given_label": issues[issues["is_issue"]]["label"].value_counts().to_dict(),
                              "flagged_given_to_suggested": issues[issues["is_issue"]].groupby(["label", "suggested"])
                              .size().rename("n").reset_index().to_dict("records"),
                              "top24": top[["rank", "path", "label", "suggested", "prob_label", "prob_suggested",
                                            "group"]].to_dict("records"),
                              "files": [str(f) for f in files], "lines": lines}
    write_result("cv_real", result)
    for name in (n for n in ("cv5", "seeds5") if n in result):
        r = result[name]
        print(name, "val", f"{r['val_estimate']['mean']:.4f} ± {r['val_estimate']['std']:.4f}",
              "test", f"{r['test_acc']['mean']:.4f} ± {r['test_acc']['std']:.4f}",
              "novel", f"{r['novel_acc']['mean']:.4f} ± {r['novel_acc']['std']:.4f}",
              "ensemble vs single (same images)", {b["band"]: (b["n"], round(b["ensemble_acc"], 4),
                                                                round(b["single_acc"]["mean"], 4))
                                                     for b in r["ensemble_vs_single_same_images"]})
    print(result["label_issues"]["flagged"], "of", result["label_issues"]["pool"], "flagged")


if __name__ == "__main__":
    main()
