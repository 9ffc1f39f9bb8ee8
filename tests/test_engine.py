"""End-to-end training: every recipe, DDP, exact resume, gradient accumulation, W&B offline files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torchvision import models as tvm

from conftest import TINY, accelerate_cpu, run_train

RECIPES = ["baseline_cnn", "resnet50_feature", "resnet50_finetune", "resnet152_ranger"]


def read_rows(run_dir: Path) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "epoch" in r]


def wandb_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))


@pytest.fixture(scope="module")
def resnet_weights(tmp_path_factory) -> dict[str, Path]:
    """State dicts with the torchvision layout, written by the test (no download)."""
    out = tmp_path_factory.mktemp("weights")
    paths = {}
    for arch, ctor in [("resnet50", tvm.resnet50), ("resnet152", tvm.resnet152)]:
        torch.manual_seed(0)
        paths[arch] = out / f"{arch}.pth"
        torch.save(ctor(weights=None).state_dict(), paths[arch])
    return paths


def recipe_overrides(recipe: str, weights: dict[str, Path]) -> list[str]:
    extra = {
        "baseline_cnn": ["train.epochs=2"],
        "resnet50_feature": ["train.epochs=2", f"model.weights={weights['resnet50']}"],
        "resnet50_finetune": ["train.phases.0.epochs=1", "train.phases.1.epochs=1",
                              f"model.weights={weights['resnet50']}"],
        "resnet152_ranger": ["train.epochs=1", "train.max_steps_per_epoch=2", "data.eval_batch_size=16",
                             f"model.weights={weights['resnet152']}"],
    }
    return extra[recipe]


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_trains_and_writes_every_artifact(recipe, phantom_root, resnet_weights, tmp_path):
    run_dir = tmp_path / "run"
    run_train("--config", f"configs/{recipe}.yaml", f"data.root={phantom_root}", f"run_dir={run_dir}",
              *TINY, *recipe_overrides(recipe, resnet_weights))

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["recipe"] == recipe and cfg["data"]["root"] == str(phantom_root)
    rows = read_rows(run_dir)
    assert [r["epoch"] for r in rows] == list(range(1, len(rows) + 1)) and len(rows) == cfg_epochs(cfg)
    for key in ("train/loss", "val/acc", "val/loss", "val/macro_f1", "val/auc", "val/ece", "lr"):
        assert all(np.isfinite(r[key]) for r in rows), key

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["recipe"] == recipe
    assert summary["classes"] == ["glioma", "meningioma", "notumor", "pituitary"]
    for split in ("val", "test"):
        for key in ("acc", "macro_f1", "auc", "ece", "loss"):
            assert f"{split}/{key}" in summary
        for cls in summary["classes"]:
            for key in ("precision", "recall", "f1", "acc"):
                assert 0.0 <= summary[f"{split}/{key}/{cls}"] <= 1.0
        preds = pd.read_csv(run_dir / f"predictions_{split}.csv")
        assert len(preds) == summary[f"{split}/n"]
        probs = preds[[f"prob_{c}" for c in summary["classes"]]].to_numpy()
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
        assert summary[f"{split}/acc"] == pytest.approx((preds["label"] == preds["pred"]).mean())
        assert (run_dir / f"confusion_{split}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["best_epoch"] >= 1 and summary["images_per_s"] > 0 and summary["wall_time_s"] > 0
    assert json.loads((run_dir / "skipped_files.json").read_text()) == {"count": 0, "files": []}
    assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"
    for name in ("last.pt", "best.pt"):
        ckpt = torch.load(run_dir / "checkpoints" / name, map_location="cpu", weights_only=True)
        assert "model" in ckpt and ckpt["trainer"]["epoch"] >= 1
    assert len(wandb_runs(run_dir)) == 1 and summary["wandb_id"] in wandb_runs(run_dir)[0].name


def cfg_epochs(cfg: dict) -> int:
    phases = cfg["train"]["phases"]
    return sum(p["epochs"] for p in phases) if phases else cfg["train"]["epochs"]


def test_finetune_phases_train_the_right_groups(phantom_root, resnet_weights, tmp_path):
    """Warm-up trains only the head; fine-tune adds layer4 at the lower per-group LRs."""
    run_dir = tmp_path / "run"
    run_train("--config", "configs/resnet50_finetune.yaml", f"data.root={phantom_root}", f"run_dir={run_dir}",
              *TINY, *recipe_overrides("resnet50_finetune", resnet_weights), "optim.lr=0.01",
              "train.early_stop.enabled=false")
    rows = read_rows(run_dir)
    assert [r["phase"] for r in rows] == ["warmup", "finetune"]
    assert rows[0]["lr/head"] == pytest.approx(0.01) and "lr/layer4" not in rows[0]
    assert rows[1]["lr/head"] == pytest.approx(0.001) and rows[1]["lr/layer4"] == pytest.approx(0.0001)
    initial = torch.load(resnet_weights["resnet50"], weights_only=True)
    final = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert torch.equal(initial["layer3.0.conv1.weight"], final["layer3.0.conv1.weight"])  # frozen
    assert torch.equal(initial["bn1.running_mean"], final["bn1.running_mean"])  # frozen BN statistics
    assert not torch.equal(initial["layer4.0.conv1.weight"], final["layer4.0.conv1.weight"])  # trained


def test_two_process_ddp_counts_each_sample_once(phantom_root, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_train("--config", "configs/baseline_cnn.yaml", f"data.root={phantom_root}", f"run_dir={run_dir}",
                     *TINY, "train.epochs=2", "data.batch_size=5", launcher=accelerate_cpu(2))
    assert proc.stdout.count("val/acc") == 1  # rank 0 reports once
    split = json.loads((run_dir / "split.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    for name in ("val", "test"):
        preds = pd.read_csv(run_dir / f"predictions_{name}.csv")
        # 9 val images do not divide evenly over 2 ranks × 5: padding must not be counted
        assert summary[f"{name}/n"] == split[name] == len(preds) == preds["path"].nunique()
    # 2 ranks x 5 per step over the training set: the global image count is the whole set per epoch
    rows = read_rows(run_dir)
    assert len(rows) == 2 and rows[-1]["step"] == 2 * int(np.ceil(split["train"] / 10))
    assert len(wandb_runs(run_dir)) == 1  # W&B on rank 0 only


def _resume_args(root, run_dir):
    # augmentation and dropout on: the resumed run must reproduce their random draws too
    return ["--config", "configs/baseline_cnn.yaml", f"data.root={root}", f"run_dir={run_dir}", *TINY,
            "train.epochs=3", "data.augment=[hflip,rotation]", "model.dropout=0.5", "train.deterministic=true"]


def test_interrupted_run_resumes_to_identical_result(phantom_root, tmp_path):
    straight = tmp_path / "straight"
    run_train(*_resume_args(phantom_root, straight))

    resumed = tmp_path / "resumed"
    crash = run_train(*_resume_args(phantom_root, resumed), "train.fail_at_epoch=2", check=False)
    assert crash.returncode != 0 and "simulated crash" in crash.stderr
    status = json.loads((resumed / "status.json").read_text())
    assert status["status"] == "failed" and status["epoch"] == 1 and "simulated crash" in status["error"]
    assert not (resumed / "summary.json").exists() and len(read_rows(resumed)) == 1
    run_train("--resume", str(resumed), "train.fail_at_epoch=null")

    a = torch.load(straight / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(resumed / "checkpoints" / "last.pt", weights_only=True)
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0, msg=key)
    drop = lambda r: {k: v for k, v in r.items() if not k.startswith(("time/", "throughput/"))}  # noqa: E731
    assert [drop(r) for r in read_rows(straight)] == [drop(r) for r in read_rows(resumed)]
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (straight, resumed))
    for key in sa:
        if key.startswith(("val/", "test/")):
            assert sa[key] == sb[key], key
    # the resumed job continued the same W&B run: two offline pieces, one id
    pieces = wandb_runs(resumed)
    assert len(pieces) == 2 and {p.name for p in pieces} == {f"run-{sb['wandb_id']}.wandb"}


def test_gradient_accumulation_matches_large_batch(phantom_root, tmp_path):
    """K=4 micro-batches of 4 make the same update as one batch of 16 (no BN, no dropout)."""
    common = ["--config", "configs/baseline_cnn.yaml", f"data.root={phantom_root}", *TINY,
              "train.epochs=1", "train.max_steps_per_epoch=2", "model.dropout=0.0", "optim.name=sgd",
              "optim.lr=0.1"]
    run_train(*common, f"run_dir={tmp_path / 'accum'}", "data.batch_size=4", "train.grad_accum=4")
    run_train(*common, f"run_dir={tmp_path / 'big'}", "data.batch_size=16", "train.grad_accum=1")
    init = run_train(*common, f"run_dir={tmp_path / 'other'}", "data.batch_size=8", "train.grad_accum=1")
    assert init.returncode == 0
    a, b, c = (torch.load(tmp_path / d / "checkpoints" / "last.pt", weights_only=True)
               for d in ("accum", "big", "other"))
    assert a["trainer"]["step"] == b["trainer"]["step"] == 2
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-4, atol=1e-6, msg=key)
    # and the comparison is not vacuous: a different effective batch gives different weights
    assert not all(torch.allclose(a["model"][k], c["model"][k]) for k in a["model"])


def test_finished_run_is_returned_untouched(phantom_root, tmp_path):
    run_dir = tmp_path / "run"
    args = ["--config", "configs/baseline_cnn.yaml", f"data.root={phantom_root}", f"run_dir={run_dir}", *TINY,
            "train.epochs=1"]
    run_train(*args)
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    again = run_train(*args)
    assert "val/acc" in again.stdout
    after = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")
             if p.is_file() and p.name != "train.log" and not p.name.startswith(".lock")}
    assert all(before[p] == t for p, t in after.items())


@pytest.mark.parametrize("how", [["wandb.enabled=false"], []])
def test_wandb_can_be_switched_off(phantom_root, tmp_path, how):
    run_dir = tmp_path / "run"
    env = {} if how else {"WANDB_MODE": "disabled"}
    run_train("--config", "configs/baseline_cnn.yaml", f"data.root={phantom_root}", f"run_dir={run_dir}", *TINY,
              "train.epochs=1", *how, env=env)
    assert (run_dir / "summary.json").exists() and not (run_dir / "wandb").exists()
    assert json.loads((run_dir / "summary.json").read_text())["wandb_id"] is None


def test_early_stopping_ends_the_phase(phantom_root, tmp_path):
    run_dir = tmp_path / "run"
    # min_delta larger than any possible change: epoch 1 sets the reference, nothing improves on it
    run_train("--config", "configs/baseline_cnn.yaml", f"data.root={phantom_root}", f"run_dir={run_dir}", *TINY,
              "train.epochs=6", "train.early_stop.enabled=true", "train.early_stop.patience=2",
              "train.early_stop.min_delta=100.0")
    assert [r["epoch"] for r in read_rows(run_dir)] == [1, 2, 3]
    assert json.loads((run_dir / "summary.json").read_text())["epochs_run"] == 3


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("no", torch.float32)])
def test_bf16_autocast_on_cpu_runs_the_forward_in_bf16(precision, dtype, phantom_root, tmp_path):
    """A forward hook on every module sees what the engine's training forward really computes in."""
    from brainmri.config import load_config
    from brainmri.train.engine import fit

    seen = {}

    def hook(module, args, output):
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and torch.is_grad_enabled():
            seen.setdefault(type(module).__name__, set()).add(output.dtype)

    cfg = load_config("configs/baseline_cnn.yaml", [f"data.root={phantom_root}", f"run_dir={tmp_path / 'run'}", *TINY,
                                                    "train.epochs=1", f"train.mixed_precision={precision}",
                                                    "wandb.enabled=false"])
    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        summary = fit(cfg)
    finally:
        handle.remove()
    assert seen == {"Conv2d": {dtype}, "Linear": {dtype}}  # training forwards (grad enabled) only
    assert summary["config"]["train"]["mixed_precision"] == precision and np.isfinite(summary["val/loss"])


