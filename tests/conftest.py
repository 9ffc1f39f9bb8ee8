"""Shared fixtures: tiny synthetic data sets, isolated caches, and a helper to run train.py."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data" / "brain-tumor-mri" / "Training"

# Offline W&B and a private cache for every test process (and the processes they start).
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ.setdefault("BRAINMRI_CACHE", str(Path(os.environ.get("TMPDIR", "/tmp")) / f"brainmri-test-cache-{os.getpid()}"))
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Small and fast: every recipe trains on these in seconds on a 2-core CPU.
TINY = [
    "data.input_size=32",
    "data.batch_size=8",
    "data.num_workers=0",
    "train.mixed_precision=no",
]


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory) -> Path:
    """A small synthetic data set (Training + Testing) shared by the whole session (read-only)."""
    from brainmri.phantoms import generate_phantoms

    root = tmp_path_factory.mktemp("phantoms") / "data"
    generate_phantoms(root, n_per_class=12, n_test_per_class=4, image_size=64, seed=0)
    return root


@pytest.fixture
def data_copy(phantom_root, tmp_path) -> Path:
    """A private, writable copy of the phantom set for tests that damage it."""
    dst = tmp_path / "data"
    shutil.copytree(phantom_root, dst)
    return dst


def run_train(*args: str, launcher: list[str] | None = None, check: bool = True, timeout: int = 600,
              env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``train.py`` in a fresh process (as a user would), optionally under ``accelerate launch``."""
    cmd = (launcher or [sys.executable]) + [str(ROOT / "train.py"), *args]
    env = {**(env or {}), **({"ACCELERATE_USE_CPU": "1"} if launcher else {})}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **env})
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n--- stderr ---\n{proc.stderr[-4000:]}")
    return proc


def accelerate_cpu(num_processes: int) -> list[str]:
    """``accelerate launch`` with real gloo processes on CPU and a free port (never 29500)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
            str(num_processes), "--num_machines", "1", "--main_process_port", "0",
            "--mixed_precision", "no", "--dynamo_backend", "no"]


# ------------------------------------------------------------------ shared factories
def make_samples(root, n: int = 8, seed: int = 0) -> list:
    """Tiny JPEG/PNG files of mixed size and colour mode, as ``brainmri.data.Sample`` rows."""
    from brainmri.data import Sample

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(n):
        side = 40 + 3 * i
        arr = rng.integers(0, 256, (side, side + 5, 3) if i % 2 else (side, side), dtype=np.uint8)
        path = root / f"img{i}.{'jpg' if i % 3 else 'png'}"
        Image.fromarray(arr).save(path)
        samples.append(Sample(str(path), i % 4, hashlib.sha1(path.read_bytes()).hexdigest()))
    return samples


CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]


def make_run(root, recipe, seed, lr, val_acc, test_acc=None, status="finished", wandb_id=None, preds=None,
             epochs=3):
    """A run dir laid out per CONTRACT.md; metrics derived from val_acc/test_acc so they differ per metric."""
    d = Path(root) / f"{recipe}-lr{lr}-s{seed}"
    d.mkdir(parents=True)
    config = {"recipe": recipe, "seed": seed, "run_dir": str(d), "optim": {"name": "adam", "lr": lr},
              "wandb": {"enabled": True, "group": "g", "tags": []}}
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
               **run_metrics("val", val_acc)}
    if test_acc is not None:
        summary.update(run_metrics("test", test_acc))
    (d / "summary.json").write_text(json.dumps(summary))
    if preds is not None:
        labels, pred = preds
        pd.DataFrame({"index": range(len(labels)), "path": [f"img{i}.jpg" for i in range(len(labels))],
                      "sha1": "x", "label": labels, "pred": pred}).to_csv(d / "predictions_test.csv", index=False)
    return d


def run_metrics(split, acc):
    out = {f"{split}/acc": acc, f"{split}/macro_f1": acc - 0.02, f"{split}/auc": min(1.0, acc + 0.05),
           f"{split}/ece": 1 - acc, f"{split}/loss": 2 - acc}
    out.update({f"{split}/recall/{c}": acc - 0.01 * i for i, c in enumerate(CLASSES)})
    return out
