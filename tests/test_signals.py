"""Stop signals and mid-epoch checkpoints: a signal (or the checkpoint timer) writes ``last.pt`` at the
current optimizer step, and the resume continues inside the epoch, ending bit-identical on CPU to an
uninterrupted run (weights, metrics rows, W&B history) — in one process and under 2-process DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TINY, accelerate_cpu, run_train

from brainmri.results.wandb_offline import read_offline_runs, read_wandb_file

# 38 training images in batches of 2: 19 optimizer steps per epoch, long enough to stop inside one
LONG = ["train.epochs=3", "data.batch_size=2", "data.input_size=96", "model.dropout=0.5"]


def _args(root, run_dir, *extra):
    return ["--config", "configs/baseline_cnn.yaml", f"data.root={root}", f"run_dir={run_dir}", *TINY, *LONG,
            *extra]


def _rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [r for r in map(json.loads, path.read_text().splitlines()) if "epoch" in r] if path.exists() else []


def _status(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def _start(args, launcher=None, env=None) -> subprocess.Popen:
    cmd = (launcher or [sys.executable]) + [str(ROOT / "train.py"), *args]
    env = {**os.environ, **(env or {}), **({"ACCELERATE_USE_CPU": "1"} if launcher else {})}
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)


def _wait_inside(proc, run_dir: Path, epoch: int, timeout: float = 300) -> None:
    """Until status.json says training is inside ``epoch``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"train.py exited {proc.returncode} early:\n{proc.stderr.read()[-3000:]}")
        if _status(run_dir).get("in_epoch") == epoch:
            return
        time.sleep(0.02)
    raise AssertionError(f"never reached epoch {epoch}")


def _wait_for_checkpoint_inside(proc, run_dir: Path, epoch: int, timeout: float = 300) -> None:
    """Until a (timed) checkpoint written inside ``epoch`` exists, or the process ended."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if _status(run_dir).get("in_epoch") == epoch and (run_dir / "checkpoints" / "last.pt").exists():
            try:
                position = _position(run_dir)
            except Exception:  # being replaced right now
                continue
            if position is not None and position["epoch"] == epoch:
                return
        time.sleep(0.05)


def _position(run_dir: Path) -> dict | None:
    return torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True).get("position")


def _drop_timing(rows):
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "throughput/"))} for r in rows]


def assert_same_run(a: Path, b: Path) -> None:
    """Same weights in best.pt and last.pt, same metrics rows, same val/test metrics."""
    for name in ("best.pt", "last.pt"):
        wa, wb = (torch.load(d / "checkpoints" / name, map_location="cpu", weights_only=True) for d in (a, b))
        for key in wa["model"]:
            assert torch.equal(wa["model"][key], wb["model"][key]), (name, key)
        assert wa["trainer"]["step"] == wb["trainer"]["step"]
    assert _drop_timing(_rows(a)) == _drop_timing(_rows(b))
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert {k: v for k, v in sa.items() if k.startswith(("val/", "test/"))} == \
        {k: v for k, v in sb.items() if k.startswith(("val/", "test/"))}


def assert_wandb_history_complete(run_dir: Path) -> None:
    """Every epoch of metrics.jsonl exactly once in the W&B offline run, steps increasing, values equal."""
    runs = read_offline_runs(run_dir / "wandb")
    assert len(runs) == 1
    raw = [row for f in runs[0]["files"] for row in read_wandb_file(f)["history"] if "epoch" in row]
    rows = _rows(run_dir)
    assert sorted(r["epoch"] for r in raw) == [r["epoch"] for r in rows]  # once each, across all pieces
    merged = [r for r in runs[0]["history"] if "epoch" in r]
    assert [r["_step"] for r in merged] == [r["epoch"] for r in rows]
    for logged, row in zip(merged, rows, strict=True):
        assert logged["train/loss"] == row["train/loss"] and logged["val/acc"] == row["val/acc"]


@pytest.fixture(scope="module")
def straight(phantom_root, tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must reproduce."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    run_train(*_args(phantom_root, run_dir))
    return run_dir


def test_sigterm_mid_epoch_checkpoints_and_resumes_exactly(phantom_root, straight, tmp_path):
    run_dir = tmp_path / "run"
    proc = _start(_args(phantom_root, run_dir))
    _wait_inside(proc, run_dir, 2)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    status = _status(run_dir)
    assert status["status"] == "interrupted" and status["signal"] == "SIGTERM"
    position = _position(run_dir)
    assert position is not None and position["epoch"] == 2 and 0 < position["batches"] < 19, position
    assert len(_rows(run_dir)) == 1 and not (run_dir / "summary.json").exists()
    pieces = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(pieces) == 1 and read_wandb_file(pieces[0])["exit_code"] == 143

    resumed = run_train("--resume", str(run_dir))
    assert f"resuming epoch 2 after {position['batches']} batch(es)" in resumed.stderr
    assert_same_run(straight, run_dir)
    assert_wandb_history_complete(run_dir)


@pytest.fixture
def foreign_wandb_service():
    """A live W&B service of another process, announced as W&B announces it to child processes
    (``WANDB_SERVICE``): what a run inherits when started from a notebook or script that used W&B, or by
    sbatch copying the submitter's environment."""
    code = "import os, sys, wandb; wandb.setup(); print(os.environ['WANDB_SERVICE'], flush=True); sys.stdin.read()"
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}  # its own service, not this process's
    owner = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env={**env, "WANDB_MODE": "offline"})
    try:
        token = owner.stdout.readline().strip()
        assert token.split("-")[1] == str(owner.pid), token
        yield {"WANDB_SERVICE": token}
    finally:
        owner.kill()
        owner.wait()


