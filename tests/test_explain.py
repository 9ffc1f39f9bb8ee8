"""Grad-CAM of a trained baseline CNN points at the phantom's lesion (energy inside the known mask)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import run_train


def test_cam_energy_lies_in_the_lesion(tmp_path):
    from brainmri.data.phantoms import generate_phantoms, lesion_mask
    from brainmri.use.explain import cam_maps, energy_in_mask, points_in_mask
    from brainmri.use.trained import load_trained

    root = generate_phantoms(tmp_path / "data", n_per_class=30, n_test_per_class=6, image_size=128, seed=0)
    run = tmp_path / "run"
    run_train("--config", "configs/baseline_cnn.yaml", f"data.root={root}", f"run_dir={run}", "data.input_size=64",
              "data.batch_size=16", "data.num_workers=0", "train.epochs=8", "wandb.enabled=false")
    trained = load_trained(run)
    files = [p for c in ("glioma", "meningioma", "pituitary") for p in sorted((root / "Testing" / c).glob("*.jpg"))]
    inputs = trained.normalize(torch.stack([trained.decoder(p) for p in files]))
    maps = cam_maps(trained.model, inputs, [trained.classes.index(p.parent.name) for p in files])
    assert maps.shape == (len(files), 64, 64) and maps.min() >= 0 and maps.max() <= 1
    masks = [lesion_mask(p) for p in files]
    share = np.mean([m.mean() for m in masks])  # what a map spread evenly would put inside
    energy = np.mean([energy_in_mask(c, m) for c, m in zip(maps, masks, strict=True)])
    pointing = np.mean([points_in_mask(c, m) for c, m in zip(maps, masks, strict=True)])
    print(f"lesion share {share:.3f}, CAM energy inside {energy:.3f}, pointing game {pointing:.2f}")
    assert 0 < share < 0.05
    assert energy > 2.5 * share and pointing > 5 * share  # chance: energy = share, pointing = share


def test_resnet_cam_uses_layer4():
    from brainmri.config import ModelConfig
    from brainmri.models.registry import build_model, cam_target_layer
    from brainmri.use.explain import cam_maps

    net = build_model(ModelConfig(arch="resnet50", pretrained=False), 4, 3, 64).eval()
    assert cam_target_layer(net) is net.layer4[-1]
    maps = cam_maps(net, torch.randn(2, 3, 64, 64), [0, 3])
    assert maps.shape == (2, 64, 64) and np.isfinite(maps).all()


def test_the_sheet_reports_each_maps_share_of_energy_inside_the_brain(trained_run, phantom_root, tmp_path):
    import csv

    from brainmri.data import preprocess
    from brainmri.use.explain import CamWriter, brain_energy, cam_maps
    from brainmri.use.trained import load_trained

    trained = load_trained(trained_run)
    files = sorted((phantom_root / "Testing").rglob("*.jpg"))[:6]
    images = torch.stack([trained.decoder(p) for p in files])
    grey = images[0, 0].numpy()
    head, brain = preprocess.head_mask(grey), preprocess.brain_mask(grey, 0.08)
    assert brain.sum() < 0.8 * head.sum() and not (brain & ~head).any()  # the rim is off, nothing outside added
    assert brain_energy(brain.astype(np.float32), grey) == 1.0 and brain_energy((~head).astype(np.float32), grey) == 0.0

    inputs = trained.normalize(images)
    with torch.no_grad():
        probs = torch.softmax(trained.model(inputs), 1).numpy()
    writer = CamWriter(trained.model, trained.classes, tmp_path / "cams", "run")
    writer.add(inputs, images, probs, [str(p) for p in files])
    index = writer.finish()
    with open(tmp_path / "cams" / "cams.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    maps = cam_maps(trained.model, inputs, probs.argmax(1).tolist())
    want = [brain_energy(m, img[0].numpy()) for m, img in zip(maps, images, strict=True)]
    assert [r["path"] for r in rows] == [str(p) for p in files]
    assert [float(r["brain_energy"]) for r in rows] == pytest.approx(want, abs=1e-4)
    page = index.read_text()
    assert page.count("in brain ") == len(files) and f"<b>{np.mean(want):.2f}</b>" in page
