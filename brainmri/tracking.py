"""The run directory and Weights & Biases logging (rank 0 only).

Owns every file a run leaves behind except checkpoints: resolved config, ``metrics.jsonl``,
``summary.json``, ``status.json``, predictions, skipped-file report, and the W&B run.
Files that a resume or the collector reads are written tmp → ``os.replace``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import sys
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger("brainmri")


def write_json(path: str | Path, data: Any) -> None:
    """Atomic JSON write; NaN (e.g. AUC with a class missing) becomes null, which any tool can read."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(_jsonable(data), indent=2, sort_keys=False, default=str, allow_nan=False))
    os.replace(tmp, path)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


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
    def best_checkpoint(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def summary_file(self) -> Path:
        return self.path / "summary.json"

    def set_status(self, status: str, epoch: int = 0, error: str | None = None) -> None:
        write_json(self.path / "status.json", {"status": status, "epoch": epoch, "error": error})

    def append_metrics(self, row: dict[str, Any]) -> None:
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(_jsonable(row)) + "\n")

    def truncate_metrics(self, last_epoch: int) -> None:
        """Drop rows after ``last_epoch`` (written after the checkpoint a resume starts from)."""
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:  # a line torn by a kill mid-write: that epoch is redone anyway
                continue
        kept = [r for r in rows if r.get("epoch", 0) <= last_epoch]
        tmp = path.with_name(".metrics.jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, path)

    def write_predictions(self, split: str, samples, labels, probs, classes: list[str]) -> None:
        path = self.path / f"predictions_{split}.csv"
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["index", "path", "sha1", "label", "pred", *[f"prob_{c}" for c in classes],
                        "nearest_train", "similarity", "band"])
            for i, (s, y, p) in enumerate(zip(samples, labels, probs)):
                sim = getattr(s, "similarity", None)
                w.writerow([i, s.path, s.sha1, classes[int(y)], classes[int(p.argmax())],
                            *[f"{float(v):.6f}" for v in p], getattr(s, "nearest_train", None) or "",
                            "" if sim is None else f"{sim:.4f}", getattr(s, "band", None) or ""])
        os.replace(tmp, path)


def setup_logging(run_dir: Path | None, is_main: bool) -> None:
    """Log to stderr and ``run_dir/train.log`` on rank 0; other ranks log warnings only."""
    for handler in list(log.handlers):  # a second fit() in one process must not leak file handles
        handler.close()
        log.removeHandler(handler)
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    log.propagate = False
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(fmt)
    log.addHandler(stream)
    if run_dir is not None and is_main:
        fh = logging.FileHandler(run_dir / "train.log")
        fh.setFormatter(fmt)
        log.addHandler(fh)


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


class WandbRun:
    """A W&B run on rank 0; a no-op elsewhere or when disabled.

    Honours ``WANDB_MODE``; with no mode set and no API key the run is written offline.
    ``run_id`` is stored in the checkpoint so a resumed job continues the same W&B run.
    """

    def __init__(self, cfg, run_dir: Path, run_id: str | None, enabled: bool):
        self.run = None
        self.run_id = run_id
        if not (enabled and cfg.wandb.enabled) or os.environ.get("WANDB_MODE") == "disabled":
            return
        import wandb

        if not os.environ.get("WANDB_MODE") and not _has_api_key():
            os.environ["WANDB_MODE"] = "offline"
        self.run_id = run_id or uuid.uuid4().hex[:8]
        self.run = wandb.init(
            project=cfg.wandb.project, entity=cfg.wandb.entity, group=cfg.wandb.group,
            job_type=cfg.wandb.job_type or cfg.recipe, name=cfg.wandb.name or run_dir.name,
            tags=list(cfg.wandb.tags), config=cfg.to_dict(), id=self.run_id, resume="allow",
            dir=str(run_dir), settings=wandb.Settings(console="off", x_disable_stats=True),
        )
        log.info("W&B run %s (%s)", self.run_id, os.environ.get("WANDB_MODE", "online"))

    def log(self, row: dict[str, Any], step: int) -> None:
        if self.run is not None:
            self.run.log({k: v for k, v in row.items() if v is not None}, step=step, commit=True)

    def log_image(self, key: str, path: Path, step: int | None = None) -> None:
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Image(str(path))}, step=step, commit=True)

    def summary(self, values: dict[str, Any]) -> None:
        if self.run is not None:
            for k, v in values.items():
                if isinstance(v, (int, float, str, bool)) or v is None:
                    self.run.summary[k] = v

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None
