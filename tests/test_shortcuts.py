"""launch/audit.py --shortcuts: a label planted in the background is found, and data.background: zero removes it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT

from brainmri.data import preprocess as P
from brainmri.data.audit import FEATURES, shortcut_features


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """96-px phantoms (12 per class) with class-dependent background noise (sigma 3, 9, 15, 21 grey levels),
    saved as PNG so the noise is stored exactly; the head and the lesion are untouched."""
    from brainmri.data.phantoms import generate_phantoms

    base = tmp_path_factory.mktemp("planted")
    generate_phantoms(base / "src", n_per_class=12, n_test_per_class=0, image_size=96, seed=0)
    root = base / "data"
    for k, folder in enumerate(sorted((base / "src" / "Training").iterdir())):
        (root / "Training" / folder.name).mkdir(parents=True)
        for i, path in enumerate(sorted(folder.glob("*.jpg"))):
            grey = P.load_grey(path)
            image = np.asarray(grey).astype(np.float64)
            outside = ~P.head_mask(grey, 0.05)
            noise = np.random.default_rng([k, i]).normal(0, 3 + 6 * k, image.shape)
            image[outside] = np.abs(image[outside] + noise[outside])
            Image.fromarray(np.clip(image, 0, 255).round().astype(np.uint8)).save(
                root / "Training" / folder.name / f"{path.stem}.png")
    return root


def test_a_planted_background_shortcut_is_found_and_zeroing_the_background_removes_it(planted, tmp_path):
    out = tmp_path / "audit.json"
    proc = subprocess.run([sys.executable, str(ROOT / "launch" / "audit.py"), str(planted), "--shortcuts",
                           "--json", str(out), "--no-progress", "--cache-dir", str(tmp_path / "cache")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())["shortcuts"]
    assert report["images"] == 48 and report["chance"] == 0.25
    stored = report["settings"]["as stored"]["results"]
    zeroed = report["settings"]["background: zero"]["results"]
    both = report["settings"]["crop: head + background: zero"]["results"]
    assert stored["background"]["acc"] >= 0.75 and min(stored["background"]["per_class_recall"].values()) >= 0.6
    assert stored["frame"]["acc"] >= 0.75  # the ring at 64 px is background too
    assert stored["geometry"]["acc"] <= 0.45  # the planted label is not in the head's shape
    for results in (zeroed, both):
        assert results["background"]["acc"] <= 0.45 and results["frame"]["acc"] <= 0.45
    assert "| as stored | background |" in proc.stdout and "× chance" in proc.stdout  # the Markdown summary


def test_shortcut_features_of_one_image(phantom_root):
    path = sorted((phantom_root / "Training").rglob("*.jpg"))[0]
    feats = shortcut_features(str(path), 0.05)
    assert set(feats) == {"as stored", "crop: head", "background: zero", "crop: head + background: zero"}
    for setting in feats.values():
        assert {k: len(v) for k, v in setting.items()} == {k: len(v) for k, v in FEATURES.items()}
    stored, zeroed, cropped = feats["as stored"], feats["background: zero"], feats["crop: head"]
    assert stored["background"][0] > 0 and zeroed["background"][0] == 0 and zeroed["background"][5] == 1.0
    assert stored["geometry"] == zeroed["geometry"] and 0.3 < stored["geometry"][0] < 0.9
    assert cropped["geometry"][0] > stored["geometry"][0]  # the head fills the cropped image
    means = slice(0, 16, 4)  # the mean of each side's ring: mostly background, zero where the head is not near
    assert sum(zeroed["frame"][means]) < 0.5 * sum(stored["frame"][means])


def test_a_bad_margin_is_refused_before_any_work(phantom_root, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "launch" / "audit.py"), str(phantom_root), "--shortcuts",
                           "--margin", "2", "--no-progress"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: --margin must be in [0, 1], got 2.0"
