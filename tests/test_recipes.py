"""A recipe is any YAML: a new architecture from torchvision trains, resumes, sweeps and is collected
with no code change; the shipped EfficientNet-B0 recipe trains its two phases."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml
from torchvision import models as tvm

from conftest import ROOT, TINY, run_train

from brainmri.sweep.expand import load_sweep

NEW_RECIPE = {  # no recipe: key: the file name names it
    "data": {"input_channels": 1, "normalize": "imagenet", "augment": ["hflip"], "batch_size": 8},
    "model": {"arch": "torchvision:mobilenet_v3_small", "head": "linear", "pretrained": False},
    "optim": {"name": "adamw", "lr": 1.0e-3, "weight_decay": 1.0e-4},
    "train": {"monitor": "val/acc", "phases": [
        {"name": "head", "epochs": 1, "train": ["head"]},
        {"name": "backbone", "epochs": 2, "train": ["backbone", "head"], "lr_mult": {"backbone": 0.1}},
    ]},
}


def rows(run_dir):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "epoch" in r]


def test_a_new_yaml_trains_resumes_sweeps_and_is_collected(phantom_root, tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    recipe = configs / "mobilenet_small_grey.yaml"
    recipe.write_text(yaml.safe_dump(NEW_RECIPE, sort_keys=False))
    run_dir = tmp_path / "runs" / "mobilenet"
    args = ["--config", str(recipe), f"data.root={phantom_root}", f"run_dir={run_dir}", *TINY,
            "train.max_steps_per_epoch=2"]
    crashed = run_train(*args, "train.fail_at_epoch=3", check=False)
    assert crashed.returncode != 0 and [r["phase"] for r in rows(run_dir)] == ["head", "backbone"]
    run_train("--resume", str(run_dir), "train.fail_at_epoch=null")
    done = rows(run_dir)
    assert [(r["epoch"], r["phase"]) for r in done] == [(1, "head"), (2, "backbone"), (3, "backbone")]
    assert "lr/backbone" not in done[0] and done[1]["lr/backbone"] == pytest.approx(1e-4)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["recipe"] == "mobilenet_small_grey" and summary["epochs_run"] == 3
    model = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)["model"]
    assert model["features.0.0.weight"].shape[1] == 1 and model["classifier.3.weight"].shape == (4, 1024)

    table = subprocess.run([sys.executable, str(ROOT / "launch" / "collect.py"), str(tmp_path / "runs"),
                            "--format", "md"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert table.returncode == 0, table.stderr[-2000:]
    assert "mobilenet_small_grey" in table.stdout

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"name": "new", "recipes": [str(recipe)], "grid": {"seed": [0, 1]}}))
    tasks = load_sweep(sweep, sweeps_root=tmp_path / "sweeps").tasks
    assert [t.recipe for t in tasks] == ["mobilenet_small_grey"] * 2
    cfg = tasks[0].resolved_config()
    assert cfg["recipe"] == "mobilenet_small_grey" and cfg["wandb"]["job_type"] == "mobilenet_small_grey"


def test_efficientnet_b0_recipe_trains_both_phases(phantom_root, tmp_path):
    cfg = yaml.safe_load((ROOT / "configs" / "efficientnet_b0.yaml").read_text())
    assert cfg["model"]["arch"] == "torchvision:efficientnet_b0" and cfg["model"]["pretrained"] is True
    torch.manual_seed(0)
    weights = tmp_path / "effb0.pth"
    torch.save(tvm.efficientnet_b0(weights=None).state_dict(), weights)
    run_dir = tmp_path / "run"
    run_train("--config", "configs/efficientnet_b0.yaml", f"data.root={phantom_root}", f"run_dir={run_dir}",
              *TINY, f"model.weights={weights}", "train.phases.0.epochs=1", "train.phases.1.epochs=1",
              "train.max_steps_per_epoch=2")
    done = rows(run_dir)
    assert [r["phase"] for r in done] == ["warmup", "finetune"]
    assert set(k for k in done[1] if k.startswith("lr/")) == {"lr/backbone", "lr/head"}
    initial = torch.load(weights, weights_only=True)
    final = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert not torch.equal(initial["features.1.0.block.0.0.weight"], final["features.1.0.block.0.0.weight"])
    assert json.loads((run_dir / "summary.json").read_text())["recipe"] == "efficientnet_b0"


def test_resnet_scratch_recipe_is_one_phase_from_random_weights_with_its_regularisers(phantom_root, tmp_path):
    cfg = yaml.safe_load((ROOT / "configs" / "resnet_scratch.yaml").read_text())
    assert cfg["model"]["arch"].startswith("timm:") and cfg["model"]["pretrained"] is False
    assert "phases" not in cfg["train"]  # one phase: train.epochs=N is the schedule
    run_dir = tmp_path / "run"
    # the recipe's batch-level mixing needs at least 2 images a batch; 2 epochs, 3 steps each
    run_train("--config", "configs/resnet_scratch.yaml", f"data.root={phantom_root}", f"run_dir={run_dir}",
              *TINY, "train.epochs=2", "train.max_steps_per_epoch=3")
    done = rows(run_dir)
    assert [r["epoch"] for r in done] == [1, 2] and {r["phase"] for r in done} == {"train"}
    assert all("val_ema/acc" in r and "val/acc" in r for r in done)  # EMA validated beside the raw weights
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["recipe"] == "resnet_scratch" and summary["config"]["eval"]["tta"] == ["hflip"]
    assert summary["config"]["data"]["crop"] == "head" and summary["config"]["data"]["background"] == "zero"
    assert summary["test/n"] > 0 and "test/band/novel/n" in summary
