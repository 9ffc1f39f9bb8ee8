"""Collect finished brainmri runs and compare recipes honestly.

Owns: run discovery (brainmri run dirs, W&B offline dirs, W&B public API), de-duplication,
model selection on the validation metric, replicate statistics (a replicate is a (fold, seed)
pair; fold is None for one train/val split), complete fold sets, the data-provenance check, the
corrected resampled t-test over folds, the paired McNemar test and the ensemble of a chosen
configuration's replicates (the mean of their test probabilities, from their test predictions).
Rendering (Markdown/CSV/LaTeX, plots, W&B report) lives in brainmri/report.py.
Knows nothing about training: it only reads the run-dir files and W&B records of the contract.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
from scipy import stats

from brainmri.config import RUNTIME_KEYS
from brainmri.config import flatten as flatten_config
from brainmri.data.leakage import BANDS
from brainmri.metric_names import TIE_BREAK, choice_key, lower_is_better
from brainmri.results import metrics as M
from brainmri.results.wandb_offline import read_offline_runs
from brainmri.rundir import RunDir

# Config keys that differ between runs without defining a different model: the seed (the replicate
# axis) and every key that only changes how a run runs (brainmri.config.RUNTIME_KEYS).
NOT_SWEPT = ("seed", "run_id", *RUNTIME_KEYS)
REPLICATE_KEYS = ("seed", "data.fold", "data.test_site")  # a replicate: a (fold or held-out site, seed) pair
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


# ---------------------------------------------------------------- statistics

def flatten(d: dict) -> dict:
    """Dotted keys; list values as JSON text so they can be compared and grouped."""
    return {k: json.dumps(v) if isinstance(v, list) else v for k, v in flatten_config(d).items()}


def not_swept(key: str) -> bool:
    """Whether dotted ``key`` never defines a configuration: a replicate axis (seed, data.fold) or a
    key that only changes how a run runs."""
    return key in REPLICATE_KEYS or key.startswith(NOT_SWEPT)


def swept_keys(runs: list[Run]) -> list[str]:
    """Config keys (dotted) whose value differs across ``runs``, ignoring seed/fold/paths/W&B settings."""
    flat = [flatten(r.config) for r in runs]
    keys = sorted(set().union(*flat)) if flat else []
    return [k for k in keys if not not_swept(k)
            and len({repr(f.get(k)) for f in flat}) > 1]


def mean_ci(values: Iterable[float | None], level: float = 0.95, bounds: tuple[float, float] | None = None,
            rho: float = 0.0) -> dict:
    """Mean, sample std (ddof=1) and the t-distribution CI of the mean over replicates.

    ``rho`` > 0 (K-fold replicates: n_test/n_train of a fold) widens the interval as the corrected
    resampled t of Nadeau & Bengio (2003) does: half-width ``t(n-1) · std · sqrt(1/n + rho)``
    instead of ``t(n-1) · std / sqrt(n)``, because folds share most of their training images.
    ``bounds`` clips the interval to the metric's range (a rate cannot exceed 1): with 2–3
    replicates the t-interval is wide and would otherwise print impossible values.
    """
    x = np.asarray([v for v in values if v is not None], dtype=float)
    n = len(x)
    if n == 0:
        return {"mean": math.nan, "std": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}
    mean, std = float(x.mean()), float(x.std(ddof=1)) if n > 1 else math.nan
    if n > 1 and std > 0 and rho > 0:
        half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * std * math.sqrt(1 / n + rho)
        lo, hi = mean - half, mean + half
    elif n > 1 and std > 0:
        lo, hi = stats.t.interval(level, n - 1, loc=mean, scale=stats.sem(x))
    else:  # one replicate: no spread to estimate; identical replicates: a zero-width interval
        lo, hi = (mean, mean) if n > 1 else (math.nan, math.nan)
    if bounds is not None and n > 1:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return {"mean": mean, "std": std, "ci_low": float(lo), "ci_high": float(hi), "n": n}


def is_count(metric: str) -> bool:
    """Image counts: ``n``, ``band/<band>/n``, ``support/<class>``."""
    return metric == "n" or metric.endswith("/n") or metric.startswith("support/")


def metric_bounds(metric: str) -> tuple[float, float] | None:
    """Rates (accuracy, F1, AUC, ECE, recall …) live in [0, 1]; a loss or a count (``…/n``) does not."""
    return None if "loss" in metric or is_count(metric) else (0.0, 1.0)


@dataclass
class RecipeResult:
    recipe: str
    keys: list[str]                  # swept config keys
    chosen: tuple                    # their values for the chosen configuration
    split: str                       # "test", or "val" when no run has a test split
    runs: list[Run]                  # the chosen configuration, one run per replicate (fold, seed)
    stats: dict[str, dict]           # metric name -> mean_ci(...) over the replicates
    per_value: list[dict]            # one entry per swept value: value, runs, folds, seeds, rho, selection, stats
    folds: int | None = None         # K of the chosen configuration's K-fold runs (None: one split)
    rho: float = 0.0                 # n_test/n_train of its folds (corrected resampled t); 0 without folds
    ensemble: dict | None = None     # the replicates' ensemble on the test split (``ensemble_result``)

    @property
    def seeds(self) -> int:
        return len({repr(r.seed) for r in self.runs})


@dataclass
class Comparison:
    metric: str
    recipes: list[RecipeResult]      # best first (by the validation metric of the choice)
    incomplete: list[Run]
    mcnemar: dict | None = None      # McNemar of the best two recipes (= paired[0]["mcnemar"])
    notes: list[str] = field(default_factory=list)
    paired: list[dict] = field(default_factory=list)  # every other recipe vs the best: corrected t, McNemar
    incomplete_folds: list[dict] = field(default_factory=list)  # configurations x seeds missing folds
    loso: list[dict] = field(default_factory=list)  # leave-one-site-out: per recipe, each held-out site and the mean


def value_label(keys: list[str], value: tuple) -> str:
    return ", ".join(f"{k}={v}" for k, v in zip(keys, value, strict=True)) or "-"


def _metric_names(runs: list[Run], split: str) -> list[str]:
    per_class = sorted({k.removeprefix(f"{split}/") for r in runs for k in r.summary
                        if k.startswith((f"{split}/recall/", f"{split}/precision/", f"{split}/f1/",
                                         f"{split}/support/"))})
    # metrics by similarity to the training images (brainmri.data.leakage bands), when runs carry them
    bands = [f"band/{b}/{m}" for b in BANDS for m in ("acc", "n", "macro_f1")
             if any(f"{split}/band/{b}/{m}" in r.summary for r in runs)]
    counts = ["n"] if any(f"{split}/n" in r.summary for r in runs) else []
    return list(METRICS) + counts + bands + per_class


def _replicate_stats(runs: list[Run], split: str, rho: float = 0.0) -> dict[str, dict]:
    return {m: mean_ci((r.summary.get(f"{split}/{m}") for r in runs), bounds=metric_bounds(m),
                       rho=0.0 if is_count(m) else rho)
            for m in _metric_names(runs, split)}


def _replicate_label(fold, seed) -> str:
    return f"seed {seed}" if fold is None else f"fold {fold} seed {seed}"


def _latest_per_replicate(runs: list[Run], notes: list[str]) -> list[Run]:
    """One run per (fold, seed): the one started last (a rerun supersedes the older run)."""
    by_rep: dict = {}
    for r in sorted(runs, key=lambda r: r.start_time or 0):
        if r.replicate in by_rep:
            notes.append(f"{r.recipe} {_replicate_label(*r.replicate)}: run {by_rep[r.replicate].id} "
                         f"superseded by {r.id}")
        by_rep[r.replicate] = r
    return sorted(by_rep.values(), key=lambda r: (repr(r.seed), repr(r.fold)))


def complete_folds(runs: list[Run]) -> tuple[list[Run], list[dict]]:
    """(replicates to average, incomplete fold sets): a seed of a K-fold configuration counts only
    when all K folds of it finished; each seed that lacks some is listed, never averaged.
    Runs without folds (one train/val split) pass through."""
    by_seed: dict[tuple, list[Run]] = {}
    for r in runs:
        by_seed.setdefault((r.folds, repr(r.seed)), []).append(r)
    keep, missing = [], []
    for (k, _), rs in sorted(by_seed.items(), key=repr):
        if not k:
            keep += rs
            continue
        have = sorted({r.fold for r in rs if isinstance(r.fold, int)})
        lacking = sorted(set(range(k)) - set(have))
        if lacking:
            missing.append({"seed": rs[0].seed, "folds": k, "finished": have, "missing": lacking})
        else:
            keep += rs
    return keep, missing


def fold_overlap(runs: list[Run]) -> float:
    """n_test/n_train of the corrected resampled t-test (Nadeau & Bengio, 2003) for complete K-fold
    replicates: each fold's held-out (validation) images over its training images, averaged. The
    folds of one seed partition the training pool, so its size is the sum of their ``val/n``;
    without ``val/n`` in the summaries, 1/(K-1). 0 for runs without folds (one split, seeds only)."""
    ks = {r.folds for r in runs}
    k = next(iter(ks))
    if len(ks) != 1 or not k:
        return 0.0
    sizes = [r.summary.get("val/n") for r in runs]
    if not all(isinstance(n, (int, float)) and n > 0 for n in sizes):
        return 1.0 / (k - 1)
    ns = cast(list[float], sizes)
    pool: dict[str, float] = {}
    for r, n in zip(runs, ns, strict=True):
        pool[repr(r.seed)] = pool.get(repr(r.seed), 0) + n
    return float(np.mean([n / (pool[repr(r.seed)] - n) for r, n in zip(runs, ns, strict=True)]))


class MixedDataError(ValueError):
    """Runs to be pooled or paired were trained on different data; the message names two of them."""


def _data_digest(run: Run) -> str | None:
    manifest = run.summary.get("data_manifest")
    return manifest.get("data") if isinstance(manifest, dict) else None


def _run_name(run: Run) -> str:
    return run.run_dir.name if run.run_dir else run.id


def check_data(runs: list[Run], allow_mixed: bool = False, notes: list[str] | None = None) -> None:
    """Refuse runs trained on different data (the summary's ``data_manifest["data"]``, a digest of
    every file's relative path and content hash): one ``MixedDataError`` line naming two runs, the
    replicates of one recipe first; with ``allow_mixed`` a note instead. Runs without a manifest
    (older brainmri) are not checked, and a note says how many."""
    notes = notes if notes is not None else []
    digests = {r: _data_digest(r) for r in runs}
    unknown = sum(d is None for d in digests.values())
    if unknown and unknown < len(runs):
        notes.append(f"{unknown} of {len(runs)} finished run(s) carry no data manifest (written by an older "
                     "brainmri): their data could not be checked")
    known = [r for r in runs if digests[r]]
    by_recipe: dict[str, list[Run]] = {}
    for r in known:
        by_recipe.setdefault(r.recipe, []).append(r)
    clash = None
    for recipe, rs in sorted(by_recipe.items()):
        first = rs[0]
        other = next((r for r in rs if digests[r] != digests[first]), None)
        if other is not None:
            clash = (f"replicates of {recipe}", first, other)
            break
    if clash is None and len({digests[r] for r in known}) > 1:
        first = known[0]
        clash = ("recipes", first, next(r for r in known if digests[r] != digests[first]))
    if clash is None:
        return
    what, a, b = clash
    n = len({digests[r] for r in known})
    msg = (f"{what} were trained on different data: runs {_run_name(a)} and {_run_name(b)} "
           f"(data manifests {str(digests[a])[:12]} vs {str(digests[b])[:12]}; {n} different over {len(known)} runs); "
           "collect them separately or pass --allow-mixed-data")
    if not allow_mixed:
        raise MixedDataError(msg)
    notes.append("pooled despite different data (--allow-mixed-data): " + msg.split("; collect")[0])


def compare(runs: list[Run], metric: str = "val/acc", by: list[str] | None = None,
            allow_mixed_data: bool = False, min_seeds: int = 1) -> Comparison:
    """Select, per recipe, the swept value with the best mean ``metric`` over its replicates
    (validation; a replicate is a (fold, seed) pair, so over folds and seeds), then summarize the
    test metrics of that choice only.

    Unfinished runs never enter the averages; they are returned in ``incomplete``. A seed of a
    K-fold configuration with fewer than K finished folds is never averaged: it is listed in
    ``incomplete_folds`` (a configuration with no complete seed cannot be chosen). Runs trained on
    different data are refused (``MixedDataError``) unless ``allow_mixed_data``. With ``min_seeds``
    only configurations run over that many seeds are chosen (a search's ``--confirm-seeds``: the verdict
    does not rest on one lucky trial), unless a recipe has none (a note says so). Ties in the
    selection metric are broken by the one choice rule (``brainmri.metric_names.choice_key``: the
    lower validation loss, then the earlier search trial or start, then the first value in sorted
    order). Recipes are ranked by the validation
    metric of their chosen configuration, never by test; every other recipe is compared with the
    best by the corrected resampled t-test over common (fold, seed) pairs and McNemar per pair.

    Example: ``compare(collect_runs(["sweeps/lr"]), metric="val/acc").recipes[0].stats["acc"]``
    """
    # evaluations on other data (launch/evaluate.py's folders under a run or a sweep) are no training runs
    runs = [r for r in runs if not r.summary.get("evaluated")]
    done = [r for r in runs if r.finished and metric in r.summary]
    incomplete = [r for r in runs if r not in done]
    for r in incomplete:
        if r.finished:
            r.error = r.error or f"summary has no {metric}"
    cmp = Comparison(metric=metric, recipes=[], incomplete=incomplete)
    check_data(done, allow_mixed_data, cmp.notes)
    sign = -1 if lower_is_better(metric) else 1
    for recipe in sorted({r.recipe for r in done}):
        mine = [r for r in done if r.recipe == recipe]
        keys = list(by) if by else swept_keys(mine)
        groups: dict[tuple, list[Run]] = {}
        for r in mine:
            flat = flatten(r.config)
            groups.setdefault(tuple(flat.get(k) for k in keys), []).append(r)
        split = "test" if all("test/acc" in r.summary for r in mine) else "val"
        per_value: list[dict[str, Any]] = []
        for value in sorted(groups, key=repr):
            reps, missing = complete_folds(_latest_per_replicate(groups[value], cmp.notes))
            cmp.incomplete_folds += [{"recipe": recipe, "config": value_label(keys, value), **m} for m in missing]
            if not reps:
                continue
            rho = fold_overlap(reps)
            ks = {r.folds for r in reps}
            per_value.append({"value": value, "runs": reps, "folds": ks.pop() if len(ks) == 1 else None,
                              "seeds": len({repr(r.seed) for r in reps}), "rho": rho,
                              "selection": mean_ci((r.summary[metric] for r in reps), bounds=metric_bounds(metric),
                                                   rho=rho),
                              "stats": _replicate_stats(reps, split, rho)})
        if not per_value:
            cmp.notes.append(f"{recipe}: no configuration has a complete set of folds; not compared")
            continue
        eligible = [v for v in per_value if v["seeds"] >= min_seeds]
        if min_seeds > 1:
            cmp.notes.append(f"{recipe}: chosen among configurations run over >= {min_seeds} seeds" if eligible else
                             f"{recipe}: no configuration was run over {min_seeds} seeds; chosen among all")
        best = min(eligible or per_value, key=lambda v: choice_key(
            v["selection"]["mean"], _mean(r.summary.get(TIE_BREAK) for r in v["runs"]),
            _earliest(v["runs"]), "maximize" if sign > 0 else "minimize"))
        cmp.recipes.append(RecipeResult(recipe, keys, best["value"], split, best["runs"],
                                        best["stats"], per_value, best["folds"], best["rho"],
                                        ensemble_result(best["runs"]) if split == "test" else None))
        ensemble = cmp.recipes[-1].ensemble or {}
        if ensemble.get("reason"):
            cmp.notes.append(f"{recipe}: no ensemble row ({ensemble['reason']})")
        if split == "val":
            cmp.notes.append(f"{recipe}: no test split; VALIDATION metrics reported (optimistic: "
                             f"the same split chose {value_label(keys, best['value'])})")
    cmp.recipes.sort(key=lambda rr: -sign * _selection(rr)["mean"])
    for other in cmp.recipes[1:]:
        cmp.paired.append({"a": cmp.recipes[0].recipe, "b": other.recipe,
                           "ttest": corrected_ttest(cmp.recipes[0], other),
                           "mcnemar": compare_predictions(cmp.recipes[0], other)})
    if cmp.paired:
        cmp.mcnemar = cmp.paired[0]["mcnemar"]
    cmp.loso = leave_one_site_out(cmp.recipes)
    return cmp


LOSO_METRICS = ("acc", "macro_f1", "auc", "n")


def leave_one_site_out(recipes: list[RecipeResult]) -> list[dict]:
    """Per recipe whose chosen configuration held sites out (``data.test_site``, a sweep's ``folds: sites``):
    one row per held-out site (its test metrics, averaged over seeds) and a ``mean`` row over the sites."""
    rows = []
    for rr in recipes:
        by_site: dict[str, list[Run]] = {}
        for r in rr.runs:
            if r.test_site is not None and "test/acc" in r.summary:
                by_site.setdefault(str(r.test_site), []).append(r)
        if not by_site:
            continue
        site_rows: list[dict[str, Any]] = []
        for site in sorted(by_site):
            runs = by_site[site]
            row: dict[str, Any] = {"recipe": rr.recipe, "held_out_site": site, "runs": len(runs)}
            for m in LOSO_METRICS:
                values = [r.summary[f"test/{m}"] for r in runs if f"test/{m}" in r.summary]
                row[m] = float(np.mean(values)) if values else None
            site_rows.append(row)
        mean: dict[str, Any] = {"recipe": rr.recipe, "held_out_site": "mean", "runs": sum(r["runs"] for r in site_rows)}
        for m in LOSO_METRICS:
            values = [r[m] for r in site_rows if r[m] is not None]
            mean[m] = float(np.mean(values)) if values else None
        rows += site_rows + [mean]
    return rows


def _mean(values: Iterable) -> float | None:
    finite = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def _earliest(runs: list[Run]) -> tuple:
    """A configuration's place in time for the choice rule's last criterion: its earliest search trial
    (W&B tag ``trial-<n>``), else its earliest start."""
    trials = [int(t[6:]) for r in runs for t in (r.config.get("wandb") or {}).get("tags") or []
              if isinstance(t, str) and t.startswith("trial-") and t[6:].isdigit()]
    starts = [r.start_time for r in runs if r.start_time]
    return (min(trials, default=math.inf), min(starts, default=math.inf))


def _selection(rr: RecipeResult) -> dict:
    return next(v["selection"] for v in rr.per_value if v["value"] == rr.chosen)


def selection_stats(rr: RecipeResult) -> dict:
    """The selection metric of ``rr``'s chosen configuration: ``mean_ci`` over its replicates."""
    return _selection(rr)


# ---------------------------------------------------------------- corrected resampled t-test

SPLIT_KEYS = ("data.folds", "data.split_seed", "data.group_by", "data.root")  # what decides a run's folds


def _same_folds(ra: Run, rb: Run) -> bool:
    """Whether two runs of one (fold, seed) validated on the same images: the val manifests when both
    summaries carry them, else the config keys that draw the folds."""
    ma, mb = ra.summary.get("data_manifest"), rb.summary.get("data_manifest")
    if isinstance(ma, dict) and isinstance(mb, dict) and ma.get("val") and mb.get("val"):
        return ma["val"] == mb["val"]
    fa, fb = flatten(ra.config), flatten(rb.config)
    return all(fa.get(k) == fb.get(k) for k in SPLIT_KEYS)


def corrected_ttest(a: RecipeResult, b: RecipeResult, metric: str = "acc") -> dict:
    """Corrected resampled t-test (Nadeau & Bengio, 2003) of ``a`` vs ``b`` over their common
    (fold, seed) replicates, paired replicate by replicate on ``<split>/<metric>``.

    With J pairs, differences d_j, their mean d̄ and sample variance s²: t = d̄ / sqrt((1/J + ρ) s²),
    J - 1 degrees of freedom, two-sided p; ρ = n_test/n_train of the folds (``fold_overlap``),
    which allows for the training images folds share. Needs K-fold runs of both recipes on the
    same folds; otherwise ``reason`` says why there is no test.
    """
    key = f"{a.split}/{metric}"
    out: dict = {"a": a.recipe, "b": b.recipe, "metric": key, "reason": None}
    if a.split != b.split:
        out["reason"] = "the recipes report different splits"
    elif not a.folds or not b.folds:
        out["reason"] = "not cross-validated (no data.folds): see McNemar"
    elif a.folds != b.folds:
        out["reason"] = f"different numbers of folds ({a.folds} vs {b.folds})"
    if out["reason"]:
        return out
    ra, rb = {r.replicate: r for r in a.runs}, {r.replicate: r for r in b.runs}
    common = sorted(set(ra) & set(rb), key=repr)
    unpaired = [k for k in common if not _same_folds(ra[k], rb[k])]
    if unpaired:
        out["reason"] = (f"{_replicate_label(*unpaired[0])}: the recipes validated on different images "
                         "(data.split_seed, data.group_by or the data differ), not paired")
        return out
    common = [k for k in common if ra[k].summary.get(key) is not None and rb[k].summary.get(key) is not None]
    if len(common) < 2:
        out["reason"] = f"{len(common)} common (fold, seed) pair(s); the test needs 2"
        return out
    d = np.array([ra[k].summary[key] - rb[k].summary[key] for k in common], dtype=float)
    j, mean, var = len(d), float(d.mean()), float(d.var(ddof=1))
    rho = (a.rho + b.rho) / 2
    se = math.sqrt((1 / j + rho) * var)
    if se > 0:
        t = mean / se
        p = float(2 * stats.t.sf(abs(t), j - 1))
    else:  # identical differences: no spread to test against
        t, p = (0.0, 1.0) if mean == 0 else (math.copysign(math.inf, mean), 0.0)
    out.update(pairs=j, diff=mean, std=math.sqrt(var), rho=rho, t=float(t), df=j - 1, p=p,
               mean_a=float(np.mean([ra[k].summary[key] for k in common])),
               mean_b=float(np.mean([rb[k].summary[key] for k in common])))
    return out


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
    """McNemar between two recipes' chosen configurations, one test per common replicate (fold, seed).

    Rule: replicates are never pooled (each image would appear once per replicate, so pooled pairs
    are not independent); every (fold, seed) present in both recipes gets its own test on the
    shared test set, matched image by image on ``path`` (``index`` when paths are missing). The
    report lists all per-replicate p-values (``seeds``: one entry per replicate, with its fold).
    """
    out: dict[str, Any] = {"a": first.recipe, "b": second.recipe, "seeds": [], "reason": None}
    if first.split != "test" or second.split != "test":
        out["reason"] = "no test split"
        return out
    runs_b = {r.replicate: r for r in second.runs}
    for ra in sorted(first.runs, key=lambda r: (str(r.seed), str(r.fold))):
        rb = runs_b.get(ra.replicate)
        pa, pb = load_predictions(ra), (load_predictions(rb) if rb else None)
        if pa is None or pb is None:
            continue
        key = "path" if pa["path"].notna().all() and pb["path"].notna().all() else "index"
        m = pa.merge(pb, on=key, suffixes=("_a", "_b"))
        if (m["label_a"] != m["label_b"]).any():
            out["seeds"].append({"seed": ra.seed, "fold": ra.fold, "error": "labels differ for matched images"})
            continue
        res = mcnemar(m["pred_a"] == m["label_a"], m["pred_b"] == m["label_b"])
        out["seeds"].append({"seed": ra.seed, "fold": ra.fold, "n": len(m), "unmatched": len(pa) + len(pb) - 2 * len(m),
                             "acc_a": float((m["pred_a"] == m["label_a"]).mean()),
                             "acc_b": float((m["pred_b"] == m["label_b"]).mean()), **res})
    if not out["seeds"]:
        out["reason"] = "no common (fold, seed) with test predictions in both recipes"
    return out


# ---------------------------------------------------------------- ensembles

def _max_similarity_rows(sims: np.ndarray) -> np.ndarray:
    """Per image, the member whose training images hold its most similar one (NaN similarity: never)."""
    filled = np.where(np.isnan(sims), -np.inf, sims)
    return filled.argmax(axis=0)


def ensemble_predictions(runs: list[Run]) -> tuple[pd.DataFrame | None, str | None]:
    """The members' test predictions averaged image by image: (frame, None) or (None, why not).

    Each member's test predictions are matched on ``path`` (the test set is shared); the
    frame has ``path``, ``label``, ``pred``, one ``prob_<class>`` per class (the mean of the
    members' softmax probabilities) and, when the members carry them, ``nearest_train``,
    ``similarity`` and ``band`` of the member whose training images hold the most similar image —
    the nearest training image in the union of the members' training images.
    """
    frames = []
    for r in runs:
        f = load_predictions(r)
        if f is None:
            return None, f"run {_run_name(r)} has no test predictions"
        frames.append(f)
    cols = [c for c in frames[0].columns if c.startswith("prob_")]
    if not cols:
        return None, "the members' test predictions carry no probabilities"
    first = frames[0]
    for r, f in zip(runs, frames, strict=True):
        if [c for c in f.columns if c.startswith("prob_")] != cols:
            return None, f"run {_run_name(r)} predicts other classes than run {_run_name(runs[0])}"
        if "path" not in f or f["path"].isna().any() or f["path"].duplicated().any() \
                or set(f["path"]) != set(first["path"]):
            return None, f"runs {_run_name(runs[0])} and {_run_name(r)} were tested on different images"
    aligned = [f.set_index("path").loc[first["path"]] for f in frames]
    if any((a["label"].to_numpy() != aligned[0]["label"].to_numpy()).any() for a in aligned):
        return None, "the members' test labels differ for the same images"
    probs = np.mean([a[cols].to_numpy(dtype=np.float64) for a in aligned], axis=0)
    classes = [c.removeprefix("prob_") for c in cols]
    out = pd.DataFrame({"path": first["path"].to_numpy(), "label": aligned[0]["label"].to_numpy(),
                        "pred": [classes[k] for k in probs.argmax(1)]})
    for k, c in enumerate(cols):
        out[c] = probs[:, k]
    if all({"similarity", "band"} <= set(a.columns) for a in aligned):
        sims = np.stack([pd.to_numeric(a["similarity"], errors="coerce").to_numpy(dtype=float) for a in aligned])
        pick = _max_similarity_rows(sims)
        rows = np.arange(len(out))
        for col in ("nearest_train", "similarity", "band"):
            if all(col in a.columns for a in aligned):
                out[col] = np.stack([a[col].to_numpy(dtype=object) for a in aligned])[pick, rows]
    return out, None


def ensemble_result(runs: list[Run]) -> dict | None:
    """The ensemble of ``runs`` (a chosen configuration's replicates) on the test split: ``members``,
    ``metrics`` (``test/...`` as a run's summary has them, per band too), ``stats`` (metric ->
    a one-replicate ``mean_ci``-shaped dict, as the tables print them) and ``reason`` (why there is
    none: then ``metrics`` is empty). None for a single run."""
    if len(runs) < 2:
        return None
    out: dict[str, Any] = {"members": len(runs), "runs": [_run_name(r) for r in runs],
           "replicates": [list(r.replicate) for r in runs], "metrics": {}, "stats": {}, "reason": None}
    frame, reason = ensemble_predictions(runs)
    if reason or frame is None:
        out["reason"] = reason
        return out
    classes = [c.removeprefix("prob_") for c in frame.columns if c.startswith("prob_")]
    index = {c: i for i, c in enumerate(classes)}
    labels = frame["label"].map(index)
    if labels.isna().any():
        out["reason"] = "a test label is not one of the predicted classes"
        return out
    labels, probs = labels.to_numpy(dtype=int), frame[[f"prob_{c}" for c in classes]].to_numpy()
    values = M.classification_metrics(labels, probs, classes, "test")
    if "band" in frame:
        values.update(M.band_metrics(labels, probs, frame["band"].fillna("novel").tolist(), classes, "test", BANDS))
    out["metrics"] = values
    out["stats"] = {k.removeprefix("test/"): {"mean": float(v), "std": math.nan, "ci_low": math.nan,
                                              "ci_high": math.nan, "n": 1} for k, v in values.items()}
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
