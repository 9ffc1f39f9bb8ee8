"""Selection: per recipe, the swept configuration with the best mean validation metric over its
complete replicates, the data-provenance check, and the comparison of the chosen configurations.

A replicate is a (fold, seed) pair (fold is None for one train/val split); a seed of a K-fold
configuration counts only with all K folds finished. Test metrics are reported for the choice only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

from brainmri.config import RUNTIME_KEYS
from brainmri.config import flatten as flatten_config
from brainmri.data.leakage import BANDS
from brainmri.metric_names import TIE_BREAK, choice_key, lower_is_better
from brainmri.results.comparison import (
    Comparison,
    IncompleteFolds,
    PairedTest,
    RecipeResult,
    Stat,
    ValuePoint,
    replicate_label,
    value_label,
)
from brainmri.results.ensembles import ensemble_result
from brainmri.results.runs import Run, run_name
from brainmri.results.stats import (
    compare_predictions,
    corrected_ttest,
    fold_overlap,
    is_count,
    leave_one_site_out,
    mean_ci,
    metric_bounds,
)

# Config keys that differ between runs without defining a different model: the seed (the replicate
# axis) and every key that only changes how a run runs (brainmri.config.RUNTIME_KEYS).
NOT_SWEPT = ("seed", "run_id", *RUNTIME_KEYS)
REPLICATE_KEYS = ("seed", "data.fold", "data.test_site")  # a replicate: a (fold or held-out site, seed) pair
METRICS = ("acc", "macro_f1", "auc", "ece")


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


def config_differences(recipes: list[RecipeResult]) -> dict[str, dict[str, Any]]:
    """Config key -> recipe -> value ("–" where a recipe has no such key) for every key (seed, fold and
    runtime keys aside) whose value differs between the recipes' chosen configurations."""
    flats = {rr.recipe: flatten(rr.runs[0].config) for rr in recipes if rr.runs}
    keys = sorted(set().union(*flats.values())) if flats else []
    return {k: {rec: f.get(k, "–") for rec, f in flats.items()} for k in keys
            if not not_swept(k) and len({repr(f.get(k)) for f in flats.values()}) > 1}


def _metric_names(runs: list[Run], split: str) -> list[str]:
    per_class = sorted({k.removeprefix(f"{split}/") for r in runs for k in r.summary
                        if k.startswith((f"{split}/recall/", f"{split}/precision/", f"{split}/f1/",
                                         f"{split}/support/"))})
    # metrics by similarity to the training images (brainmri.data.leakage bands), when runs carry them
    bands = [f"band/{b}/{m}" for b in BANDS for m in ("acc", "n", "macro_f1")
             if any(f"{split}/band/{b}/{m}" in r.summary for r in runs)]
    # metrics per acquisition site (a manifest's ``site`` column), when runs carry them
    sites = sorted({k.removeprefix(f"{split}/").rpartition("/")[0] for r in runs for k in r.summary
                    if k.startswith(f"{split}/site/")})
    per_site = [f"{s}/{m}" for s in sites for m in ("acc", "n", "macro_f1")
                if any(f"{split}/{s}/{m}" in r.summary for r in runs)]
    counts = ["n"] if any(f"{split}/n" in r.summary for r in runs) else []
    return list(METRICS) + counts + bands + per_site + per_class


def replicate_stats(runs: list[Run], split: str, rho: float = 0.0) -> dict[str, Stat]:
    """Every reported metric of ``split`` over the replicates (counts without the fold correction)."""
    return {m: mean_ci((r.summary.get(f"{split}/{m}") for r in runs), bounds=metric_bounds(m),
                       rho=0.0 if is_count(m) else rho)
            for m in _metric_names(runs, split)}


def latest_per_replicate(runs: list[Run], notes: list[str]) -> list[Run]:
    """One run per (fold, seed): the one started last (a rerun supersedes the older run)."""
    by_rep: dict = {}
    for r in sorted(runs, key=lambda r: r.start_time or 0):
        if r.replicate in by_rep:
            notes.append(f"{r.recipe} {replicate_label(*r.replicate)}: run {by_rep[r.replicate].id} "
                         f"superseded by {r.id}")
        by_rep[r.replicate] = r
    return sorted(by_rep.values(), key=lambda r: (repr(r.seed), repr(r.fold)))


def complete_folds(runs: list[Run]) -> tuple[list[Run], list[dict[str, Any]]]:
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


# ---------------------------------------------------------------- data provenance

class MixedDataError(ValueError):
    """Runs to be pooled or paired were trained on different data; the message names two of them."""


def _data_digest(run: Run) -> str | None:
    manifest = run.summary.get("data_manifest")
    return manifest.get("data") if isinstance(manifest, dict) else None


