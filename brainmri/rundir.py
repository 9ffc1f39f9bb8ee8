"""The run directory as one object: paths, one atomic-write helper, checkpoints, status, lock.

Owns every file a run leaves behind except the W&B run: resolved config, ``metrics.jsonl``,
``summary.json``, ``status.json``, predictions, skipped-file report and ``checkpoints/``.
Every file a resume or the collector reads is written through :func:`atomic_write`
(tmp → ``os.replace``). Checkpoints rotate: saving ``last.pt`` first moves the previous good
one to ``last.prev.pt``; :meth:`RunDir.load_checkpoint` falls back to it (with a warning) when
the latest is truncated or corrupt, and raises :class:`CheckpointError` (one line) when nothing
valid is left. Read-only tools (collector, ``sweep.py status``) read these files and never
take the lock.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

from brainmri.atomic import atomic_write, jsonable, read_json, write_json

log = logging.getLogger("brainmri")


class CheckpointError(RuntimeError):
    """No valid checkpoint to resume from (one line for the user)."""


class RunDir:
    """Paths and writers for one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"

    def create(self) -> None:
        self.checkpoints.mkdir(parents=True, exist_ok=True)

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def previous_checkpoint(self) -> Path:
        return self.checkpoints / "last.prev.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def summary_file(self) -> Path:
        return self.path / "summary.json"

    # ------------------------------------------------------------ checkpoints
    def has_checkpoint(self) -> bool:
        return self.last_checkpoint.exists() or self.previous_checkpoint.exists()

    def save_checkpoint(self, ckpt: dict, path: Path | None = None) -> None:
        """Write ``ckpt`` atomically; for ``last.pt`` the previous good one is kept as ``last.prev.pt``."""
        path = path or self.last_checkpoint
        if path == self.last_checkpoint and path.exists():
            os.replace(path, self.previous_checkpoint)
        atomic_write(path, ckpt, kind="torch")

    def load_checkpoint(self, path: Path | None = None) -> dict | None:
        """The latest valid checkpoint (``None`` when the run has none yet).

        A truncated or corrupt ``last.pt`` falls back to ``last.prev.pt`` with a warning;
        with nothing valid a :class:`CheckpointError` names the files.
        """
        import torch

        candidates = [path] if path is not None else [self.last_checkpoint, self.previous_checkpoint]
        present = [p for p in candidates if p.exists()]
        if not present:
            return None
        errors = []
        for p in present:
            try:
                ckpt = torch.load(p, map_location="cpu", weights_only=True)
                if not isinstance(ckpt, dict) or "model" not in ckpt:
                    raise ValueError("not a brainmri checkpoint")
            except Exception as e:  # truncated zip, bad pickle, wrong content
                errors.append(f"{p} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
                log.warning("checkpoint %s is unreadable (%s); trying the previous one", p, type(e).__name__)
                continue
            if errors:
                log.warning("resuming from the previous checkpoint %s", p)
            return ckpt
        raise CheckpointError("no valid checkpoint: " + "; ".join(errors))

    # ----------------------------------------------------------------- files
    def set_status(self, status: str, epoch: int = 0, error: str | None = None, **extra: Any) -> None:
        write_json(self.path / "status.json", {"status": status, "epoch": epoch, "error": error,
                                               "host": socket.gethostname(), "pid": os.getpid(), **extra})

    def append_metrics(self, row: dict[str, Any]) -> None:
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(jsonable(row)) + "\n")

    def read_metrics(self) -> list[dict]:
        """Every row: one per epoch (``epoch``), then, once finished, the closing evaluation row
        (``"evaluation": "best_checkpoint"``: val and test metrics of the best checkpoint, per band too)."""
        path = self.path / "metrics.jsonl"
        rows = []
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    rows.append(json.loads(line))
                except ValueError:  # a line torn by a kill mid-write: that epoch is redone anyway
                    continue
        return rows

    def truncate_metrics(self, last_epoch: int) -> None:
        """Drop rows after ``last_epoch`` (written after the checkpoint a resume starts from)."""
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return
        # the closing evaluation row (no "epoch") is rewritten when the run finishes again
        kept = [r for r in self.read_metrics() if "epoch" in r and r["epoch"] <= last_epoch]
        atomic_write(path, "".join(json.dumps(r) + "\n" for r in kept))

    def write_predictions(self, split: str, samples, labels, probs, classes: list[str],
                          extra: dict[str, list] | None = None) -> Path:
        """``predictions_<split>.csv``: one row per sample; ``extra`` adds columns (name → per-sample values)."""
        extra = extra or {}
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["index", "path", "sha1", "label", "pred", *[f"prob_{c}" for c in classes], *extra])
        for i, (s, y, p) in enumerate(zip(samples, labels, probs)):
            w.writerow([i, s.path, s.sha1, classes[int(y)], classes[int(p.argmax())],
                        *[f"{float(v):.6f}" for v in p], *[col[i] for col in extra.values()]])
        path = self.path / f"predictions_{split}.csv"
        atomic_write(path, buf.getvalue())
        return path


class RunLockedError(RuntimeError):
    """Another process already writes this run directory (one line naming the holder)."""


def acquire_lock(run: RunDir):
    """Take the run directory's exclusive lock (an OS file lock: it dies with its process).

    Raises :class:`RunLockedError` at once, naming the holder's host, pid and SLURM job id.
    Returns the held ``filelock.FileLock``; call ``release()`` when done.
    """
    from filelock import FileLock, Timeout

    lock = FileLock(str(run.path / ".lock"), timeout=0)
    holder_file = run.path / ".lock.holder"
    try:
        lock.acquire()
    except Timeout:
        try:
            h = read_json(holder_file)
        except (OSError, ValueError):
            h = {}
        raise RunLockedError(f"{run.path} is in use by host {h.get('host', '?')} pid {h.get('pid', '?')} "
                             f"SLURM job {h.get('slurm_job_id') or '-'}; wait for it or choose another run_dir") from None
    write_json(holder_file, {"host": socket.gethostname(), "pid": os.getpid(),
                             "slurm_job_id": os.environ.get("SLURM_JOB_ID")})
    return lock
