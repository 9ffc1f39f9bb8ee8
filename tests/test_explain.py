"""Grad-CAM of a trained baseline CNN points at the phantom's lesion (energy inside the known mask)."""

from __future__ import annotations

import numpy as np
import torch

from conftest import run_train


def test_cam_energy_lies_in_the_lesion(tmp_path):
    from brainmri.use.explain import cam_maps, energy_in_mask, points_in_mask
    from brainmri.data.phantoms import generate_phantoms, lesion_mask
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
    energy = np.mean([energy_in_mask(c, m) for c, m in zip(maps, masks)])
    pointing = np.mean([points_in_mask(c, m) for c, m in zip(maps, masks)])
    print(f"lesion share {share:.3f}, CAM energy inside {energy:.3f}, pointing game {pointing:.2f}")
    assert 0 < share < 0.05
    assert energy > 2.5 * share and pointing > 5 * share  # chance: energy = share, pointing = share


def test_resnet_cam_uses_layer4():
    from brainmri.config import ModelConfig
    from brainmri.use.explain import cam_maps
    from brainmri.models.registry import build_model, cam_target_layer

    net = build_model(ModelConfig(arch="resnet50", pretrained=False), 4, 3, 64).eval()
    assert cam_target_layer(net) is net.layer4[-1]
    maps = cam_maps(net, torch.randn(2, 3, 64, 64), [0, 3])
    assert maps.shape == (2, 64, 64) and np.isfinite(maps).all()
