"""Statistics of a comparison: intervals over replicates, the corrected resampled t-test over folds,
McNemar per replicate, Holm's adjustment of every pairwise test, and calibration (reliability bins
and the one ECE, ``brainmri.results.metrics.expected_calibration_error``).

A replicate is a (fold, seed) pair; fold is None for one train/val split. The writers
(``report``, ``report_latex``, ``report_html``) draw what these return and compute nothing.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import cast

import numpy as np
import pandas as pd
from scipy import stats

from brainmri.config import flatten as flatten_config
from brainmri.results.comparison import (
    LosoRow,
    McNemar,
    McNemarTest,
    PairwiseMcNemar,
    RecipeResult,
    ReplicateMcNemar,
    Stat,
    TTest,
    replicate_label,
)
from brainmri.results.metrics import ECE_BINS, calibration_bins
from brainmri.results.runs import Run, load_predictions

EXACT_MCNEMAR_BELOW = 25  # discordant pairs; below this the chi-square approximation is poor
SPLIT_KEYS = ("data.folds", "data.split_seed", "data.group_by", "data.root")  # what decides a run's folds


def mean_ci(values: Iterable[float | None], level: float = 0.95, bounds: tuple[float, float] | None = None,
            rho: float = 0.0) -> Stat:
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
        return Stat()
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
    return Stat(mean=mean, std=std, ci_low=float(lo), ci_high=float(hi), n=n)


def is_count(metric: str) -> bool:
    """Image counts: ``n``, ``band/<band>/n``, ``support/<class>``."""
    return metric == "n" or metric.endswith("/n") or metric.startswith("support/")


def metric_bounds(metric: str) -> tuple[float, float] | None:
    """Rates (accuracy, F1, AUC, ECE, recall …) live in [0, 1]; a loss or a count (``…/n``) does not."""
    return None if "loss" in metric or is_count(metric) else (0.0, 1.0)


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


# ---------------------------------------------------------------- corrected resampled t-test

def _same_folds(ra: Run, rb: Run) -> bool:
    """Whether two runs of one (fold, seed) validated on the same images: the val manifests when both
    summaries carry them, else the config keys that draw the folds."""
    ma, mb = ra.summary.get("data_manifest"), rb.summary.get("data_manifest")
    if isinstance(ma, dict) and isinstance(mb, dict) and ma.get("val") and mb.get("val"):
        return bool(ma["val"] == mb["val"])
    fa, fb = flatten_config(ra.config), flatten_config(rb.config)
    return all(fa.get(k) == fb.get(k) for k in SPLIT_KEYS)


def _ttest_refusal(a: RecipeResult, b: RecipeResult) -> str | None:
    if a.split != b.split:
        return "the recipes report different splits"
    if not a.folds or not b.folds:
        return "not cross-validated (no data.folds): see McNemar"
    if a.folds != b.folds:
        return f"different numbers of folds ({a.folds} vs {b.folds})"
    return None


def corrected_ttest(a: RecipeResult, b: RecipeResult, metric: str = "acc") -> TTest:
    """Corrected resampled t-test (Nadeau & Bengio, 2003) of ``a`` vs ``b`` over their common
    (fold, seed) replicates, paired replicate by replicate on ``<split>/<metric>``.

    With J pairs, differences d_j, their mean d̄ and sample variance s²: t = d̄ / sqrt((1/J + ρ) s²),
    J - 1 degrees of freedom, two-sided p; ρ = n_test/n_train of the folds (``fold_overlap``),
    which allows for the training images folds share. Needs K-fold runs of both recipes on the
    same folds; otherwise ``reason`` says why there is no test.
    """
    key = f"{a.split}/{metric}"
    out = TTest(a=a.recipe, b=b.recipe, metric=key, reason=_ttest_refusal(a, b))
    if out.reason:
        return out
    ra, rb = {r.replicate: r for r in a.runs}, {r.replicate: r for r in b.runs}
    common = sorted(set(ra) & set(rb), key=repr)
    unpaired = [k for k in common if not _same_folds(ra[k], rb[k])]
    if unpaired:
        return replace(out, reason=f"{replicate_label(*unpaired[0])}: the recipes validated on different images "
                                   "(data.split_seed, data.group_by or the data differ), not paired")
    common = [k for k in common if ra[k].summary.get(key) is not None and rb[k].summary.get(key) is not None]
    if len(common) < 2:
        return replace(out, reason=f"{len(common)} common (fold, seed) pair(s); the test needs 2")
    xa = np.array([ra[k].summary[key] for k in common], dtype=float)
    xb = np.array([rb[k].summary[key] for k in common], dtype=float)
    d = np.array([ra[k].summary[key] - rb[k].summary[key] for k in common], dtype=float)
    j, mean, var = len(d), float(d.mean()), float(d.var(ddof=1))
    rho = (a.rho + b.rho) / 2
    se = math.sqrt((1 / j + rho) * var)
    if se > 0:
        t = mean / se
        p = float(2 * stats.t.sf(abs(t), j - 1))
    else:  # identical differences: no spread to test against
        t, p = (0.0, 1.0) if mean == 0 else (math.copysign(math.inf, mean), 0.0)
    return replace(out, pairs=j, diff=mean, std=math.sqrt(var), rho=rho, t=float(t), df=j - 1, p=p,
                   mean_a=float(np.mean(xa)), mean_b=float(np.mean(xb)))


# ---------------------------------------------------------------- McNemar

def mcnemar(correct_a: np.ndarray | pd.Series, correct_b: np.ndarray | pd.Series) -> McNemarTest:
    """Paired McNemar test on per-image correctness of two classifiers.

    Exact two-sided binomial test when there are fewer than 25 discordant pairs, else the
    chi-square statistic with continuity correction, (|b - c| - 1)^2 / (b + c), 1 dof.
    """
    a, b_ = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    b, c = int(np.sum(a & ~b_)), int(np.sum(~a & b_))
    if b + c == 0:
        return McNemarTest(b=b, c=c, method="exact", statistic=0.0, p=1.0)
    if b + c < EXACT_MCNEMAR_BELOW:
        return McNemarTest(b=b, c=c, method="exact", statistic=float(min(b, c)),
                           p=float(stats.binomtest(min(b, c), b + c, 0.5).pvalue))
    stat = (abs(b - c) - 1) ** 2 / (b + c)
    return McNemarTest(b=b, c=c, method="chi2-cc", statistic=float(stat), p=float(stats.chi2.sf(stat, 1)))


def _replicate_mcnemar(ra: Run, rb: Run | None) -> ReplicateMcNemar | None:
    """McNemar of two runs of one replicate on their shared test images (None without predictions)."""
    pa, pb = load_predictions(ra), (load_predictions(rb) if rb else None)
    if pa is None or pb is None:
        return None
    key = "path" if pa["path"].notna().all() and pb["path"].notna().all() else "index"
    m = pa.merge(pb, on=key, suffixes=("_a", "_b"))
    if (m["label_a"] != m["label_b"]).any():
        return ReplicateMcNemar(seed=ra.seed, fold=ra.fold, error="labels differ for matched images")
    ca, cb = m["pred_a"] == m["label_a"], m["pred_b"] == m["label_b"]
    return ReplicateMcNemar(seed=ra.seed, fold=ra.fold, n=len(m), unmatched=len(pa) + len(pb) - 2 * len(m),
                            acc_a=float(ca.mean()), acc_b=float(cb.mean()), test=mcnemar(ca, cb))


def compare_predictions(first: RecipeResult, second: RecipeResult) -> McNemar:
    """McNemar between two recipes' chosen configurations, one test per common replicate (fold, seed).

    Rule: replicates are never pooled (each image would appear once per replicate, so pooled pairs
    are not independent); every (fold, seed) present in both recipes gets its own test on the
    shared test set, matched image by image on ``path`` (``index`` when paths are missing). The
    report lists all per-replicate p-values (one entry per replicate, with its fold).
    """
    out = McNemar(a=first.recipe, b=second.recipe)
    if first.split != "test" or second.split != "test":
        out.reason = "no test split"
        return out
    runs_b = {r.replicate: r for r in second.runs}
    for ra in sorted(first.runs, key=lambda r: (str(r.seed), str(r.fold))):
        res = _replicate_mcnemar(ra, runs_b.get(ra.replicate))
        if res is not None:
            out.replicates.append(res)
    if not out.replicates:
        out.reason = "no common (fold, seed) with test predictions in both recipes"
    return out


# ---------------------------------------------------------------- leave one site out

LOSO_METRICS = ("acc", "macro_f1", "auc", "n")


def _mean_or_none(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _loso_rows(recipe: str, by_site: dict[str, list[Run]]) -> list[LosoRow]:
    rows = []
    for site in sorted(by_site):
        runs = by_site[site]
        means = {m: _mean_or_none([r.summary[f"test/{m}"] for r in runs if f"test/{m}" in r.summary])
                 for m in LOSO_METRICS}
        rows.append(LosoRow(recipe=recipe, held_out_site=site, runs=len(runs), **means))
    mean = {m: _mean_or_none([v for r in rows if (v := getattr(r, m)) is not None]) for m in LOSO_METRICS}
    return [*rows, LosoRow(recipe=recipe, held_out_site="mean", runs=sum(r.runs for r in rows), **mean)]


def leave_one_site_out(recipes: list[RecipeResult]) -> list[LosoRow]:
    """Per recipe whose chosen configuration held sites out (``data.test_site``, a sweep's ``folds: sites``):
    one row per held-out site (its test metrics, averaged over seeds) and a ``mean`` row over the sites."""
    rows = []
    for rr in recipes:
        by_site: dict[str, list[Run]] = {}
        for r in rr.runs:
            if r.test_site is not None and "test/acc" in r.summary:
                by_site.setdefault(str(r.test_site), []).append(r)
        if by_site:
            rows += _loso_rows(rr.recipe, by_site)
    return rows


# ---------------------------------------------------------------- every pair, Holm-adjusted

def holm(pvalues: list[float]) -> list[float]:
    """Holm step-down adjusted p-values (same order as given)."""
    order = np.argsort(pvalues)
    m, adj, running = len(pvalues), [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adj[i] = running
    return adj


def _paired_correct(pa: pd.DataFrame, pb: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per-image correctness of two runs on their common test images, matched on path."""
    if len(pa) == len(pb) and (pa["path"].to_numpy() == pb["path"].to_numpy()).all():
        return ((pa["pred"] == pa["label"]).to_numpy(), (pb["pred"] == pb["label"]).to_numpy())
    m = pa.merge(pb, on="path", suffixes=("_a", "_b"))
    return (m["pred_a"] == m["label_a"]).to_numpy(), (m["pred_b"] == m["label_b"]).to_numpy()


def pairwise_mcnemar(recipes: list[RecipeResult]) -> list[PairwiseMcNemar]:
    """McNemar between every pair of recipes (chosen configurations), per common (fold, seed),
    Holm-adjusted over all of them."""
    rows = []
    for a, b in itertools.combinations(recipes, 2):
        rb = {r.replicate: r for r in b.runs}
        for ra in sorted(a.runs, key=lambda r: (str(r.seed), str(r.fold))):
            if ra.replicate not in rb:
                continue
            pa, pb = load_predictions(ra), load_predictions(rb[ra.replicate])
            if pa is None or pb is None:
                continue
            ca, cb = _paired_correct(pa, pb)
            rows.append(PairwiseMcNemar(a=a.recipe, b=b.recipe, fold=ra.fold, seed=ra.seed, n=len(ca),
                                        acc_a=float(ca.mean()) if len(ca) else math.nan,
                                        acc_b=float(cb.mean()) if len(cb) else math.nan, test=mcnemar(ca, cb)))
    adjusted = holm([r.test.p for r in rows])
    return [replace(r, p_holm=p) for r, p in zip(rows, adjusted, strict=True)]


@dataclass(frozen=True)
class PairwiseTTest:
    """The corrected t-test of one pair of recipes and its Holm-adjusted p."""

    test: TTest
    p_holm: float


def pairwise_ttest(recipes: list[RecipeResult]) -> list[PairwiseTTest]:
    """The corrected resampled t-test between every pair of recipes over their common (fold, seed)
    pairs, Holm-adjusted over the pairs that have one."""
    tests = [t for a, b in itertools.combinations(recipes, 2) if (t := corrected_ttest(a, b)).reason is None]
    return [PairwiseTTest(t, p) for t, p in zip(tests, holm([t.p for t in tests]), strict=True)]


# ---------------------------------------------------------------- pooled predictions: confusion, calibration

def _class_index(values: pd.Series, classes: list[str]) -> np.ndarray:
    """Class indices of a predictions column, which holds class names (the engine) or indices."""
    if pd.api.types.is_integer_dtype(values):
        return values.to_numpy()
    index = {c: i for i, c in enumerate(classes)}
    for v in pd.unique(values):
        index.setdefault(v, len(index))
    return values.map(index).to_numpy()


def confusion(frame: pd.DataFrame, classes: list[str]) -> tuple[np.ndarray, list[str]]:
    """Confusion counts (true x predicted) of predictions pooled over replicates, and the class names
    (indices as names when ``classes`` is empty; a class outside ``classes`` is appended)."""
    label, pred = _class_index(frame["label"], classes), _class_index(frame["pred"], classes)
    k = max(len(classes), int(max(label.max(), pred.max())) + 1)
    counts = np.zeros((k, k), int)
    np.add.at(counts, (label, pred), 1)
    return counts, classes or [str(i) for i in range(k)]


@dataclass(frozen=True)
class Reliability:
    """Per non-empty confidence bin: mean confidence and accuracy; and the ECE over all images."""

    confidence: list[float]
    accuracy: list[float]
    ece: float


def reliability(frame: pd.DataFrame, n_bins: int = ECE_BINS) -> Reliability | None:
    """The reliability curve of predictions (``prob_<class>`` columns, ``label``, ``pred``) pooled over
    replicates, in the bins of the one ECE (``metrics.calibration_bins``), and that ECE; None without
    probabilities."""
    cols = [c for c in frame.columns if c.startswith("prob")]
    if not cols:
        return None
    confidence = frame[cols].max(axis=1).to_numpy(dtype=np.float64)
    xs, ys, ece = calibration_bins(confidence, (frame["label"] == frame["pred"]).to_numpy(), n_bins)
    return Reliability(confidence=xs, accuracy=ys, ece=ece)
