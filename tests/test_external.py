"""launch/evaluate.py: a saved run on another data root, through training's own evaluation path."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT

from brainmri.results.metrics import classification_metrics

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]


@pytest.fixture(scope="module")
def trained(trained_run):
    return trained_run


def evaluate(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "launch" / "evaluate.py"), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env=os.environ)


def digests(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "wandb" not in p.parts}


def rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_the_runs_own_test_set_gives_its_test_metrics_and_files(trained, phantom_root):
    before = digests(trained)
    proc = evaluate(trained, "--data", phantom_root)
    assert proc.returncode == 0, proc.stderr
    out = trained / "eval" / phantom_root.name
    assert digests(trained) == {**before, **{k: v for k, v in digests(trained).items() if k.startswith("eval/")}}
    run, ext = json.loads((trained / "summary.json").read_text()), json.loads((out / "summary.json").read_text())
    test_keys = [k for k in run if k.startswith("test/")]
    assert len(test_keys) > 20 and any("/band/" in k for k in test_keys)
    for k in test_keys:  # the same numbers, band metrics included: one evaluation path
        assert ext[k] == pytest.approx(run[k], abs=1e-9, nan_ok=True), k
    ours, theirs = rows(out / "predictions_test.csv"), rows(trained / "predictions_test.csv")
    assert [{k: v for k, v in r.items() if k != "similarity"} for r in ours] == \
           [{k: v for k, v in r.items() if k != "similarity"} for r in theirs]
    assert (out / "confusion_test.png").stat().st_size > 1000
    # the evaluation folder inside the run is no run of its own for the collector
    from brainmri.results.collect import find_run_dirs
    assert find_run_dirs(trained.parent) == [trained]


def test_another_root_is_evaluated_into_its_own_folder(trained, tmp_path):
    from brainmri.data.phantoms import generate_phantoms

    other = generate_phantoms(tmp_path / "hospital-b", n_per_class=3, n_test_per_class=0, image_size=64, seed=7)
    proc = evaluate(trained, "--data", other, "--out", tmp_path / "eval-b")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "eval-b" / "summary.json").read_text())
    pred = rows(tmp_path / "eval-b" / "predictions_test.csv")
    assert summary["test/n"] == len(pred) == 12 and summary["evaluated"].endswith("Training")
    labels = np.array([CLASSES.index(r["label"]) for r in pred])
    probs = np.array([[float(r[f"prob_{c}"]) for c in CLASSES] for r in pred])
    expected = classification_metrics(labels, probs, CLASSES, "test")
    assert summary["test/acc"] == pytest.approx(expected["test/acc"])
    assert summary["test/macro_f1"] == pytest.approx(expected["test/macro_f1"])
    assert {r["band"] for r in pred} <= {"exact", "near_identical", "same_scan", "novel"} and pred[0]["nearest_train"]


def test_renamed_classes_fail_with_the_difference(trained, phantom_root, tmp_path):
    data = tmp_path / "renamed"
    shutil.copytree(phantom_root / "Testing", data)
    (data / "glioma").rename(data / "glioma_tumor")
    proc = evaluate(trained, "--data", data)
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "missing ['glioma']" in line and "not in the run ['glioma_tumor']" in line
    assert not (trained / "eval" / "renamed").exists()
    proc = evaluate(trained, "--data", phantom_root, "--out", trained)  # never over the run's own results
    assert proc.returncode == 2 and "is a run directory" in proc.stderr and proc.stderr.count("\n") == 1
