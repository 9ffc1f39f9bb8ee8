"""``--resume <finished run> train.epochs=N`` extends it: 3 epochs then 3 more end bit-identical on CPU to
6 in one go (ReduceLROnPlateau state included), with one continuous W&B history; a run directory
that never wrote a checkpoint is not silently restarted."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from conftest import TINY, run_train

from brainmri.results.wandb_offline import read_offline_runs, read_wandb_file


def _args(root, run_dir, epochs):
    # plateau, patience 0, waiting for the training loss to rise: the LR halves as the loss falls
    return ["--config", "configs/baseline_cnn.yaml", f"data.root={root}", f"run_dir={run_dir}", *TINY,
            f"train.epochs={epochs}", "model.dropout=0.5", "scheduler.name=plateau", "scheduler.patience=0",
            "scheduler.factor=0.5", "scheduler.monitor=train/loss",
            "scheduler.mode=max"]


def _rows(run_dir: Path) -> list[dict]:
    rows = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "throughput/"))} for r in rows if "epoch" in r]


def test_finished_run_extends_to_the_longer_run(phantom_root, tmp_path):
    straight, extended = tmp_path / "straight", tmp_path / "extended"
    run_train(*_args(phantom_root, straight, 6))
    run_train(*_args(phantom_root, extended, 3))
    first = json.loads((extended / "summary.json").read_text())
    assert first["epochs_run"] == 3
    run_train("--resume", str(extended), "train.epochs=6")

    assert json.loads((extended / "summary.prev.json").read_text()) == first
    rows = _rows(extended)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5, 6] and rows == _rows(straight)
    assert len({r["lr"] for r in rows}) > 1  # the plateau schedule did act
    for name in ("last.pt", "best.pt"):
        a, b = (torch.load(d / "checkpoints" / name, weights_only=True) for d in (straight, extended))
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), name
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (straight, extended))
    assert sb["epochs_run"] == 6 and sb["best_epoch"] == sa["best_epoch"]
    assert {k: v for k, v in sa.items() if k.startswith(("val/", "test/"))} == \
        {k: v for k, v in sb.items() if k.startswith(("val/", "test/"))}
    # one W&B run in two pieces, every epoch once, steps 1..6
    (run,) = read_offline_runs(extended / "wandb")
    assert run["pieces"] == 2 and run["run_id"] == sb["wandb_id"]
    raw = [r["_step"] for f in run["files"] for r in read_wandb_file(f)["history"]]
    assert raw == [1, 2, 3, 4, 5, 6]

    # a shorter or otherwise different config is still refused on the finished run
    proc = run_train("--resume", str(extended), "train.epochs=4", check=False)
    assert proc.returncode == 2 and "already holds a finished run with a different config" in proc.stderr


def test_resume_without_a_checkpoint_needs_fresh(phantom_root, tmp_path):
    run_dir = tmp_path / "run"
    crash = run_train(*_args(phantom_root, run_dir, 2), "train.fail_at_epoch=1", check=False)
    assert crash.returncode != 0 and (run_dir / "config.yaml").exists()
    proc = run_train("--resume", str(run_dir), "train.fail_at_epoch=null", check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "no checkpoint" in lines[0] and "--fresh" in lines[0]
    run_train("--resume", str(run_dir), "--fresh", "train.fail_at_epoch=null")
    assert json.loads((run_dir / "summary.json").read_text())["epochs_run"] == 2
