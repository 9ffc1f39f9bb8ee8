"""The from-scratch recipe on the real scans: an ablation on validation, then seeds, by band.

    python benchmarks/scratch_real.py train --runs full no_crop no_aug no_mix no_ls --epochs 12
    python benchmarks/scratch_real.py train --runs full@1 full@2 --epochs 12     # more seeds of one variant
    python benchmarks/scratch_real.py report                                     # tables, CAM, JSON
    python benchmarks/scratch_real.py train --runs full@0 full@1 full@2 --epochs 30 --workers 1   # the full schedule
    python benchmarks/scratch_real.py report --chosen full-e30

``configs/resnet_scratch.yaml`` (timm resnet10t from random weights, 128 px, grey input) trained with
``train.py`` on an honest hold-out of the real Training images: the images are grouped by
near-duplicates and one grouped, stratified fifth is held out as Testing (``cv_real.held_out_root``,
the same hold-out as the cross-validation benchmark), so no test image has an exact or near-identical
copy in training. The engine's own grouped split (``data.group_by: near``) takes validation from the
rest. Each variant drops one part of the recipe (leave-one-out); the defaults are chosen on the
validation accuracy of these runs, and only then is the test part read.

``report`` reads every run's summary (validation, test, test by band), evaluates the full recipe's
runs once more without test-time augmentation (``brainmri.use.external.evaluate_run``) and without
its EMA weights (validation, from the summary), and measures where Grad-CAM's energy lies (share inside
the brain: ``brainmri.use.explain.brain_energy``) on the test images for the recipe with and without
the head crop and zeroed background. Results: ``benchmarks/results/scratch_real.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _common import ROOT, machine, write_result
from cv_real import DATA, held_out_root

WORK = ROOT / "runs" / "benchmarks" / "scratch_real"
CONFIG = ROOT / "configs" / "resnet_scratch.yaml"
BANDS = ("same_scan", "novel")
# leave-one-out variants of configs/resnet_scratch.yaml
VARIANTS = {
    "full": [],
    "no_crop": ["data.crop=none", "data.background=keep"],
    "no_aug": ["data.augment=[hflip]"],
    "no_mix": ["train.mixup=0", "train.cutmix=0"],
    "no_ls": ["train.label_smoothing=0"],
    "no_ema": ["train.ema=null"],
    "plain": ["data.crop=none", "data.background=keep", "data.augment=[hflip]", "train.mixup=0", "train.cutmix=0",
              "train.label_smoothing=0", "train.ema=null", "eval.tta=[]"],
}


def run_name(spec: str, epochs: int = 12) -> tuple[str, str, int]:
    """``no_mix@2`` → (run folder, variant, seed); no ``@``: seed 0. Runs of another length than the
    ablation's 12 epochs are named apart (``full-e30-s0``; summarise them with ``--chosen full-e30``)."""
    variant, _, seed = spec.partition("@")
    if variant not in VARIANTS:
        raise SystemExit(f"unknown run {spec!r}: one of {', '.join(VARIANTS)} (optionally @seed)")
    seed = int(seed or 0)
    length = "" if epochs == 12 else f"-e{epochs}"
    return f"{variant}{length}-s{seed}", variant, seed


def train(args) -> None:
    data_root = WORK / "data"
    if not (WORK / "holdout.json").is_file():
        WORK.mkdir(parents=True, exist_ok=True)
        info = held_out_root(DATA, data_root)
        (WORK / "holdout.json").write_text(json.dumps(info, indent=2))
    env = {**os.environ, "WANDB_MODE": "disabled"}
    for spec in args.runs:
        name, variant, seed = run_name(spec, args.epochs)
        run = WORK / "runs" / name
        if (run / "summary.json").is_file():
            print(f"{name}: finished already", flush=True)
            continue
        if (run / "checkpoints").is_dir() and any((run / "checkpoints").iterdir()):
            cmd = [sys.executable, "train.py", "--resume", str(run)]  # an interrupted run goes on exactly
        else:
            cmd = [sys.executable, "train.py", "--config", str(CONFIG), f"data.root={data_root}", f"seed={seed}",
                   f"train.epochs={args.epochs}", f"data.num_workers={args.workers}", "wandb.enabled=false",
                   "train.checkpoint_every_min=5", f"run_dir={run}", *VARIANTS[variant]]
        print("+", " ".join(cmd), flush=True)
        t, before = time.perf_counter(), os.times()
        subprocess.run(cmd, cwd=ROOT, check=True, env=env)
        after = os.times()
        times = {"wall_s": time.perf_counter() - t,
                 "cpu_s": (after.children_user + after.children_system)
                 - (before.children_user + before.children_system)}
        (run / "bench_time.json").write_text(json.dumps({**times, "machine": machine()}))
        print(name, times, flush=True)


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def _row(run: Path) -> dict:
    s = _summary(run)
    row = {"run": run.name, "val_acc": s.get("val/acc"), "test_acc": s.get("test/acc"),
           "test_macro_f1": s.get("test/macro_f1"), "best_epoch": s.get("best_epoch"),
           "weights": s.get("best_weights")}
    # the best validation accuracy over the epochs of the raw weights (what a run without EMA keeps) and of
    # the EMA weights: EMA does not change the raw weights' trajectory, so this is its ablation on validation
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"epoch"' in line]
    row["val_acc_raw"] = max((e["val/acc"] for e in epochs if "val/acc" in e), default=None)
    row["val_acc_ema"] = max((e["val_ema/acc"] for e in epochs if "val_ema/acc" in e), default=None)
    row["images_per_s"] = s.get("images_per_s")
    for band in BANDS:
        row[f"{band}_acc"] = s.get(f"test/band/{band}/acc")
        row[f"{band}_n"] = s.get(f"test/band/{band}/n")
    bench = run / "bench_time.json"
    if bench.is_file():
        row.update({k: json.loads(bench.read_text())[k] for k in ("wall_s", "cpu_s")})
    return row


