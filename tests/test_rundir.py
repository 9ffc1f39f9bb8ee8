"""RunDir is the one owner of a run directory: an engine-written run round-trips through it, and
its state() is the one answer sweeps, submission and the collector give."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from brainmri.config import from_dict
from brainmri.data.datasets import Split
from brainmri.jobs.submit import task_state
from brainmri.results.collect import find_run_dirs, read_run_dir
from brainmri.rundir import CheckpointError, RunDir
from brainmri.sweep.expand import Task


def test_an_engine_written_run_round_trips_through_rundir(trained_run):
    run = RunDir(trained_run)
    # (other tests may have evaluated this run on another data root: RunDir.eval_dir, a RunDir of its own)
    on_disk = {p.relative_to(run.path).as_posix() for p in run.path.rglob("*")
               if p.is_file() and not p.is_relative_to(run.path / "eval")}
    # every file the engine wrote has a RunDir path (W&B is off in this run; the lock files are the lock's)
    owned = {run.config_file, run.status_file, run.metrics_file, run.summary_file, run.split_file, run.skipped_file,
             run.log_file, run.last_checkpoint, run.best_checkpoint, run.previous_checkpoint,
             *(run.predictions_file(s) for s in ("val", "test")), *(run.confusion_png(s) for s in ("val", "test"))}
    assert on_disk - {p.relative_to(run.path).as_posix() for p in owned} <= {".lock", ".lock.holder"}

    cfg = from_dict(run.read_config())  # the resolved config validates as it was saved
    assert cfg.run_dir == str(trained_run) and yaml.safe_load(run.config_file.read_text()) == run.read_config()
    state = run.state()
    assert state.finished and state.epoch == 2 and state.error is None
    summary = run.read_summary()
    assert summary == json.loads(run.summary_file.read_text()) and summary["epochs_run"] == 2
    rows = run.read_metrics()
    assert [r["epoch"] for r in run.epoch_rows()] == [1, 2] and rows[-1]["evaluation"] == "best_checkpoint"
    assert rows[-1]["test/acc"] == pytest.approx(summary["test/acc"])

    record = run.read_split()
    split = Split.from_record(record)  # the split as it was, without scanning the data root
    assert (len(split.train), len(split.val), len(split.test)) == (record["train"], record["val"], record["test"])
    assert all(os.path.isfile(s.path) for s in split.train + split.val + split.test)
    assert summary["data_manifest"] == record["manifest"]
    split.check_unchanged()

    for part in ("val", "test"):
        frame = run.read_predictions(part)
        assert len(frame) == summary[f"{part}/n"] and set(frame["path"]) == {s.path for s in getattr(split, part)}
        assert run.confusion_png(part).read_bytes()[:4] == b"\x89PNG"
    best, last = run.load_best(), run.load_checkpoint()
    assert best["classes"] == summary["classes"] and last["trainer"]["epoch"] == 2
    assert torch.equal(next(iter(best["model"].values())),
                       next(iter(run.load_checkpoint(run.best_checkpoint)["model"].values())))
    assert run.read_status()["status"] == "finished"


def test_checkpoints_rotate_only_once_the_new_one_is_written_and_fall_back_when_torn(tmp_path):
    run = RunDir(tmp_path / "run")
    run.create()
    for epoch in (1, 2, 3):
        run.save_checkpoint({"model": {"w": torch.full((2,), float(epoch))}, "trainer": {"epoch": epoch}})
        assert run.last_checkpoint.exists()
    assert run.load_checkpoint()["trainer"]["epoch"] == 3
    assert run.load_checkpoint(run.previous_checkpoint)["trainer"]["epoch"] == 2
    run.last_checkpoint.write_bytes(run.last_checkpoint.read_bytes()[:100])  # torn by a kill
    assert run.load_checkpoint()["trainer"]["epoch"] == 2
    run.previous_checkpoint.write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="no valid checkpoint"):
        run.load_checkpoint()
    with pytest.raises(CheckpointError, match="no best checkpoint"):
        run.load_best()
    assert not [p for p in run.checkpoints.iterdir() if p.name.startswith(".")]  # no temporary files left


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _run_with_status(tmp_path, name: str, status: str | None, pid: int | None = None, **extra) -> RunDir:
    run = RunDir(tmp_path / name)
    run.create()
    run.save_config({"recipe": "baseline_cnn", "seed": 0, "run_dir": str(run.path)})
    if status is not None:
        run.set_status(status, epoch=1, **extra)
    if pid is not None:  # as if another process had written it
        rec = run.read_status()
        rec["pid"] = pid
        run.status_file.write_text(json.dumps(rec))
    return run


@pytest.mark.parametrize("case, expected", [
    ("finished", "finished"), ("failed", "failed"), ("running_dead", "failed"), ("running_alive", "running"),
    ("preempted", "preempted"), ("interrupted", "interrupted"), ("nothing", None),
])
def test_state_is_the_one_answer_of_collect_sweep_and_submit(tmp_path, case, expected):
    if case == "finished":
        run = _run_with_status(tmp_path, case, "finished")
        run.write_summary({"status": "finished", "recipe": "baseline_cnn", "seed": 0, "epochs_run": 1})
    elif case == "failed":
        run = _run_with_status(tmp_path, case, "failed", error="RuntimeError: boom")
    elif case == "running_dead":
        run = _run_with_status(tmp_path, case, "running", pid=_dead_pid())
    elif case == "running_alive":
        run = _run_with_status(tmp_path, case, "running")  # this test process: alive
    elif case in ("preempted", "interrupted"):
        run = _run_with_status(tmp_path, case, case, signal="SIGUSR2")
    else:
        run = _run_with_status(tmp_path, case, None)
    state = run.state()
    assert state.status == expected
    if case == "running_dead":
        assert "is gone (killed?)" in state.error
    if case == "failed":
        assert state.error == "RuntimeError: boom"

    collected = read_run_dir(run.path)  # the collector
    assert collected.status == (expected or "unknown") and collected.error == state.error
    assert find_run_dirs(tmp_path) == sorted(p for p in tmp_path.iterdir())

    task = Task(id=case, recipe="baseline_cnn", config_path="configs/baseline_cnn.yaml", params={}, overrides=[],
                run_dir=str(run.path), job_id="1", cluster="local")
    sweep_state, error = task_state(tmp_path / "sweep", task, None)  # the sweep and submission
    if expected in ("finished", "running"):
        assert sweep_state == ("finished" if expected == "finished" else "submitted")
    elif expected is None:
        assert sweep_state == "submitted" and error is None
    else:  # failed, interrupted and preempted runs without a live job are failed tasks (resubmittable)
        assert sweep_state == "failed"
        if case == "running_dead":
            assert "is gone (killed?)" in error