def _data_clash(known: list[Run], digests: dict[Run, str | None]) -> tuple[str, Run, Run] | None:
    """Two runs on different data, the replicates of one recipe first."""
    by_recipe: dict[str, list[Run]] = {}
    for r in known:
        by_recipe.setdefault(r.recipe, []).append(r)
    for recipe, rs in sorted(by_recipe.items()):
        other = next((r for r in rs if digests[r] != digests[rs[0]]), None)
        if other is not None:
            return f"replicates of {recipe}", rs[0], other
    if len({digests[r] for r in known}) > 1:
        return "recipes", known[0], next(r for r in known if digests[r] != digests[known[0]])
    return None


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
    clash = _data_clash(known, digests)
    if clash is None:
        return
    what, a, b = clash
    n = len({digests[r] for r in known})
    msg = (f"{what} were trained on different data: runs {run_name(a)} and {run_name(b)} "
           f"(data manifests {str(digests[a])[:12]} vs {str(digests[b])[:12]}; {n} different over {len(known)} runs); "
           "collect them separately or pass --allow-mixed-data")
    if not allow_mixed:
        raise MixedDataError(msg)
    notes.append("pooled despite different data (--allow-mixed-data): " + msg.split("; collect")[0])


# ---------------------------------------------------------------- the comparison

def _value_points(cmp: Comparison, recipe: str, keys: list[str], mine: list[Run], split: str) -> list[ValuePoint]:
    """One ``ValuePoint`` per swept value with complete replicates; incomplete fold sets go to ``cmp``."""
    groups: dict[tuple, list[Run]] = {}
    for r in mine:
        flat = flatten(r.config)
        groups.setdefault(tuple(flat.get(k) for k in keys), []).append(r)
    points = []
    for value in sorted(groups, key=repr):
        reps, missing = complete_folds(latest_per_replicate(groups[value], cmp.notes))
        cmp.incomplete_folds += [IncompleteFolds(recipe=recipe, config=value_label(keys, value), **m) for m in missing]
        if not reps:
            continue
        rho = fold_overlap(reps)
        ks = {r.folds for r in reps}
        points.append(ValuePoint(
            value=value, runs=reps, folds=ks.pop() if len(ks) == 1 else None,
            seeds=len({repr(r.seed) for r in reps}), rho=rho,
            selection=mean_ci((r.summary[cmp.metric] for r in reps), bounds=metric_bounds(cmp.metric), rho=rho),
            stats=replicate_stats(reps, split, rho)))
    return points


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


def _choose(cmp: Comparison, recipe: str, points: list[ValuePoint], min_seeds: int) -> ValuePoint:
    """The best point by the one choice rule (``brainmri.metric_names.choice_key``: the mean selection
    metric, then the lower validation loss, then the earlier search trial or start, then the first value
    in sorted order), among those run over ``min_seeds`` seeds when any was."""
    direction = "minimize" if lower_is_better(cmp.metric) else "maximize"
    eligible = [v for v in points if v.seeds >= min_seeds]
    if min_seeds > 1:
        cmp.notes.append(f"{recipe}: chosen among configurations run over >= {min_seeds} seeds" if eligible else
                         f"{recipe}: no configuration was run over {min_seeds} seeds; chosen among all")
    return min(eligible or points, key=lambda v: choice_key(
        v.selection.mean, _mean(r.summary.get(TIE_BREAK) for r in v.runs), _earliest(v.runs), direction))


def _recipe(cmp: Comparison, recipe: str, mine: list[Run], by: list[str] | None, min_seeds: int) -> None:
    """Choose ``recipe``'s configuration and add its ``RecipeResult`` (or a note why not) to ``cmp``."""
    keys = list(by) if by else swept_keys(mine)
    split = "test" if all("test/acc" in r.summary for r in mine) else "val"
    points = _value_points(cmp, recipe, keys, mine, split)
    if not points:
        cmp.notes.append(f"{recipe}: no configuration has a complete set of folds; not compared")
        return
    best = _choose(cmp, recipe, points, min_seeds)
    rr = RecipeResult(recipe, keys, best.value, split, best.runs, best.stats, points, best.folds, best.rho,
                      ensemble_result(best.runs) if split == "test" else None)
    cmp.recipes.append(rr)
    if rr.ensemble is not None and rr.ensemble.reason:
        cmp.notes.append(f"{recipe}: no ensemble row ({rr.ensemble.reason})")
    if split == "val":
        cmp.notes.append(f"{recipe}: no test split; VALIDATION metrics reported (optimistic: "
                         f"the same split chose {value_label(keys, best.value)})")


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

    Example: ``compare(collect_runs(["sweeps/lr"]), metric="val/acc").recipes[0].stats["acc"].mean``
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
    for recipe in sorted({r.recipe for r in done}):
        _recipe(cmp, recipe, [r for r in done if r.recipe == recipe], by, min_seeds)
    sign = -1 if lower_is_better(metric) else 1
    cmp.recipes.sort(key=lambda rr: -sign * rr.selection.mean)
    best = cmp.recipes[0] if cmp.recipes else None
    cmp.paired = [PairedTest(a=best.recipe, b=other.recipe, ttest=corrected_ttest(best, other),
                             mcnemar=compare_predictions(best, other))
                  for other in cmp.recipes[1:]] if best else []
    if cmp.paired:
        cmp.mcnemar = cmp.paired[0].mcnemar
    cmp.loso = leave_one_site_out(cmp.recipes)
    return cmp


def selection_stats(rr: RecipeResult) -> Stat:
    """The selection metric of ``rr``'s chosen configuration over its replicates."""
    return rr.selection