def test_feature_cache_trains_the_head_like_the_full_backbone(phantom_root, resnet_weights, tmp_path):
    """Without augmentation, one cached view per image is exactly the frozen backbone's output."""
    common = ["--config", "configs/resnet50_feature.yaml", f"data.root={phantom_root}", *TINY, "train.epochs=2",
              f"model.weights={resnet_weights['resnet50']}", "data.augment=[]"]
    run_train(*common, f"run_dir={tmp_path / 'cached'}", "model.feature_cache_views=1")
    run_train(*common, f"run_dir={tmp_path / 'full'}", "model.feature_cache_views=0")
    a, b = (torch.load(tmp_path / d / "checkpoints" / "last.pt", weights_only=True)["model"]
            for d in ("cached", "full"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    ra, rb = read_rows(tmp_path / "cached"), read_rows(tmp_path / "full")
    for row_a, row_b in zip(ra, rb, strict=False):
        assert row_a["train/loss"] == pytest.approx(row_b["train/loss"], rel=1e-4)
        assert row_a["val/acc"] == row_b["val/acc"]


def test_two_processes_follow_the_one_process_loss_curve(phantom_root, tmp_path):
    """DDP with 2 × batch B takes the same steps as 1 process with batch 2B (no BN, no dropout)."""
    common = ["--config", "configs/baseline_cnn.yaml", f"data.root={phantom_root}", *TINY, "train.epochs=3",
              "model.dropout=0.0", "data.augment=[]", "optim.name=sgd", "optim.lr=0.05", "data.val_fraction=0.25"]
    # 36 training images = 3 global batches of 12: no ragged tail for DDP to pad with repeated samples
    run_train(*common, f"run_dir={tmp_path / 'ddp'}", "data.batch_size=6", launcher=accelerate_cpu(2))
    run_train(*common, f"run_dir={tmp_path / 'single'}", "data.batch_size=12")
    assert json.loads((tmp_path / "single" / "split.json").read_text())["train"] == 36
    ddp, single = read_rows(tmp_path / "ddp"), read_rows(tmp_path / "single")
    assert [r["step"] for r in ddp] == [r["step"] for r in single]
    for a, b in zip(ddp, single, strict=True):
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-4)
        assert a["val/loss"] == pytest.approx(b["val/loss"], rel=1e-4)
    wa, wb = (torch.load(tmp_path / d / "checkpoints" / "last.pt", weights_only=True)["model"]
              for d in ("ddp", "single"))
    for key in wa:  # same weights up to float32 summation order (gloo's all-reduce vs one batch's mean)
        assert (wa[key] - wb[key]).norm() <= 1e-3 * wb[key].norm(), key


def test_truncated_checkpoint_falls_back_to_the_previous_one(phantom_root, tmp_path):
    run = tmp_path / "run"
    crash = run_train(*_resume_args(phantom_root, run), "train.fail_at_epoch=3", check=False)
    assert crash.returncode != 0
    assert (run / "checkpoints" / "last.prev.pt").exists()
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    done = run_train("--resume", str(run), "train.fail_at_epoch=null")
    assert "unreadable" in done.stderr and "previous checkpoint" in done.stderr
    assert (run / "summary.json").exists()
    # nothing valid left: one line, exit 2, no traceback
    run2 = tmp_path / "run2"
    run_train(*_resume_args(phantom_root, run2), "train.fail_at_epoch=2", check=False)
    for name in ("last.pt", "last.prev.pt"):
        p = run2 / "checkpoints" / name
        if p.exists():
            p.write_bytes(b"garbage")
    bad = run_train("--resume", str(run2), "train.fail_at_epoch=null", check=False)
    assert bad.returncode == 2 and "no valid checkpoint" in bad.stderr and "Traceback" not in bad.stderr


def test_second_writer_is_refused_with_one_line(phantom_root, tmp_path):
    import subprocess
    import sys

    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from brainmri.rundir import RunDir, acquire_lock; "
        f"lk = acquire_lock(RunDir({str(run)!r})); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        refused = run_train(*_resume_args(phantom_root, run), check=False)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        assert f"pid {holder.pid}" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    finally:
        holder.kill()
        holder.wait()
    assert not (run / "metrics.jsonl").exists()


@pytest.mark.slow
def test_compile_and_channels_last_train_and_are_recorded(phantom_root, tmp_path):
    # a cold compile, as a user's first run: inductor starts its compile worker threads, which must
    # not keep the finished process from exiting
    run_dir = tmp_path / "run"
    run_train("--config", "configs/baseline_cnn.yaml", f"data.root={phantom_root}", f"run_dir={run_dir}", *TINY,
              "train.epochs=1", "train.max_steps_per_epoch=2", "wandb.enabled=false", "train.compile=true",
              "train.channels_last=true", env={"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}, timeout=300)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["compiled"] is True and np.isfinite(summary["val/loss"])
    for recorded in (summary["config"], yaml.safe_load((run_dir / "config.yaml").read_text())):
        assert recorded["train"]["compile"] is True and recorded["train"]["channels_last"] is True
    weights = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)["model"]
    convs = [t for t in weights.values() if t.dim() == 4]
    assert convs and all(t.is_contiguous(memory_format=torch.channels_last) for t in convs)
    assert "cannot compile" not in (run_dir / "train.log").read_text()


@pytest.mark.slow
def test_compile_falls_back_to_eager_with_one_warning_where_it_cannot_compile(phantom_root, tmp_path):
    # no C++ compiler for the CPU backend (and no compiled graph cached): the run trains eagerly and says so once
    run_dir = tmp_path / "run"
    env = {"CXX": str(tmp_path / "no-such-compiler"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    run_train("--config", "configs/baseline_cnn.yaml", f"data.root={phantom_root}", f"run_dir={run_dir}", *TINY,
              "train.epochs=2", "train.max_steps_per_epoch=2", "wandb.enabled=false", "train.compile=true", env=env)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["compiled"] is False and summary["epochs_run"] == 2 and np.isfinite(summary["val/loss"])
    warnings = [line for line in (run_dir / "train.log").read_text().splitlines() if "train.compile:" in line]
    assert len(warnings) == 1 and "cannot compile here" in warnings[0] and "training eagerly" in warnings[0], warnings


def test_a_run_on_known_data_imports_neither_scikit_learn_scipy_nor_matplotlib(phantom_root, trained_run, tmp_path):
    # the split and the near-duplicate groups of data already split once are read back from the cache (the
    # same files on each side), the metrics are NumPy's and the confusion matrices Pillow's: a run's
    # start-up is torch, not these
    run_dir = tmp_path / "run"
    done = run_train("--config", "configs/baseline_cnn.yaml", *TINY, f"data.root={phantom_root}",
                     f"run_dir={run_dir}", "train.epochs=1", "train.max_steps_per_epoch=1",
                     launcher=[sys.executable, "-X", "importtime"])
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" in imported and not {m for m in imported if m.split(".")[0] in ("sklearn", "scipy", "matplotlib")}
    # W&B (offline here) wrote its run without importing W&B Launch, which nothing in the run staged inputs for
    assert "wandb" in imported and not {m for m in imported if m.startswith("wandb.sdk.launch")}
    assert list((run_dir / "wandb").glob("*/run-*.wandb"))
    first, again = (json.loads((d / "split.json").read_text()) for d in (trained_run, run_dir))
    assert [first[part] for part in ("train", "val", "test")] == [again[part] for part in ("train", "val", "test")]
    assert (run_dir / "confusion_val.png").stat().st_size > 1000
