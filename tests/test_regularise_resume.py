"""MixUp/CutMix, label smoothing and an EMA of the weights inside the engine: a run killed by SIGKILL
mid-epoch (after a timed checkpoint) resumes bit-identical to an uninterrupted one, in one process
and under 2-process DDP; the EMA is validated beside the raw weights every epoch and best.pt holds
whichever validated better."""

from __future__ import annotations

import contextlib
import os
import signal

import psutil
import pytest
import torch

from conftest import TINY, accelerate_cpu, run_train
from test_signals import _position, _rows, _start, _wait_for_checkpoint_inside, assert_same_run

from brainmri.rundir import RunDir

REGULARISED = ["train.mixup=0.2", "train.cutmix=1.0", "train.label_smoothing=0.1", "train.ema=0.9",
               "train.ema_warmup=true", "data.augment=[hflip,rrc,intensity]"]


def _args(root, run_dir, *extra):
    return ["--config", "configs/baseline_cnn.yaml", f"data.root={root}", f"run_dir={run_dir}", *TINY,
            "train.epochs=2", "data.batch_size=2", "data.input_size=96", *REGULARISED, *extra]


def _kill_inside_epoch_2(proc, run_dir) -> dict:
    """SIGKILL the process group once a timed checkpoint inside epoch 2 exists."""
    _wait_for_checkpoint_inside(proc, run_dir, 2)
    ended = proc.poll()
    # every process at once, as a node failure would: the launcher and its ranks (which torch's
    # elastic agent may start in sessions of their own) and W&B's service
    family = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGKILL)
    for child in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    _, err = proc.communicate(timeout=60)
    position = _position(run_dir)
    assert ended is None, f"the run ended ({ended}) before a checkpoint inside epoch 2:\n{err[-3000:]}"
    assert position is not None and position["epoch"] == 2 and position["batches"] > 0
    return position


def assert_same_ema(a, b) -> None:
    ea, eb = (torch.load(d / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["ema"] for d in (a, b))
    assert ea["updates"] == eb["updates"] > 0
    for key, value in ea["model"].items():
        assert torch.equal(value, eb["model"][key]), key


@pytest.mark.slow
def test_mixup_and_ema_resume_after_sigkill_exactly(phantom_root, tmp_path):
    straight = tmp_path / "straight"
    run_train(*_args(phantom_root, straight))
    rows = _rows(straight)
    assert all("val_ema/acc" in r and "val/acc" in r for r in rows)  # both weights validated each epoch
    summary = RunDir(straight).read_summary()
    assert summary["best_weights"] in ("raw", "ema")
    best_row = rows[summary["best_epoch"] - 1]
    assert summary["best_epoch_val"] == {"raw": best_row["val/acc"], "ema": best_row["val_ema/acc"]}

    run_dir = tmp_path / "run"
    proc = _start(_args(phantom_root, run_dir, "train.checkpoint_every_min=0.002"))
    _kill_inside_epoch_2(proc, run_dir)
    run_train("--resume", str(run_dir))
    assert_same_run(straight, run_dir)
    assert_same_ema(straight, run_dir)


@pytest.mark.slow
def test_mixup_and_ema_resume_after_sigkill_exactly_under_ddp(phantom_root, tmp_path):
    straight = tmp_path / "straight"
    run_train(*_args(phantom_root, straight, "data.batch_size=1"), launcher=accelerate_cpu(2))
    run_dir = tmp_path / "run"
    proc = _start(_args(phantom_root, run_dir, "data.batch_size=1", "train.checkpoint_every_min=0.002"),
                  launcher=accelerate_cpu(2))
    position = _kill_inside_epoch_2(proc, run_dir)
    assert len(position["ranks"]) == 2
    run_train("--resume", str(run_dir), launcher=accelerate_cpu(2))
    assert_same_run(straight, run_dir)
    assert_same_ema(straight, run_dir)
