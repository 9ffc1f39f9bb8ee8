"""Benchmark: the HTML report of a 1,000-run sweep (targets: < 15 s, file < 5 MB).

Writes 1,000 synthetic run directories once (4 recipes x 5 learning rates x 50 seeds; config.yaml,
metrics.jsonl with 10 epochs, status.json, summary.json with per-class and per-band metrics,
predictions_test.csv with 200 images and probabilities, as the engine writes them) under
/tmp/brainmri-bench-report, then times collect + compare + the HTML report in this process
(median of 3) and records the file size in benchmarks/results/report_scale.json.

    python benchmarks/report_scale.py [--runs 1000] [--images 200]
    # the whole process, as a user runs it:
    /usr/bin/time -v python launch/collect.py /tmp/brainmri-bench-report --format md --out /tmp/t.md --html /tmp/r.html
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import summary, timed, write_result  # noqa: E402

CACHE = Path("/tmp/brainmri-bench-report")
CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]
RECIPES = {"baseline_cnn": 0.80, "resnet50_feature": 0.85, "resnet50_finetune": 0.92, "resnet152_ranger": 0.90}
LRS = [1e-3, 3e-4, 1e-4, 3e-5, 1e-5]
BANDS = ["exact", "near_identical", "same_scan", "novel"]


def _split_metrics(split: str, acc: float, rng) -> dict:
    out = {f"{split}/acc": acc, f"{split}/loss": 1.2 - acc, f"{split}/macro_f1": acc - 0.02,
           f"{split}/auc": min(1.0, acc + 0.06), f"{split}/ece": 0.03 + 0.02 * rng.random(), f"{split}/n": 200}
    for c in CLASSES:
        r = float(np.clip(acc + rng.normal(0, 0.03), 0, 1))
        out.update({f"{split}/recall/{c}": r, f"{split}/precision/{c}": r, f"{split}/f1/{c}": r,
                    f"{split}/support/{c}": 50, f"{split}/acc/{c}": r})
    for b, n in zip(BANDS, (20, 40, 60, 80), strict=True):
        out.update({f"{split}/band/{b}/n": n,
                    f"{split}/band/{b}/acc": float(np.clip(acc + 0.05 - 0.03 * BANDS.index(b), 0, 1))})
    return out


def generate(n_runs: int, n_images: int) -> Path:
    root = CACHE / f"r{n_runs}-i{n_images}"
    if (root / ".complete").exists():
        return root
    rng = np.random.default_rng(0)
    labels = np.arange(n_images) % len(CLASSES)
    paths = [f"/data/brain-mri/Testing/{CLASSES[y]}/img{i:04d}.jpg" for i, y in enumerate(labels)]
    bands = [BANDS[i % len(BANDS)] for i in range(n_images)]
    grid = [(r, lr, s) for s in range(n_runs // (len(RECIPES) * len(LRS)) + 1) for r in RECIPES for lr in LRS][:n_runs]
    for recipe, lr, seed in grid:
        d = root / "runs" / f"{recipe}-lr{lr}-s{seed}"
        d.mkdir(parents=True, exist_ok=True)
        quality = RECIPES[recipe] - 0.04 * abs(np.log10(lr) + 3.5)
        config = {"recipe": recipe, "seed": seed, "run_dir": str(d), "optim": {"name": "adam", "lr": lr},
                  "data": {"image_size": 224, "batch_size": 32}, "train": {"epochs": 10, "monitor": "val/acc"},
                  "wandb": {"group": "bench", "tags": []}}
        (d / "config.yaml").write_text(yaml.safe_dump(config))
        rows = []
        for e in range(1, 11):
            a = float(quality - 0.3 / e + rng.normal(0, 0.01))
            rows.append({"epoch": e, "phase": "train", "step": 10 * e, "lr": lr, "train/loss": 1.5 / e,
                         "train/acc": a + 0.02, "val/loss": 1.6 / e, "val/acc": a, "val/macro_f1": a - 0.02,
                         "val/auc": min(1.0, a + 0.06), "val/ece": 0.05, "time/epoch_s": 30.0,
                         "throughput/images_per_s": 400.0})
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        val_acc = max(r["val/acc"] for r in rows)
        test_acc = float(np.clip(val_acc + rng.normal(0, 0.01), 0, 1))
        correct = rng.random(n_images) < test_acc
        pred = np.where(correct, labels, (labels + 1 + rng.integers(0, 3, n_images)) % len(CLASSES))
        probs = rng.dirichlet(np.ones(len(CLASSES)), n_images) * 0.4
        probs[np.arange(n_images), pred] += 0.6
        lines = ["index,path,sha1,label,pred," + ",".join(f"prob_{c}" for c in CLASSES) + ",band"]
        lines += [f"{k},{paths[k]},x,{CLASSES[labels[k]]},{CLASSES[pred[k]]},"
                  + ",".join(f"{p:.6f}" for p in probs[k]) + f",{bands[k]}" for k in range(n_images)]
        (d / "predictions_test.csv").write_text("\n".join(lines) + "\n")
        summ = {"status": "finished", "run_id": d.name, "recipe": recipe, "seed": seed, "classes": CLASSES,
                "monitor": "val/acc", "best_epoch": 10, "config": config,
                **_split_metrics("val", val_acc, rng), **_split_metrics("test", test_acc, rng)}
        (d / "summary.json").write_text(json.dumps(summ))
        (d / "status.json").write_text(json.dumps({"status": "finished", "epoch": 10, "error": None}))
    (root / ".complete").write_text(str(len(grid)))
    return root


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--images", type=int, default=200, help="test images per run (predictions_test.csv rows)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    t0 = time.perf_counter()
    root = generate(args.runs, args.images)
    gen_s = time.perf_counter() - t0

    from brainmri.results.collect import collect_runs, compare
    from brainmri.results.report_html import write_html

    out = CACHE / "report.html"
    state = {}

    def once():
        runs = collect_runs([root])
        cmp = compare(runs)
        write_html(cmp, out)
        state.update(runs=len(runs), recipes=len(cmp.recipes), incomplete=len(cmp.incomplete))

    once()  # warm-up: imports, plotly bundle compression (cached per process), file cache
    times = [timed(once) for _ in range(args.repeats)]
    write_result("report_scale", {
        "runs": state["runs"], "recipes": state["recipes"], "incomplete": state["incomplete"],
        "test_images_per_run": args.images, "html_bytes": out.stat().st_size,
        "html_mb": round(out.stat().st_size / 1e6, 2),
        "targets": {"seconds": 15, "mb": 5}, "generation_s_this_call": round(gen_s, 1),
        "collect_compare_html_in_process": summary(times)})


if __name__ == "__main__":
    main()
