"""brainmri run directories laid out per the run-dir contract, for tests of the collector and the reports."""

import json
from pathlib import Path

import pandas as pd
import yaml

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]


def make_run(root, recipe, seed, lr, val_acc, test_acc=None, status="finished", wandb_id=None, preds=None,
             epochs=3, fold=None, folds=None, data=None, val_n=None, extra=None):
    """A run dir laid out per CONTRACT.md; metrics derived from val_acc/test_acc so they differ per metric.

    ``fold``/``folds``: a K-fold run (config data.fold / data.folds); ``data``: the digest of the data it
    was trained on (``summary.json["data_manifest"]``, as the engine writes Split.record()["manifest"]);
    ``val_n``: its validation images; ``extra``: more summary keys."""
    d = Path(root) / (f"{recipe}-lr{lr}-s{seed}" + (f"-f{fold}" if fold is not None else ""))
    d.mkdir(parents=True)
    config = {"recipe": recipe, "seed": seed, "run_dir": str(d), "optim": {"name": "adam", "lr": lr},
              "wandb": {"enabled": True, "group": "g", "tags": []}}
    if folds is not None:
        config["data"] = {"folds": folds, "fold": fold, "split_seed": 0, "group_by": "near"}
    (d / "config.yaml").write_text(yaml.safe_dump(config))
    rows = [{"epoch": e, "phase": "main", "step": e, "lr": lr, "train/loss": 1 / e, "train/acc": 0.5,
             "val/loss": 1 / e, "val/acc": val_acc - 0.1 * (epochs - e), "val/macro_f1": 0.5, "val/auc": 0.5,
             "val/ece": 0.1, "time/epoch_s": 1.0, "throughput/images_per_s": 10.0} for e in range(1, epochs + 1)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "status.json").write_text(json.dumps({"status": status, "error": None if status != "failed" else "boom",
                                               "epoch": epochs}))
    if status != "finished":
        return d
    summary = {"status": "finished", "run_id": d.name, "recipe": recipe, "seed": seed, "wandb_id": wandb_id,
               "classes": CLASSES, "best_epoch": epochs, "monitor": "val/acc", "config": config,
               **_metrics("val", val_acc)}
    if test_acc is not None:
        summary.update(_metrics("test", test_acc))
    if data is not None:
        part = f"fold{fold}" if fold is not None else "split"
        summary["data_manifest"] = {"train": f"train-{part}", "val": f"val-{part}", "test": "test",
                                    "all": f"all-{part}", "data": data}
    if val_n is not None:
        summary["val/n"] = val_n
    summary.update(extra or {})
    (d / "summary.json").write_text(json.dumps(summary))
    if preds is not None:
        labels, pred = preds
        pd.DataFrame({"index": range(len(labels)), "path": [f"img{i}.jpg" for i in range(len(labels))],
                      "sha1": "x", "label": labels, "pred": pred}).to_csv(d / "predictions_test.csv", index=False)
    return d


def _metrics(split, acc):
    out = {f"{split}/acc": acc, f"{split}/macro_f1": acc - 0.02, f"{split}/auc": min(1.0, acc + 0.05),
           f"{split}/ece": 1 - acc, f"{split}/loss": 2 - acc}
    out.update({f"{split}/recall/{c}": acc - 0.01 * i for i, c in enumerate(CLASSES)})
    return out


def make_grid(root, recipes: dict[str, float], best_lr: float, rng_seed: int) -> None:
    """Two seeds x two LRs per recipe (name -> test accuracy level), the ``best_lr`` a little better on
    validation, with test predictions on 40 shared images so the paired tests have something to pair."""
    import numpy as np

    rng = np.random.default_rng(rng_seed)
    labels = rng.integers(0, 4, 40)
    for recipe, acc in recipes.items():
        for seed in (0, 1):
            for lr in (1e-3, 3e-4):
                pred = np.where(rng.random(40) < acc, labels, (labels + 1) % 4)
                make_run(root, recipe, seed, lr, acc + (0.05 if lr == best_lr else 0) + 0.01 * seed,
                         test_acc=float((pred == labels).mean()), preds=(labels, pred))
