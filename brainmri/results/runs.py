"""Finding runs: brainmri run dirs, W&B offline files and the W&B public API, read into ``Run``s and
de-duplicated (the run dir is the unit of truth), and a run's test predictions.

Knows nothing about training: it only reads the run-dir files and W&B records of the contract.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from brainmri.results.wandb_offline import read_offline_runs
from brainmri.rundir import RunDir

SOURCE_RANK = {"rundir": 0, "wandb-offline": 1, "wandb-api": 2}


@dataclass(eq=False)
class Run:
    """One training run, whatever source(s) it was read from."""

    id: str
    status: str  # finished | failed | running | crashed | killed | unknown
    config: dict
    summary: dict
    sources: list[str]
    history_fn: Callable[[], list[dict]] = field(default=lambda: [], repr=False)
    run_dir: Path | None = None
    start_time: float | None = None
    error: str | None = None

    @property
    def recipe(self) -> str:
        return str(self.config.get("recipe") or self.summary.get("recipe") or "unknown")

    @property
    def seed(self):
        return self.config.get("seed", self.summary.get("seed"))

    @property
    def fold(self) -> int | None:
        """The validation fold of a K-fold run (config ``data.fold``); None for one train/val split."""
        return (self.config.get("data") or {}).get("fold")

    @property
    def folds(self) -> int | None:
        """K of a K-fold run (config ``data.folds``); None for one train/val split."""
        return (self.config.get("data") or {}).get("folds")

    @property
    def test_site(self) -> str | None:
        """The site held out as the test part (config ``data.test_site``; a leave-one-site-out run)."""
        return (self.config.get("data") or {}).get("test_site")

    @property
    def replicate(self) -> tuple:
        """(fold, seed): which replicate of its configuration the run is (a held-out site counts as its fold)."""
        return (self.fold if self.test_site is None else f"site {self.test_site}", self.seed)

    @property
    def finished(self) -> bool:
        return self.status == "finished" and bool(self.summary)

    def history(self) -> list[dict]:
        return self.history_fn()


# ---------------------------------------------------------------- sources

def find_run_dirs(*roots: str | Path) -> list[Path]:
    """brainmri run dirs under ``roots`` (recursive; a run's own wandb/ and checkpoints/ are not entered)."""
    found = []
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not RunDir.skip_when_searching(d))
            if RunDir.is_run_dir(dirpath, set(filenames)):
                found.append(Path(dirpath))
    return found


def read_run_dir(d: str | Path) -> Run:
    """Read one brainmri run dir; its state is :meth:`brainmri.rundir.RunDir.state`'s."""
    run = RunDir(d)
    state = run.state()
    summary = run.read_summary() or {}
    config = summary.pop("config", None) if summary else None
    if config is None:
        config = run.read_config()
    wandb_id = summary.get("wandb_id")
    if not wandb_id:  # unfinished runs have no summary; the offline file name carries the id
        files = sorted(run.wandb_dir.glob("offline-run-*/run-*.wandb")) if run.wandb_dir.is_dir() else []
        wandb_id = files[0].stem.removeprefix("run-") if files else None
    # without W&B the directory itself is the identity: task ids repeat across sweeps with the same grid
    # a run a full disk stopped shows as "failed: no space" (brainmri.rundir.RunState.label)
    return Run(id=wandb_id or str(run.path.resolve()), status=state.label if state.status else "unknown",
               config=config or {}, summary=summary if state.finished else {},
               sources=[f"rundir:{run.path}"], history_fn=run.epoch_rows,
               run_dir=run.path, start_time=run.started_at, error=state.error)


def runs_from_offline(*roots: str | Path) -> list[Run]:
    """Runs from W&B offline ``run-*.wandb`` files under ``roots`` (resumed pieces merged)."""
    runs = []
    for r in read_offline_runs(*roots):
        history = r["history"]
        runs.append(Run(id=r["run_id"], status=r["state"], config=r["config"], summary=r["summary"],
                        sources=[f"wandb-offline:{f}" for f in r["files"]],
                        history_fn=_rows(history), start_time=r["start_time"],
                        error="; ".join(r["errors"]) or None))
    return runs


