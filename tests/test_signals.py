"""Stop signals: SIGTERM stops after a step, keeps the checkpoint, exits 143, and the resume is exact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT, TINY, run_train

from brainmri.wandb_offline import read_wandb_file


def _args(root, run_dir):
    return ["--config", "configs/baseline_cnn.yaml", f"data.root={root}", f"run_dir={run_dir}", *TINY,
            "train.epochs=3", "data.batch_size=2", "model.dropout=0.5"]


def _rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_sigterm_stops_cleanly_and_resume_is_exact(phantom_root, tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *_args(phantom_root, run_dir)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not _rows(run_dir) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "interrupted" and status["signal"] == "SIGTERM"
    assert (run_dir / "checkpoints" / "last.pt").exists() and not (run_dir / "summary.json").exists()
    pieces = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(pieces) == 1 and read_wandb_file(pieces[0])["exit_code"] == 143
    assert read_wandb_file(pieces[0])["history"]

    run_train("--resume", str(run_dir))
    straight = tmp_path / "straight"
    run_train(*_args(phantom_root, straight))
    drop = lambda r: {k: v for k, v in r.items() if not k.startswith(("time/", "throughput/"))}  # noqa: E731
    assert [drop(r) for r in _rows(straight)] == [drop(r) for r in _rows(run_dir)]
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (straight, run_dir))
    assert all(sa[k] == sb[k] for k in sa if k.startswith(("val/", "test/")))