def test_timed_checkpoint_survives_sigkill_and_resumes_exactly(phantom_root, straight, tmp_path,
                                                               foreign_wandb_service):
    """A tiny interval writes last.pt inside epochs; SIGKILL (no handler runs) loses only the steps since.

    Both processes inherit another process's W&B service: the run must start its own, or the killed
    run's stream, still open in that service, refuses the resumed run ("run ID ... is in use")."""
    run_dir = tmp_path / "run"
    proc = _start(_args(phantom_root, run_dir, "train.checkpoint_every_min=0.002"), env=foreign_wandb_service)
    _wait_for_checkpoint_inside(proc, run_dir, 2)
    os.killpg(proc.pid, signal.SIGKILL)  # train.py and W&B's service, as a node failure would
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    position = _position(run_dir)
    assert position is not None and position["epoch"] == 2 and position["batches"] > 0
    # a kill often cuts W&B's service off before it wrote epoch 1's row; make that certain
    (piece,) = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert [r["epoch"] for r in read_wandb_file(piece)["history"]] in ([], [1])
    _cut_before_history(piece)

    resumed = run_train("--resume", str(run_dir), env=foreign_wandb_service)
    assert "logged 1 epoch row(s) it had missed" in resumed.stderr
    assert_same_run(straight, run_dir)
    assert_wandb_history_complete(run_dir)


def _cut_before_history(piece: Path) -> None:
    """Truncate a .wandb file just before its first history record (a tail lost to the kill)."""
    data = piece.read_bytes()
    lo, hi = 7, len(data)  # the longest prefix without a history row
    while lo < hi:
        mid = (lo + hi + 1) // 2
        piece.write_bytes(data[:mid])
        lo, hi = (mid, hi) if not read_wandb_file(piece)["history"] else (lo, mid - 1)
    piece.write_bytes(data[:lo])
    assert read_wandb_file(piece)["history"] == []


def test_two_process_sigterm_mid_epoch_resumes_exactly(phantom_root, tmp_path):
    args = lambda d: _args(phantom_root, d, "data.batch_size=1")  # noqa: E731  (2 ranks × 1: 19 steps)
    straight = tmp_path / "straight"
    run_train(*args(straight), launcher=accelerate_cpu(2))
    run_dir = tmp_path / "run"
    proc = _start(args(run_dir), launcher=accelerate_cpu(2))
    _wait_inside(proc, run_dir, 2)
    os.killpg(proc.pid, signal.SIGTERM)  # the launcher and both ranks, as SLURM does
    _, err = proc.communicate(timeout=180)
    assert proc.returncode != 0
    status = _status(run_dir)
    assert status["status"] == "interrupted" and status["signal"] == "SIGTERM", err[-3000:]
    position = _position(run_dir)
    assert position["epoch"] == 2 and 0 < position["batches"] < 19 and len(position["ranks"]) == 2

    run_train("--resume", str(run_dir), launcher=accelerate_cpu(2))
    assert_same_run(straight, run_dir)


def test_second_sigint_exits_at_once(phantom_root, tmp_path):
    run_dir = tmp_path / "run"
    proc = _start(_args(phantom_root, run_dir))
    _wait_inside(proc, run_dir, 1)
    os.kill(proc.pid, signal.SIGINT)
    for line in proc.stderr:  # the handler says it has taken the first one
        if "SIGINT: stopping after this step" in line:
            break
    os.kill(proc.pid, signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGINT  # killed by the second one, no clean-up
    assert _status(run_dir)["status"] == "running"


def test_sigusr2_under_slurm_marks_the_run_preempted(phantom_root, tmp_path):
    run_dir = tmp_path / "run"
    proc = _start(_args(phantom_root, run_dir), env={"SLURM_JOB_ID": "4242"})
    _wait_inside(proc, run_dir, 1)
    os.kill(proc.pid, signal.SIGUSR2)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGUSR2, err[-2000:]
    status = _status(run_dir)
    assert status["status"] == "preempted" and status["signal"] == "SIGUSR2"
    assert _position(run_dir)["epoch"] == 1
