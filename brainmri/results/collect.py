"""Collect finished brainmri runs and compare recipes honestly.

Owns: run discovery (brainmri run dirs, W&B offline dirs, W&B public API), de-duplication,
model selection on the validation metric, seed statistics and the paired McNemar test.
Rendering (Markdown/CSV/LaTeX, plots, W&B report) lives in brainmri/report.py.
Knows nothing about training: it only reads the run-dir files and W&B records of the contract.
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
from scipy import stats

from brainmri.config import RUNTIME_KEYS
from brainmri.config import flatten as flatten_config
from brainmri.data.leakage import BANDS
from brainmri.results.wandb_offline import read_offline_runs
from brainmri.rundir import RunDir

# Config keys that differ between runs without defining a different model: the seed (the replicate
# axis) and every key that only changes how a run runs (brainmri.config.RUNTIME_KEYS).
NOT_SWEPT = ("seed", "run_id", *RUNTIME_KEYS)
METRICS = ("acc", "macro_f1", "auc", "ece")
SOURCE_RANK = {"rundir": 0, "wandb-offline": 1, "wandb-api": 2}
EXACT_MCNEMAR_BELOW = 25  # discordant pairs; below this the chi-square approximation is poor


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
    return Run(id=wandb_id or str(run.path.resolve()), status=state.status or "unknown",
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
                        history_fn=lambda h=history: h, start_time=r["start_time"],
                        error="; ".join(r["errors"]) or None))
    return runs


def api_filters(group: str | None = None, tags: Iterable[str] = ()) -> dict:
    """MongoDB-style filters for ``wandb.Api().runs``: the group, and every tag."""
    clauses = [{"group": group}] if group else []
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
                        history_fn=lambda r=r: list(r.scan_history())))
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


# ---------------------------------------------------------------- statistics

def flatten(d: dict) -> dict:
    """Dotted keys; list values as JSON text so they can be compared and grouped."""
    return {k: json.dumps(v) if isinstance(v, list) else v for k, v in flatten_config(d).items()}


def swept_keys(runs: list[Run]) -> list[str]:
    """Config keys (dotted) whose value differs across ``runs``, ignoring seed/paths/W&B settings."""
    flat = [flatten(r.config) for r in runs]
    keys = sorted(set().union(*flat)) if flat else []
    return [k for k in keys if not k.startswith(NOT_SWEPT)
            and len({repr(f.get(k)) for f in flat}) > 1]


def mean_ci(values: Iterable[float], level: float = 0.95, bounds: tuple[float, float] | None = None) -> dict:
    """Mean, sample std (ddof=1) and the t-distribution CI of the mean over seeds.

    ``bounds`` clips the interval to the metric's range (a rate cannot exceed 1): with 2–3 seeds
    the t-interval is wide and would otherwise print impossible values.
    """
    x = np.asarray([v for v in values if v is not None], dtype=float)
    n = len(x)
    if n == 0:
        return {"mean": math.nan, "std": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}
    mean, std = float(x.mean()), float(x.std(ddof=1)) if n > 1 else math.nan
    if n > 1 and std > 0:
        lo, hi = stats.t.interval(level, n - 1, loc=mean, scale=stats.sem(x))
    else:  # one seed: no spread to estimate; identical seeds: a zero-width interval
        lo, hi = (mean, mean) if n > 1 else (math.nan, math.nan)
    if bounds is not None and n > 1:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return {"mean": mean, "std": std, "ci_low": float(lo), "ci_high": float(hi), "n": n}


def metric_bounds(metric: str) -> tuple[float, float] | None:
    """Rates (accuracy, F1, AUC, ECE, recall …) live in [0, 1]; a loss or a count (``…/n``) does not."""
    return None if "loss" in metric or metric.endswith("/n") else (0.0, 1.0)


def lower_is_better(metric: str) -> bool:
    return any(w in metric for w in ("loss", "ece", "error"))


@dataclass
class RecipeResult:
    recipe: str
    keys: list[str]                  # swept config keys
    chosen: tuple                    # their values for the chosen configuration
    split: str                       # "test", or "val" when no run has a test split
    runs: list[Run]                  # the chosen configuration, one run per seed
    stats: dict[str, dict]           # metric name -> mean_ci(...)
    per_value: list[dict]            # one entry per swept value: value, runs, selection, stats


@dataclass
class Comparison:
    metric: str
    recipes: list[RecipeResult]      # best first (by the validation metric of the choice)
    incomplete: list[Run]
    mcnemar: dict | None = None
    notes: list[str] = field(default_factory=list)


def value_label(keys: list[str], value: tuple) -> str:
    return ", ".join(f"{k}={v}" for k, v in zip(keys, value)) or "-"


def _metric_names(runs: list[Run], split: str) -> list[str]:
    recalls = sorted({k.removeprefix(f"{split}/") for r in runs for k in r.summary
                      if k.startswith(f"{split}/recall/")})
    # accuracy by similarity to the training images (brainmri.data.leakage bands), when runs carry it
    bands = [f"band/{b}/{m}" for b in BANDS for m in ("acc", "n")
             if any(f"{split}/band/{b}/{m}" in r.summary for r in runs)]
    return list(METRICS) + bands + recalls


def _seed_stats(runs: list[Run], split: str) -> dict[str, dict]:
    return {m: mean_ci((r.summary.get(f"{split}/{m}") for r in runs), bounds=metric_bounds(m))
            for m in _metric_names(runs, split)}


def _latest_per_seed(runs: list[Run], notes: list[str]) -> list[Run]:
    by_seed: dict = {}
    for r in sorted(runs, key=lambda r: r.start_time or 0):
        if r.seed in by_seed:
            notes.append(f"{r.recipe} seed {r.seed}: run {by_seed[r.seed].id} superseded by {r.id}")
        by_seed[r.seed] = r
    return list(by_seed.values())


def compare(runs: list[Run], metric: str = "val/acc", by: list[str] | None = None) -> Comparison:
    """Select, per recipe, the swept value with the best mean ``metric`` over seeds (validation),
    then summarize the test metrics of that choice only.

    Unfinished runs never enter the averages; they are returned in ``incomplete``. Ties in the
    selection metric go to the first value in sorted order. Recipes are ranked by the
    validation metric of their chosen configuration, never by test.

    Example: ``compare(collect_runs(["sweeps/lr"]), metric="val/acc").recipes[0].stats["acc"]``
    """
    done = [r for r in runs if r.finished and metric in r.summary]
    incomplete = [r for r in runs if r not in done]
    for r in incomplete:
        if r.finished:
            r.error = r.error or f"summary has no {metric}"
    cmp = Comparison(metric=metric, recipes=[], incomplete=incomplete)
    sign = -1 if lower_is_better(metric) else 1
    for recipe in sorted({r.recipe for r in done}):
        mine = [r for r in done if r.recipe == recipe]
        keys = list(by) if by else swept_keys(mine)
        groups: dict[tuple, list[Run]] = {}
        for r in mine:
            flat = flatten(r.config)
            groups.setdefault(tuple(flat.get(k) for k in keys), []).append(r)
        split = "test" if all("test/acc" in r.summary for r in mine) else "val"
        per_value = []
        for value in sorted(groups, key=repr):
            seeds = _latest_per_seed(groups[value], cmp.notes)
            per_value.append({"value": value, "runs": seeds,
                              "selection": mean_ci((r.summary[metric] for r in seeds), bounds=metric_bounds(metric)),
                              "stats": _seed_stats(seeds, split)})
        best = max(per_value, key=lambda v: sign * v["selection"]["mean"])
        cmp.recipes.append(RecipeResult(recipe, keys, best["value"], split, best["runs"],
                                        best["stats"], per_value))
        if split == "val":
            cmp.notes.append(f"{recipe}: no test split; VALIDATION metrics reported (optimistic: "
                             f"the same split chose {value_label(keys, best['value'])})")
    cmp.recipes.sort(key=lambda rr: -sign * _selection(rr)["mean"])
    if len(cmp.recipes) >= 2:
        cmp.mcnemar = compare_predictions(cmp.recipes[0], cmp.recipes[1])
    return cmp


def _selection(rr: RecipeResult) -> dict:
    return next(v["selection"] for v in rr.per_value if v["value"] == rr.chosen)


# ---------------------------------------------------------------- McNemar

def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """Paired McNemar test on per-image correctness of two classifiers.

    Exact two-sided binomial test when there are fewer than 25 discordant pairs, else the
    chi-square statistic with continuity correction, (|b - c| - 1)^2 / (b + c), 1 dof.
    """
    a, b_ = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    b, c = int(np.sum(a & ~b_)), int(np.sum(~a & b_))
    if b + c == 0:
        return {"b": b, "c": c, "method": "exact", "statistic": 0.0, "p": 1.0}
    if b + c < EXACT_MCNEMAR_BELOW:
        return {"b": b, "c": c, "method": "exact", "statistic": float(min(b, c)),
                "p": float(stats.binomtest(min(b, c), b + c, 0.5).pvalue)}
    stat = (abs(b - c) - 1) ** 2 / (b + c)
    return {"b": b, "c": c, "method": "chi2-cc", "statistic": float(stat), "p": float(stats.chi2.sf(stat, 1))}


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


def compare_predictions(first: RecipeResult, second: RecipeResult) -> dict:
    """McNemar between two recipes' chosen configurations, one test per common seed.

    Rule: seeds are never pooled (each image would appear once per seed, so pooled pairs are
    not independent); every seed present in both recipes gets its own test, matched image by
    image on ``path`` (``index`` when paths are missing). The report lists all per-seed p-values.
    """
    out = {"a": first.recipe, "b": second.recipe, "seeds": [], "reason": None}
    if first.split != "test" or second.split != "test":
        out["reason"] = "no test split"
        return out
    runs_b = {r.seed: r for r in second.runs}
    for ra in sorted(first.runs, key=lambda r: str(r.seed)):
        rb = runs_b.get(ra.seed)
        pa, pb = load_predictions(ra), (load_predictions(rb) if rb else None)
        if pa is None or pb is None:
            continue
        key = "path" if pa["path"].notna().all() and pb["path"].notna().all() else "index"
        m = pa.merge(pb, on=key, suffixes=("_a", "_b"))
        if (m["label_a"] != m["label_b"]).any():
            out["seeds"].append({"seed": ra.seed, "error": "labels differ for matched images"})
            continue
        res = mcnemar(m["pred_a"] == m["label_a"], m["pred_b"] == m["label_b"])
        out["seeds"].append({"seed": ra.seed, "n": len(m), "unmatched": len(pa) + len(pb) - 2 * len(m),
                             "acc_a": float((m["pred_a"] == m["label_a"]).mean()),
                             "acc_b": float((m["pred_b"] == m["label_b"]).mean()), **res})
    if not out["seeds"]:
        out["reason"] = "no common seed with predictions_test.csv in both recipes"
    return out


# ---------------------------------------------------------------- compute cost

def run_cost(run: Run) -> dict:
    """Wall time (sum of epoch times), mean images/s and CPU-hours of one run from its history."""
    hist = run.history()
    wall = float(sum(h.get("time/epoch_s", 0.0) or 0.0 for h in hist))
    ips = [h["throughput/images_per_s"] for h in hist if h.get("throughput/images_per_s")]
    gpus = int((run.config.get("slurm") or {}).get("gpus_per_node") or 0)
    kind = "GPU-h" if gpus else "CPU-h"
    return {"wall_s": wall, "images_per_s": float(np.mean(ips)) if ips else math.nan,
            "hours": wall / 3600 * max(gpus, 1), "kind": kind}
