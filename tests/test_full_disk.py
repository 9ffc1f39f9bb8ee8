"""Full and failing file systems, on real small tmpfs mounts (root): a disk that fills during a
checkpoint or the summary write ends the run cleanly (exit 75, one line, no partial files, the last
good checkpoint kept, status failed: no space), and once the file system grows the resume ends
bit-identical to an uninterrupted run; a full cache directory costs only the cache; prediction
output on a full disk keeps the old file; a read-only run directory is one line before any compute."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, TINY, run_train
from test_signals import _drop_timing, _rows, assert_same_run, assert_wandb_history_complete

from brainmri.atomic import DiskFullError, append_line, atomic_write
from brainmri.results.collect import read_run_dir
from brainmri.rundir import RunDir

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")

PAGE = 4096
ARGS = ["--config", "configs/baseline_cnn.yaml", *TINY, "train.checkpoint_every_min=0"]


class SmallFS:
    """A real tmpfs of ``size`` bytes mounted at ``path`` (unmounted at the end of the test)."""

    def __init__(self, path: Path, size: int):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self._pages(size)}", "tmpfs", str(path)], check=True)

    @staticmethod
    def _pages(size: int) -> int:
        return -(-int(size) // PAGE) * PAGE

    def resize(self, size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={self._pages(size)}", str(self.path)], check=True)

    def read_only(self) -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(self.path)], check=True)

    @property
    def used(self) -> int:
        st = os.statvfs(self.path)
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture
def mounts():
    made: list[SmallFS] = []

    def mount(path: Path, size: int) -> SmallFS:
        made.append(SmallFS(path, size))
        return made[-1]

    try:
        yield mount
    finally:
        for fs in made:
            fs.close()


def temporary_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp" in p.name]


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "no space left on " in lines[0], stderr[-3000:]
    return lines[0]


def test_a_disk_filling_during_a_checkpoint_ends_clean_and_the_resume_is_exact(phantom_root, tmp_path, mounts):
    common = [*ARGS, f"data.root={phantom_root}", "train.epochs=3"]
    straight = tmp_path / "straight" / "run"
    run_train(*common, f"run_dir={straight}")
    S = (straight / "checkpoints" / "last.pt").stat().st_size
    B = (straight / "checkpoints" / "best.pt").stat().st_size
    rows = _rows(straight)
    improved_at_2 = rows[1]["val/acc"] > rows[0]["val/acc"]  # the recipe monitors val/acc: best.pt rewritten

    # what one epoch leaves on a file system like the one the run will use (same path length)
    probe = mounts(tmp_path / "fs_p", 64 << 20)
    run_train(*ARGS, f"data.root={phantom_root}", "train.epochs=1", f"run_dir={probe.path / 'run'}")
    after_one_epoch = probe.used
    # room for epoch 1 and for epoch 2's metrics row and best.pt, but only half of its last.pt
    fs = mounts(tmp_path / "fs_r", after_one_epoch + (B if improved_at_2 else 0) + S // 2)
    run = fs.path / "run"
    proc = run_train(*common, f"run_dir={run}", check=False)
    assert proc.returncode == 75, proc.stderr[-3000:]
    line = one_error_line(proc.stderr)
    assert line.startswith("error: no space left on ") and "free" in line and "checkpoints" in line
    assert f"resume with --resume {run}" in line
    assert "one checkpoint pair needs about" in proc.stderr  # said before the first epoch
    assert temporary_files(run) == []
    last = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert last["trainer"]["epoch"] == 1
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "failed" and status["cause"] == "no space"
    assert status["reason"].startswith(f"no space left on {fs.path}: needed ")
    assert RunDir(run).state().label == "failed: no space" == read_run_dir(run).status  # the collector's too
    assert [r["epoch"] for r in _rows(run)] == [1, 2]  # epoch 2's row is redone by the resume

    fs.resize(64 << 20)  # the file system grows
    run_train("--resume", str(run))
    assert_same_run(straight, run)
    assert [r["epoch"] for r in _rows(run)] == [1, 2, 3]
    assert_wandb_history_complete(run)


def test_a_disk_filling_during_the_summary_write_keeps_the_checkpoints_and_the_resume_finishes(
        phantom_root, tmp_path, mounts):
    common = [*ARGS, f"data.root={phantom_root}", "train.epochs=1", "wandb.enabled=false"]
    probe = mounts(tmp_path / "fs_p", 64 << 20)
    run_train(*common, f"run_dir={probe.path / 'run'}")
    summary_pages = -(-(probe.path / "run" / "summary.json").stat().st_size // PAGE)
    assert summary_pages >= 2  # the config is in it
    # everything but the last page of the summary fits
    fs = mounts(tmp_path / "fs_r", probe.used - PAGE)
    run = fs.path / "run"
    proc = run_train(*common, f"run_dir={run}", check=False)
    assert proc.returncode == 75, proc.stderr[-3000:]
    line = one_error_line(proc.stderr)
    assert "summary.json" in line
    assert not (run / "summary.json").exists() and temporary_files(run) == []
    assert json.loads((run / "status.json").read_text())["cause"] == "no space"
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["trainer"]["epoch"] == 1
    fs.resize(64 << 20)
    run_train("--resume", str(run))
    done = RunDir(run)
    assert done.state().finished and [r["epoch"] for r in done.epoch_rows()] == [1]
    assert sum(1 for r in done.read_metrics() if r.get("evaluation")) == 1
    ref = json.loads((probe.path / "run" / "summary.json").read_text())
    assert {k: v for k, v in done.read_summary().items() if k.startswith(("val/", "test/"))} == \
        {k: v for k, v in ref.items() if k.startswith(("val/", "test/"))}


def test_metrics_appends_and_atomic_writes_on_a_full_disk_leave_the_old_file(tmp_path, mounts):
    fs = mounts(tmp_path / "fs", 64 * 1024)
    metrics, summary = fs.path / "metrics.jsonl", fs.path / "summary.json"
    append_line(metrics, json.dumps({"epoch": 1}))
    atomic_write(summary, "old")
    (fs.path / "filler").write_bytes(b"\0" * (64 * 1024 - fs.used))  # nothing left
    before = metrics.read_bytes()
    with pytest.raises(DiskFullError) as err:
        append_line(metrics, json.dumps({"epoch": 2, "pad": "x" * 8000}))
    assert metrics.read_bytes() == before  # no torn row
    assert str(err.value).startswith(f"no space left on {fs.path}: needed ")
    with pytest.raises(DiskFullError, match="summary.json"):
        atomic_write(summary, "new" * 5000)
    assert summary.read_text() == "old" and temporary_files(fs.path) == []


def test_prediction_output_on_a_full_disk_is_one_line_and_keeps_the_old_csv(trained_run, phantom_root, tmp_path,
                                                                            mounts):
    fs = mounts(tmp_path / "fs", 256 * 1024)
    out = fs.path / "preds.csv"
    out.write_text("an older prediction\n")
    (fs.path / "filler").write_bytes(b"\0" * (256 * 1024 - fs.used))
    proc = subprocess.run([sys.executable, str(ROOT / "launch" / "predict.py"), str(trained_run),
                           str(phantom_root / "Testing"), "--out", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 75, proc.stderr
    assert "preds.csv" in one_error_line(proc.stderr)
    assert out.read_text() == "an older prediction\n" and temporary_files(fs.path) == []


def test_a_full_cache_directory_costs_the_cache_only(phantom_root, tmp_path, mounts):
    cache = mounts(tmp_path / "cache", 64 * 1024)
    (cache.path / "filler").write_bytes(b"\0" * (64 * 1024 - cache.used))
    run = tmp_path / "run"
    proc = run_train(*ARGS, f"data.root={phantom_root}", "train.epochs=1", "data.cache=decoded",
                     f"data.cache_dir={cache.path}", f"run_dir={run}", "wandb.enabled=false",
                     env={"BRAINMRI_CACHE": str(cache.path)})
    warnings = [line for line in proc.stderr.splitlines() if "cannot be written" in line]
    assert warnings and len({w.split(" cache under ")[0] for w in warnings}) == len(warnings)  # one per cache
    assert any("decoded-image cache" in w for w in warnings)
    assert "Traceback" not in proc.stderr and RunDir(run).state().finished
    assert temporary_files(cache.path) == []


def test_a_read_only_run_directory_is_one_line_before_any_compute(phantom_root, tmp_path, mounts):
    fs = mounts(tmp_path / "fs", 1 << 20)
    fs.read_only()
    proc = run_train(*ARGS, f"data.root={tmp_path / 'no-such-data'}", f"run_dir={fs.path / 'run'}", check=False)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    # the data root does not exist either: the run directory is refused first, before the data is read
    assert errors == [f"error: run directory {fs.path / 'run'} is not writable (Read-only file system); "
                      "choose another run_dir"], proc.stderr


@pytest.mark.slow
def test_a_sweep_task_stopped_by_a_full_disk_is_failed_no_space_and_only_failed_completes_it(
        phantom_root, tmp_path, mounts):
    sweep_yaml = tmp_path / "disk.yaml"
    sweep_yaml.write_text(json.dumps({
        "name": "disk", "recipes": ["baseline_cnn"], "seeds": [0],
        "overrides": {"data.root": str(phantom_root), "data.input_size": 32, "data.batch_size": 8,
                      "data.num_workers": 0, "train.epochs": 2, "train.checkpoint_every_min": 0,
                      "wandb.enabled": False}}))
    sweeps = tmp_path / "sweeps"
    runs = sweeps / "disk" / "runs"
    fs = mounts(runs, 256 * 1024)  # the task's run directory: room for its small files, not for a checkpoint

    def sweep(*args):
        return subprocess.run([sys.executable, str(ROOT / "launch" / "sweep.py"), *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=900)

    first = sweep("--config", str(sweep_yaml), "--cluster", "local", "--sweeps-root", str(sweeps))
    assert first.returncode == 1, first.stdout + first.stderr
    status = sweep("status", str(sweeps / "disk"))
    assert "failed: no space" in status.stdout and "1 failed: no space" in status.stdout, status.stdout
    fs.resize(64 << 20)
    again = sweep("--config", str(sweep_yaml), "--cluster", "local", "--sweeps-root", str(sweeps), "--only-failed")
    assert again.returncode == 0, again.stdout + again.stderr
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    assert RunDir(run).state().finished and [r["epoch"] for r in RunDir(run).epoch_rows()] == [1, 2]
    assert np.isfinite(RunDir(run).read_summary()["val/acc"])
    assert _drop_timing(_rows(run))[0]["epoch"] == 1


def _tool_cases(run: Path, data: Path, out: Path, elsewhere: Path) -> dict[str, tuple[list[str], list[Path]]]:
    """Each tool with its output on the full file system ``out``: (launch/ command, its output files)."""
    import yaml

    tiny = {"data.root": str(data), "data.input_size": 32, "data.batch_size": 8, "data.num_workers": 0,
            "train.epochs": 2, "wandb.enabled": False}
    (elsewhere / "grid.yaml").write_text(yaml.safe_dump({"name": "grid", "recipe": "baseline_cnn", "seeds": [0],
                                                         "overrides": tiny}))
    (elsewhere / "search.yaml").write_text(yaml.safe_dump({
        "name": "search", "recipe": "baseline_cnn", "overrides": tiny,
        "search": {"trials": 1, "pruner": "none", "sampler": "random",
                   "space": {"optim.lr": "loguniform(1e-4, 1e-1)"}}}))
    return {
        "predict": (["predict.py", str(run), str(data / "Testing"), "--out", str(out / "p.csv")], [out / "p.csv"]),
        "predict --cam": (["predict.py", str(run), str(data / "Testing"), "--out", str(elsewhere / "p.csv"),
                           "--cam", str(out / "cam")], [out / "cam" / "index.html", out / "cam" / "cams.csv"]),
        "evaluate": (["evaluate.py", str(run), "--data", str(data), "--out", str(out / "eval")],
                     [out / "eval" / "summary.json"]),
        "export": (["export.py", str(run), "--format", "onnx", "--out", str(out / "export")], []),
        **{f"collect {fmt}": (["collect.py", str(run), "--format", fmt, "--out", str(out / f"t.{fmt}")],
                              [out / f"t.{fmt}"]) for fmt in ("md", "csv", "latex")},
        "collect html": (["collect.py", str(run), "--html", str(out / "r.html")], [out / "r.html"]),
        "audit --html": (["audit.py", str(data), "--html", str(out / "audit"), "--cache-dir", str(elsewhere / "c"),
                          "--no-progress"], [out / "audit" / "index.html", out / "audit" / "audit.json"]),
        "sweep": (["sweep.py", "--config", str(elsewhere / "grid.yaml"), "--cluster", "local", "--sweeps-root",
                   str(out)], [out / "grid" / "sweep.yaml", out / "grid" / "tasks.json"]),
        "search driver": (["sweep.py", "--config", str(elsewhere / "search.yaml"), "--cluster", "local",
                           "--sweeps-root", str(out)], [out / "search" / "sweep.yaml", out / "search" / "trials.json"]),
    }


TOOLS = ["predict", "predict --cam", "evaluate", "export", "collect md", "collect csv", "collect latex",
         "collect html", "audit --html", "sweep", "search driver"]


@pytest.mark.parametrize("tool", TOOLS)
def test_every_tool_with_its_output_on_a_full_disk_is_exit_75_one_line_nothing_partial(
        tool, trained_run, phantom_root, tmp_path, mounts):
    fs = mounts(tmp_path / "fs", 256 * 1024)
    (fs.path / "filler").write_bytes(b"\0" * (256 * 1024 - fs.used))  # nothing left
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    args, outputs = _tool_cases(trained_run, phantom_root, fs.path, elsewhere)[tool]
    proc = subprocess.run([sys.executable, str(ROOT / "launch" / args[0]), *args[1:]], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 75, proc.stdout[-2000:] + proc.stderr[-3000:]
    one_error_line(proc.stderr)
    assert temporary_files(fs.path) == [] and not any(p.exists() for p in outputs)
    partial = [p for p in fs.path.rglob("*") if p.is_file() and p.name != "filler" and p.stat().st_size == 0
               and not p.name.endswith(".lock")]
    assert partial == [], partial