def _rows(history: list[dict]) -> Callable[[], list[dict]]:
    return lambda: history


def _scanned(run: Any) -> Callable[[], list[dict]]:
    return lambda: list(run.scan_history())


def api_filters(group: str | None = None, tags: Iterable[str] = ()) -> dict:
    """MongoDB-style filters for ``wandb.Api().runs``: the group, and every tag."""
    clauses: list[dict[str, Any]] = [{"group": group}] if group else []
    clauses += [{"tags": {"$in": [t]}} for t in tags]
    return {"$and": clauses} if len(clauses) > 1 else (clauses[0] if clauses else {})


def runs_from_api(project: str, entity: str | None = None, group: str | None = None,
                  tags: Iterable[str] = (), api=None) -> list[Run]:
    """Runs from the W&B public API. ``api`` defaults to ``wandb.Api()`` (needs network + key).

    History is fetched lazily with ``scan_history()`` (unsampled), only when a plot needs it.
    """
    if api is None:
        import wandb
        api = wandb.Api()
    path = f"{entity}/{project}" if entity else project
    runs = []
    for r in api.runs(path, filters=api_filters(group, tags)):
        summary = getattr(r, "summary_metrics", None)
        summary = dict(summary if summary is not None else r.summary)
        config = {k: v for k, v in dict(r.config).items() if k != "_wandb"}
        runs.append(Run(id=r.id, status=r.state, config=config,
                        summary={k: v for k, v in summary.items() if k != "_wandb"},
                        sources=[f"wandb-api:{path}/{r.id}"],
                        history_fn=_scanned(r)))
    return runs


def deduplicate(runs: Iterable[Run]) -> list[Run]:
    """One Run per id (W&B id, else brainmri run_id, else dir).

    Precedence: run dir > offline file > API (the run dir is the unit of truth); the kept Run
    lists every source it was seen in.
    """
    by_id: dict[str, list[Run]] = {}
    for r in runs:
        by_id.setdefault(r.id, []).append(r)
    out = []
    for group in by_id.values():
        group.sort(key=lambda r: SOURCE_RANK[r.sources[0].split(":")[0]])
        best = group[0]
        best.sources = [s for r in group for s in r.sources]
        best.run_dir = next((r.run_dir for r in group if r.run_dir), None)
        best.start_time = next((r.start_time for r in group if r.start_time), best.start_time)
        out.append(best)
    return out


def collect_runs(paths: Iterable[str | Path] = (), wandb_project: str | None = None,
                 wandb_entity: str | None = None, group: str | None = None,
                 tags: Iterable[str] = (), api=None) -> list[Run]:
    """All runs from run dirs and offline W&B files under ``paths`` plus the W&B API, de-duplicated.

    Example: ``collect_runs(["sweeps/lr"])`` or ``collect_runs(wandb_project="brainmri", group="lr")``
    """
    paths = list(paths)
    runs = [read_run_dir(d) for d in find_run_dirs(*paths)] + runs_from_offline(*paths)
    if wandb_project:
        runs += runs_from_api(wandb_project, wandb_entity, group, tags, api)
    if group:  # keep the local sources consistent with the API filter
        runs = [r for r in runs if r.config.get("wandb", {}).get("group", group) == group
                or r.sources[0].startswith("wandb-api")]
    return deduplicate(runs)


@functools.lru_cache(maxsize=256)
def _read_predictions(path: str, mtime_ns: int, size: int) -> pd.DataFrame:
    return pd.read_csv(path)


def load_predictions(run: Run) -> pd.DataFrame | None:
    """A run's test predictions (read once per version of the file; treat the frame as read-only)."""
    path = RunDir(run.run_dir).predictions_file("test") if run.run_dir else None
    try:
        st = path.stat() if path else None
    except OSError:
        return None
    return _read_predictions(str(path), st.st_mtime_ns, st.st_size) if st else None


def run_name(run: Run) -> str:
    """The run dir's name, else the run's id."""
    return run.run_dir.name if run.run_dir else run.id