def without_tta(run: Path) -> dict:
    """Test metrics of ``run``'s best checkpoint with ``eval.tta`` off (same images, same bands)."""
    from brainmri.use.external import evaluate_run
    from brainmri.use.trained import TrainedRun

    trained = TrainedRun.load(run)
    trained.cfg = dataclasses.replace(trained.cfg, eval=dataclasses.replace(trained.cfg.eval, tta=()))
    out = WORK / "no_tta" / run.name
    values = evaluate_run(run, WORK / "data", out=out, trained=trained)
    return {k: v for k, v in values.items() if k.endswith("/acc") or k.endswith("/n")}


def cam_energy(run: Path, limit: int) -> dict:
    """Share of Grad-CAM energy (true class) inside the brain of each model input, over test images."""
    import torch

    from brainmri.use.explain import brain_energy, cam_maps
    from brainmri.use.trained import TrainedRun

    trained = TrainedRun.load(run)
    shares, per_class = [], {}
    for cls in trained.classes:
        if cls == "notumor":
            continue
        files = sorted((WORK / "data" / "Testing" / cls).iterdir())[:limit]
        raw = torch.stack([trained.decoder(p) for p in files])
        maps = cam_maps(trained.model, trained.normalize(raw), [trained.classes.index(cls)] * len(files))
        grey = raw[:, 0].numpy()
        values = [brain_energy(m, g) for m, g in zip(maps, grey, strict=True)]
        per_class[cls] = float(np.nanmean(values))
        shares += values
    return {"mean": float(np.nanmean(shares)), "median": float(np.nanmedian(shares)), "n": len(shares),
            "by_class": per_class}


def report(args) -> None:
    runs = sorted(p.parent for p in (WORK / "runs").glob("*/summary.json"))
    rows = [_row(r) for r in runs]
    result = {"holdout": json.loads((WORK / "holdout.json").read_text()), "runs": rows}
    chosen_runs = [r for r in runs if r.name.startswith(f"{args.chosen}-s")]
    result["full_without_tta"] = {r.name: without_tta(r) for r in chosen_runs}
    result["cam_brain_energy"] = {r.name: cam_energy(r, args.cam_images)
                                  for r in runs if r.name in ("full-s0", "no_crop-s0", "plain-s0")}
    chosen = [r for r in rows if r["run"].startswith(f"{args.chosen}-s")]
    if len(chosen) > 1:
        result["seeds"] = {"variant": args.chosen, "runs": [r["run"] for r in chosen],
                           **{k: _spread([r[k] for r in chosen]) for k in
                              ("val_acc", "test_acc", "test_macro_f1", "same_scan_acc", "novel_acc")}}
    # the 12-epoch ablation is scratch_real.json; runs of another length go beside it (scratch_real_full-e30.json)
    write_result("scratch_real" + ("" if "-e" not in args.chosen else f"_{args.chosen}"), result)
    print("| run | val acc (kept) | val raw | val EMA | kept | best epoch | test acc | same-scan acc (n) "
          "| novel acc (n) | wall |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        f = lambda v: "–" if v is None else f"{v:.4f}"  # noqa: E731
        print(f"| {r['run']} | {f(r['val_acc'])} | {f(r['val_acc_raw'])} | {f(r['val_acc_ema'])} | {r['weights']} "
              f"| {r['best_epoch']} | {f(r['test_acc'])} | {f(r['same_scan_acc'])} ({r['same_scan_n']}) "
              f"| {f(r['novel_acc'])} ({r['novel_n']}) | {r.get('wall_s', 0) / 60:.1f} min |")
    if "seeds" in result:
        print(json.dumps(result["seeds"], indent=1))
    print(json.dumps({"without_tta": result["full_without_tta"], "cam": result["cam_brain_energy"]}, indent=1))


def _spread(values: list) -> dict:
    x = np.asarray([v for v in values if v is not None], dtype=float)
    return {"values": [round(float(v), 4) for v in x], "mean": float(x.mean()),
            "std": float(x.std(ddof=1)) if len(x) > 1 else 0.0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=("train", "report"))
    p.add_argument("--runs", nargs="+", default=["full", "no_crop", "no_aug", "no_mix", "no_ls"],
                   help="variant[@seed] ... (" + ", ".join(VARIANTS) + ")")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--cam-images", type=int, default=60, help="test images per tumour class for Grad-CAM")
    p.add_argument("--chosen", default="full", help="the variant whose seeds are summarised (mean ± std)")
    args = p.parse_args()
    train(args) if args.stage == "train" else report(args)


if __name__ == "__main__":
    main()
