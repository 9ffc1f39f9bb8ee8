"""The run directory as one object: the only place its file names are spelled.

:class:`RunDir` holds every file a run leaves behind except the W&B run's own: the resolved
``config.yaml``, ``status.json``, ``metrics.jsonl``, ``summary.json`` (and ``summary.prev.json``
after an extension), ``split.json`` (every file of every part, see brainmri.data.split.Split),
``skipped_files.json``, ``predictions_<split>.csv``, ``confusion_<split>.png``, ``train.log``,
``wandb/``, ``eval/<name>/`` (evaluations on other data roots), ``prune.json`` (a search driver's
request to stop: the only file of the directory the run does not write itself) and ``checkpoints/``
(``last.pt``, ``last.prev.pt``, ``best.pt``), each with its reader and writer. :meth:`RunDir.state`
is the one answer to "is this run finished, failed, running, interrupted, preempted or pruned?"
that sweeps, submission, the collector and reports use.

Every write goes through brainmri.atomic (tmp → fsync → ``os.replace``). Checkpoints rotate only
once the new one is durable: the previous ``last.pt`` is kept as ``last.prev.pt`` (a hard link, so
``last.pt`` exists at every moment once one was written); :meth:`RunDir.load_checkpoint` falls back
to it (with a warning) when the latest is truncated or corrupt, and raises
:class:`CheckpointError` (one line) when nothing valid is left. Read-only tools (collector,
``sweep.py status``) read these files and never take the lock.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brainmri.atomic import (
    DiskFullError,
    append_line,
    atomic_path,
    atomic_write,
    encode,
    jsonable,
    read_json,
    write_json,
)
from brainmri.locks import hold_lock, lock_holder, pid_alive

if TYPE_CHECKING:
    from filelock import BaseFileLock

log = logging.getLogger("brainmri")

CONFIG, STATUS, METRICS = "config.yaml", "status.json", "metrics.jsonl"
SUMMARY, PREV_SUMMARY = "summary.json", "summary.prev.json"
SPLIT, SKIPPED, LOG = "split.json", "skipped_files.json", "train.log"
LOCK = ".lock"  # the writer's OS file lock; its holder is noted beside it (brainmri.locks.hold_lock)
PRUNE = "prune.json"  # a search driver's request that the run stop at its next epoch end (brainmri.jobs.search)


class RunStatus(StrEnum):
    """A run's own status, as ``status.json`` writes it (the task and trial states are brainmri.sweepdir's)."""

    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # stopped by a signal outside SLURM; resumes from its last checkpoint
    PREEMPTED = "preempted"  # stopped by a signal under SLURM (time-out, pre-emption): the job requeues itself
    PRUNED = "pruned"  # stopped at an epoch end by a search driver's request: ended, never failed


# a run directory: status or metrics, a summary that is no evaluation, or a config with a recipe (RunDir.is_run_dir)
ENDED = (RunStatus.FINISHED, RunStatus.FAILED, RunStatus.INTERRUPTED, RunStatus.PREEMPTED, RunStatus.PRUNED)
STOPPED = (RunStatus.FAILED, RunStatus.INTERRUPTED, RunStatus.PREEMPTED)  # ended without a result


class CheckpointError(RuntimeError):
    """No valid checkpoint to resume from or to use (one line for the user)."""


class RunDirError(RuntimeError):
    """The run directory cannot be written (read-only, no permission); one line naming it."""


NO_SPACE = "no space"  # status.json's "cause" of a run stopped by a full disk or an exceeded quota


@dataclass
class RunState:
    """What a run directory says about its run (see :meth:`RunDir.state`)."""

    status: str | None  # a RunStatus, or None (nothing yet)
    error: str | None = None
    epoch: int = 0
    record: dict = field(default_factory=dict)  # status.json as written

    @property
    def finished(self) -> bool:
        return self.status == RunStatus.FINISHED

    @property
    def label(self) -> str:
        """The state as tables show it: ``failed: no space`` for a run a full disk stopped."""
        cause = self.record.get("cause")
        return f"failed: {cause}" if self.status == RunStatus.FAILED and cause else str(self.status or "new")


def _read_json_or_none(path: Path) -> Any:
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


class RunDir:
    """Paths, readers and writers for one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def create(self) -> None:
        """Create the directory and check that this process can write there (one line if not)."""
        try:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-test{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as e:
            raise RunDirError(f"run directory {self.path} is not writable ({e.strerror or e}); "
                              "choose another run_dir") from None

    @staticmethod
    def is_run_dir(path: str | Path, names: set[str] | None = None) -> bool:
        """Does ``path`` hold a brainmri run (``names``: its file names, when the caller listed them)?"""
        path = Path(path)
        names = names if names is not None else {p.name for p in path.iterdir()} if path.is_dir() else set()
        if names & {STATUS, METRICS}:
            return True
        if SUMMARY in names:  # an evaluation on another data root writes a summary too, but is no run
            try:
                return "evaluated" not in json.loads((path / SUMMARY).read_text())
            except (OSError, ValueError):
                return True
        if CONFIG not in names:
            return False
        import yaml

        try:
            return "recipe" in (yaml.safe_load((path / CONFIG).read_text()) or {})
        except (OSError, yaml.YAMLError):
            return False

    @staticmethod
    def skip_when_searching(name: str) -> bool:
        """Folders of a run directory that never hold another run (a recursive search skips them)."""
        return name in ("wandb", "checkpoints")

    # ------------------------------------------------------------------ paths
    @property
    def config_file(self) -> Path:
        return self.path / CONFIG

    @property
    def status_file(self) -> Path:
        return self.path / STATUS

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS

    @property
    def summary_file(self) -> Path:
        return self.path / SUMMARY

    @property
    def split_file(self) -> Path:
        return self.path / SPLIT

    @property
    def skipped_file(self) -> Path:
        return self.path / SKIPPED

    @property
    def log_file(self) -> Path:
        return self.path / LOG

    @property
    def prune_file(self) -> Path:
        return self.path / PRUNE

    @property
    def wandb_dir(self) -> Path:
        return self.path / "wandb"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def previous_checkpoint(self) -> Path:
        return self.checkpoints / "last.prev.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / "best.pt"

    def predictions_file(self, split: str) -> Path:
        return self.path / f"predictions_{split}.csv"

    def confusion_png(self, split: str) -> Path:
        return self.path / f"confusion_{split}.png"

    def eval_dir(self, name: str) -> RunDir:
        """Where an evaluation on another data root (``name``) writes its files, as a RunDir of its own."""
        return RunDir(self.path / "eval" / name)

    # ----------------------------------------------------------------- config
    def save_config(self, tree: dict) -> None:
        """Write the resolved config (``RunConfig.to_dict()``) atomically."""
        import yaml

        atomic_write(self.config_file, yaml.safe_dump(tree, sort_keys=False))

    def read_config(self) -> dict | None:
        """The saved config as a plain dict; None when there is none or it cannot be parsed."""
        import yaml

        try:
            tree = yaml.safe_load(self.config_file.read_text())
        except (OSError, yaml.YAMLError):
            return None
        return tree if isinstance(tree, dict) else {}

    @property
    def started_at(self) -> float | None:
        try:
            return self.config_file.stat().st_mtime
        except OSError:
            return None

    @property
    def ended_at(self) -> float | None:
        """When the run last wrote its status, if it ended (finished, failed, stopped, pruned)."""
        try:
            return self.status_file.stat().st_mtime if self.read_status().get("status") in ENDED else None
        except OSError:
            return None

    # ------------------------------------------------------------------ pruning
    def request_prune(self, **info: Any) -> None:
        """The search driver asks the run to stop at its next epoch end (status ``pruned``, checkpoints kept)."""
        write_json(self.prune_file, {"requested_at": time.time(), **info})

    def withdraw_prune(self) -> None:
        """Remove a carried-out prune request (a pruned run resumed by hand trains on)."""
        self.prune_file.unlink(missing_ok=True)

    def prune_request(self) -> dict | None:
        """The driver's request (what :meth:`request_prune` wrote), or None; read by the run at each epoch end."""
        request = _read_json_or_none(self.prune_file)
        return request if isinstance(request, dict) else None

    # ----------------------------------------------------------------- the writer
    @property
    def lock_file(self) -> Path:
        return self.path / LOCK

    def holder(self) -> dict:
        """Who took the run directory's lock last (host, pid, SLURM job id; {} when nobody did)."""
        return lock_holder(self.lock_file)

    def held_here(self) -> bool:
        """A live process on this host took the run directory's lock and has not ended the run: it trains
        it, whatever job started it (also before it wrote its first status)."""
        h = self.holder()
        return h.get("host") == socket.gethostname() and isinstance(h.get("pid"), int) and pid_alive(h["pid"]) \
            and self.read_status().get("status") in (None, RunStatus.RUNNING)

    # ----------------------------------------------------------------- status
    def set_status(self, status: RunStatus, epoch: int = 0, error: str | None = None, last_resort: bool = False,
                   **extra: Any) -> None:
        """Write ``status.json`` atomically. ``last_resort`` (a run stopped by a full disk): when even
        that cannot be written, overwrite the old file in place, which needs no new space."""
        record = {"status": str(status), "epoch": epoch, "error": error, "host": socket.gethostname(),
                  "pid": os.getpid(), **extra}
        try:
            write_json(self.status_file, record)
        except DiskFullError:
            if not last_resort or not self.status_file.exists():
                raise
            with open(self.status_file, "r+b") as f:
                f.write(encode(record, "json"))
                f.truncate()
                f.flush()
                os.fsync(f.fileno())

    def read_status(self) -> dict:
        return _read_json_or_none(self.status_file) or {}

    def state(self) -> RunState:
        """The run's state from its own files.

        ``finished`` once ``summary.json`` says so; else what ``status.json`` says, except that a
        run that says "running" while its process on this host is gone is ``failed`` (killed:
        SIGKILL, the OOM killer); ``None`` when the run has written nothing yet.
        """
        summary = _read_json_or_none(self.summary_file)
        status = self.read_status()
        if isinstance(summary, dict) and summary.get("status", RunStatus.FINISHED) == RunStatus.FINISHED:
            epochs = int(summary.get("epochs_run") or status.get("epoch") or 0)
            return RunState(RunStatus.FINISHED, None, epochs, status)
        name, error = status.get("status"), status.get("error")
        pid = status.get("pid")
        if name == RunStatus.RUNNING and status.get("host") == socket.gethostname() and isinstance(pid, int) \
                and not pid_alive(pid):
            gone = f"training process {pid} on {status['host']} is gone (killed?)"
            return RunState(RunStatus.FAILED, gone + (f"\n{error}" if error else ""), int(status.get("epoch") or 0),
                            status)
        return RunState(name, error, int(status.get("epoch") or 0), status)

    # ---------------------------------------------------------------- metrics
    def append_metrics(self, row: dict[str, Any]) -> None:
        append_line(self.metrics_file, json.dumps(jsonable(row)))

    def read_metrics(self) -> list[dict]:
        """Every row: one per epoch (``epoch``), then, once finished, the closing evaluation row
        (``"evaluation": "best_checkpoint"``: val and test metrics of the best checkpoint, per band too)."""
        rows: list[dict] = []
        try:
            text = self.metrics_file.read_text()
        except OSError:
            return rows
        for line in text.splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:  # a line torn by a kill mid-write: that epoch is redone anyway
                continue
        return rows

    def epoch_rows(self) -> list[dict]:
        """The per-epoch rows only (no closing evaluation row)."""
        return [r for r in self.read_metrics() if "epoch" in r]

    def truncate_metrics(self, last_epoch: int) -> None:
        """Drop rows after ``last_epoch`` (written after the checkpoint a resume starts from)."""
        if not self.metrics_file.exists():
            return
        # the closing evaluation row (no "epoch") is rewritten when the run finishes again
        kept = [r for r in self.epoch_rows() if r["epoch"] <= last_epoch]
        atomic_write(self.metrics_file, "".join(json.dumps(r) + "\n" for r in kept))

    # ---------------------------------------------------------------- summary
    def write_summary(self, summary: dict) -> None:
        write_json(self.summary_file, summary)

    def read_summary(self) -> dict | None:
        """``summary.json`` (it exists only for finished runs), or None."""
        summary = _read_json_or_none(self.summary_file)
        return summary if isinstance(summary, dict) else None

    def is_finished(self) -> bool:
        return self.summary_file.exists()

    def archive_summary(self) -> None:
        """An extended run: its old summary becomes ``summary.prev.json``."""
        os.replace(self.summary_file, self.path / PREV_SUMMARY)

    # ------------------------------------------------------------ split, skipped
    def write_split(self, record: dict) -> None:
        write_json(self.split_file, record)

    def read_split(self) -> dict | None:
        record = _read_json_or_none(self.split_file)
        return record if isinstance(record, dict) else None

    def write_skipped(self, skipped: list[dict]) -> None:
        write_json(self.skipped_file, {"count": len(skipped), "files": skipped})

    # ------------------------------------------------------------ predictions
    def write_predictions(self, split: str, samples, labels, probs, classes: list[str],
                          extra: dict[str, list] | None = None) -> Path:
        """``predictions_<split>.csv``: one row per sample; ``extra`` adds columns (name → per-sample values)."""
        extra = extra or {}
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["index", "path", "sha1", "label", "pred", *[f"prob_{c}" for c in classes], *extra])
        for i, (s, y, p) in enumerate(zip(samples, labels, probs, strict=True)):
            w.writerow([i, s.path, s.sha1, classes[int(y)], classes[int(p.argmax())],
                        *[f"{float(v):.6f}" for v in p], *[col[i] for col in extra.values()]])
        path = self.predictions_file(split)
        atomic_write(path, buf.getvalue())
        return path

    def read_predictions(self, split: str):
        """``predictions_<split>.csv`` as a pandas DataFrame, or None when the run has none."""
        import pandas as pd

        path = self.predictions_file(split)
        return pd.read_csv(path) if path.is_file() else None

    # ------------------------------------------------------------ checkpoints
    def has_checkpoint(self) -> bool:
        return self.last_checkpoint.exists() or self.previous_checkpoint.exists()

    def save_checkpoint(self, ckpt: dict, path: Path | None = None) -> None:
        """Write ``ckpt`` atomically; for ``last.pt`` the previous one is kept as ``last.prev.pt``,
        rotated only once the new file is durable (``last.pt`` never goes missing)."""
        path = path or self.last_checkpoint
        payload = encode(ckpt, "torch")
        with atomic_path(path, needed=len(payload)) as tmp:
            with open(tmp, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            if path == self.last_checkpoint and path.exists():
                self._keep_previous(path)

    def _keep_previous(self, path: Path) -> None:
        prev = self.previous_checkpoint
        link = prev.with_name(f".{prev.name}.link{os.getpid()}")
        try:
            link.unlink(missing_ok=True)
            os.link(path, link)  # a second name for the current file: no bytes copied, last.pt stays
            os.replace(link, prev)
        except OSError:  # no hard links here: fall back to renaming (last.pt is replaced right after)
            link.unlink(missing_ok=True)
            os.replace(path, prev)

    def load_checkpoint(self, path: Path | None = None) -> dict | None:
        """The latest valid checkpoint (``None`` when the run has none yet).

        A truncated or corrupt ``last.pt`` falls back to ``last.prev.pt`` with a warning;
        with nothing valid a :class:`CheckpointError` names the files.
        """
        candidates = [path] if path is not None else [self.last_checkpoint, self.previous_checkpoint]
        present = [p for p in candidates if p.exists()]
        if not present:
            return None
        errors = []
        for p in present:
            try:
                ckpt = _load_checkpoint_file(p)
            except CheckpointError as e:
                errors.append(str(e))
                log.warning("checkpoint %s is unreadable; trying the previous one", p)
                continue
            if errors:
                log.warning("resuming from the previous checkpoint %s", p)
            return ckpt
        raise CheckpointError("no valid checkpoint: " + "; ".join(errors))

    def load_best(self) -> dict:
        """``best.pt``, validated (weights, classes); a :class:`CheckpointError` naming it otherwise."""
        if not self.best_checkpoint.is_file():
            raise CheckpointError(f"{self.path} has no best checkpoint ({self.best_checkpoint}): "
                                  "the run has not finished an epoch yet")
        ckpt = _load_checkpoint_file(self.best_checkpoint)
        if not ckpt.get("classes"):
            raise CheckpointError(f"{self.best_checkpoint} names no classes")
        return ckpt


def _load_checkpoint_file(p: Path) -> dict:
    """``torch.load(weights_only=True)`` of a brainmri checkpoint; one-line CheckpointError if it is not one."""
    import torch

    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
        if not isinstance(ckpt, dict) or "model" not in ckpt:
            raise ValueError("not a brainmri checkpoint")
    except Exception as e:  # truncated zip, bad pickle, wrong content
        first = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(f"{p} is unreadable ({type(e).__name__}: {first})") from None
    return ckpt


class RunLockedError(RuntimeError):
    """Another process already writes this run directory (one line naming the holder)."""


def acquire_lock(run: RunDir) -> BaseFileLock:
    """Take the run directory's exclusive lock (an OS file lock: it dies with its process).

    Raises :class:`RunLockedError` at once, naming the holder's host, pid and SLURM job id.
    Returns the held ``filelock.FileLock``; call ``release()`` when done.
    """
    return hold_lock(run.lock_file, lambda holder: RunLockedError(
        f"{run.path} is in use by {holder}; wait for it or choose another run_dir"))
