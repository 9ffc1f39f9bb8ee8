"""The comparison's tables as frames, and the text around them: what every writer draws.

Five tables (``TABLES``): ``main`` (what a paper shows: recipe, chosen configuration, folds and
seeds as integers, validation, test, novel-band test, macro-F1, AUC, ECE as mean ± std over
replicates), ``bands`` (metrics by similarity-to-training band), ``classes`` (per-class recall,
precision, F1), ``sites`` (test metrics per acquisition site) and ``intervals`` (95 % intervals and
how they were computed); each as a display
frame rounded for people and a numeric frame at full precision. Every number comes from the
``Comparison`` (brainmri.results.comparison); nothing is computed here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import pandas as pd

from brainmri.data.leakage import BANDS
from brainmri.results.comparison import (
    EMPTY,
    Comparison,
    EnsembleResult,
    McNemar,
    PairedTest,
    RecipeResult,
    Stat,
    TTest,
    ValuePoint,
    value_label,
)

TABLES = ("main", "bands", "classes", "sites", "intervals")
NAMES = {"acc": "acc", "macro_f1": "macro-F1", "auc": "AUC", "ece": "ECE", "loss": "loss"}
# the main table's reported-split columns: metric -> header
MAIN_METRICS = {"acc": "Test acc", "band/novel/acc": "Acc novel", "macro_f1": "Macro-F1", "auc": "AUC", "ece": "ECE"}
TITLES = {"main": "Recipe comparison", "bands": "Recipe comparison by similarity-to-training band",
          "classes": "Recipe comparison per class", "sites": "Recipe comparison per site",
          "intervals": "Recipe comparison: 95 % intervals"}


def metric_label(metric: str) -> str:
    """``val/acc`` → ``Val acc``; ``band/novel/acc`` → ``Acc novel``."""
    if metric.startswith("band/"):
        _, band, what = metric.split("/")
        return f"{NAMES.get(what, what).capitalize()} {band.replace('_', '-')}"
    split, _, name = metric.rpartition("/")
    name = NAMES.get(name, name.replace("_", "-"))
    return f"{split.capitalize()} {name}" if split else name[:1].upper() + name[1:]


def table_rows(cmp: Comparison, per_value: bool) -> list[tuple[RecipeResult, ValuePoint, bool]]:
    rows = []
    for rr in cmp.recipes:
        for v in rr.per_value:
            if per_value or v.value == rr.chosen:
                rows.append((rr, v, v.value == rr.chosen))
    return rows


def mixed_split(cmp: Comparison) -> bool:
    return any(rr.split != "test" for rr in cmp.recipes)


def main_headers(cmp: Comparison) -> dict[str, str]:
    """metric -> header of the main table's reported-split columns (no "Test" when a recipe has none)."""
    if not mixed_split(cmp):
        return dict(MAIN_METRICS)
    return {m: ("Acc" if m == "acc" else h) for m, h in MAIN_METRICS.items()}


# ---------------------------------------------------------------- cells

def fmt(s: Stat, pm: str = "±", digits: int = 3) -> str:
    """'mean ± std' over replicates (just the mean for one replicate); '–' when there is none."""
    if s.n == 0 or math.isnan(s.mean):
        return "–"
    if s.n < 2 or math.isnan(s.std):
        return f"{s.mean:.{digits}f}"
    return f"{s.mean:.{digits}f} {pm} {s.std:.{digits}f}"


def fmt_interval(s: Stat, digits: int = 3) -> str:
    if s.n < 2 or math.isnan(s.ci_low):
        return "–"
    return f"[{s.ci_low:.{digits}f}, {s.ci_high:.{digits}f}]"


def fmt_count(values: Iterable[Any]) -> str:
    """An image count, once, as an integer: '30', or '28–31' when it differs between replicates."""
    xs = sorted({int(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))})
    if not xs:
        return "–"
    return str(xs[0]) if len(xs) == 1 else f"{xs[0]}–{xs[-1]}"


def fmt_p(p: float | None) -> str:
    return "–" if p is None or (isinstance(p, float) and math.isnan(p)) else f"{p:.2g}"


def _counts(rr: RecipeResult, metric: str) -> list:
    return [r.summary.get(f"{rr.split}/{metric}") for r in rr.runs]


def folds_cell(v: ValuePoint) -> int | str:
    return v.folds if v.folds else "–"


def ensemble_of(rr: RecipeResult) -> EnsembleResult | None:
    """The ensemble of ``rr``'s chosen replicates when it has test metrics (``ensembles.ensemble_result``)."""
    return rr.scored_ensemble()


def ensemble_label(rr: RecipeResult) -> str:
    return f"{rr.recipe} (ensemble of {rr.ensemble.members if rr.ensemble else 0})"


def _ens_stat(ens: EnsembleResult, metric: str) -> Stat:
    return ens.stats.get(metric, EMPTY)


# ---------------------------------------------------------------- the four tables (display and numeric)

def display_frame(cmp: Comparison, per_value: bool = False, pm: str = "±") -> pd.DataFrame:
    """The main table, rounded for people: one row per recipe (per swept value with ``per_value``)."""
    headers, mixed = main_headers(cmp), mixed_split(cmp)
    records = []
    for rr, v, chosen in table_rows(cmp, per_value):
        rec: dict[str, Any] = {"Recipe": rr.recipe,
                               "Configuration": value_label(rr.keys, v.value) + (" *" if per_value and chosen else "")}
        if mixed:
            rec["Split"] = rr.split
        rec.update({"Folds": folds_cell(v), "Seeds": v.seeds, metric_label(cmp.metric): fmt(v.selection, pm)})
        rec.update({h: fmt(v.stats.get(m, EMPTY), pm) for m, h in headers.items()})
        records.append(rec)
        ens = ensemble_of(rr) if chosen else None
        if ens:
            records.append({**rec, "Recipe": ensemble_label(rr), metric_label(cmp.metric): "–",
                            **{h: fmt(_ens_stat(ens, m), pm) for m, h in headers.items()}})
    return pd.DataFrame.from_records(records)


def _paired_columns(paired: PairedTest | None) -> dict[str, Any]:
    """The numeric main table's columns of a recipe's paired tests against the best (empty: none)."""
    t: TTest | None = paired.ttest if paired and paired.ttest.reason is None else None
    ps = paired.mcnemar.ps if paired else []
    return {"vs": paired.a if paired else None, "ttest_pairs": t.pairs if t else None,
            "ttest_diff": t.diff if t else None, "ttest_t": t.t if t else None, "ttest_df": t.df if t else None,
            "ttest_p": t.p if t else None, "ttest_rho": t.rho if t else None,
            "ttest_note": paired.ttest.reason if paired else None, "mcnemar_n": len(ps) if paired else None,
            "mcnemar_p_min": min(ps) if ps else None, "mcnemar_p_max": max(ps) if ps else None}


def _model_column(df: pd.DataFrame, before: str) -> pd.DataFrame:
    """Which rows are the mean over replicates and which the replicates' ensemble."""
    if len(df):
        df.insert(df.columns.get_loc(before), "model", df.pop("model").fillna("replicates")
                  if "model" in df else "replicates")
    return df


def results_frame(cmp: Comparison, per_value: bool = False) -> pd.DataFrame:
    """The main table at full precision: mean/std columns, counts as integers, and each recipe's
    paired tests against the best one (corrected resampled t over folds, McNemar p range)."""
    records = []
    for rr, v, chosen in table_rows(cmp, per_value):
        rec = {"recipe": rr.recipe, "config": value_label(rr.keys, v.value), "chosen": chosen,
               "split": rr.split, "folds": v.folds, "n_seeds": v.seeds, "n_replicates": len(v.runs),
               f"{cmp.metric}_mean": v.selection.mean, f"{cmp.metric}_std": v.selection.std}
        for m in MAIN_METRICS:
            s = v.stats.get(m, EMPTY)
            rec.update({f"{m}_mean": s.mean, f"{m}_std": s.std})
        rec.update(_paired_columns(cmp.paired_of(rr.recipe) if chosen else None))
        records.append(rec)
        ens = ensemble_of(rr) if chosen else None
        if ens:
            records.append({"recipe": rr.recipe, "config": rec["config"], "chosen": chosen, "model": "ensemble",
                            "split": rr.split, "folds": v.folds, "n_seeds": v.seeds, "n_replicates": ens.members,
                            **{f"{m}_mean": _ens_stat(ens, m).mean for m in MAIN_METRICS}})
    return _model_column(pd.DataFrame.from_records(records), "split")


def _bands_of(rr: RecipeResult) -> list[str]:
    return [b for b in BANDS if any(n for n in _counts(rr, f"band/{b}/n") if n)]


Cell = Callable[[Stat, str], str]


def _subset_numbers(rr: RecipeResult, column: str, name: str, pre: str) -> dict[str, Any]:
    """The numeric row of one subset of the test split (a band, a site: metrics ``<pre>n``, ``<pre>acc``,
    ``<pre>macro_f1``): the range of n over replicates, accuracy and macro-F1 mean and std."""
    n = [x for x in _counts(rr, f"{pre}n") if x is not None]
    acc, f1 = rr.stat(f"{pre}acc"), rr.stat(f"{pre}macro_f1")
    return {"recipe": rr.recipe, "config": value_label(rr.keys, rr.chosen), "split": rr.split, column: name,
            "n_min": min(n) if n else None, "n_max": max(n) if n else None, "acc_mean": acc.mean,
            "acc_std": acc.std, "macro_f1_mean": f1.mean, "macro_f1_std": f1.std, "n_replicates": acc.n}


def _band_records(rr: RecipeResult, numeric: bool, cell: Cell) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for band in ["all", *_bands_of(rr)]:
        pre = "" if band == "all" else f"band/{band}/"
        if numeric:
            records.append(_subset_numbers(rr, "band", band, pre))
        else:
            acc, f1 = rr.stat(f"{pre}acc"), rr.stat(f"{pre}macro_f1")
            records.append({"Recipe": rr.recipe, "Band": band.replace("_", "-"), "n": fmt_count(_counts(rr, f"{pre}n")),
                            "Acc": cell(acc, "acc"), "Macro-F1": cell(f1, "macro_f1")})
    return records


def _ensemble_band_records(rr: RecipeResult, numeric: bool, cell: Cell) -> list[dict[str, Any]]:
    ens = ensemble_of(rr)
    if ens is None:
        return []
    records: list[dict[str, Any]] = []
    for band in ["all", *[b for b in BANDS if _ens_stat(ens, f"band/{b}/n").mean]]:
        pre = "" if band == "all" else f"band/{band}/"
        n, acc, f1 = (_ens_stat(ens, f"{pre}{m}") for m in ("n", "acc", "macro_f1"))
        if numeric:
            records.append({"recipe": rr.recipe, "config": value_label(rr.keys, rr.chosen), "split": rr.split,
                            "model": "ensemble", "band": band, "n_min": n.mean, "n_max": n.mean,
                            "acc_mean": acc.mean, "acc_std": None, "macro_f1_mean": f1.mean,
                            "macro_f1_std": None, "n_replicates": ens.members})
        else:
            records.append({"Recipe": ensemble_label(rr), "Band": band.replace("_", "-"), "n": fmt_count([n.mean]),
                            "Acc": cell(acc, "acc"), "Macro-F1": cell(f1, "macro_f1")})
    return records


def bands_frame(cmp: Comparison, numeric: bool = False, pm: str = "±", cell: Cell | None = None) -> pd.DataFrame:
    """Per recipe (chosen configuration) and band: n (test images; a range when folds differ), accuracy
    and macro-F1 (bands of ≥ 20 images) over replicates; ``all`` is the whole test split.
    ``cell(stat, metric)`` renders a mean ± std cell (default ``fmt``)."""
    draw: Cell = cell or (lambda s, m: fmt(s, pm))
    records = [rec for rr in cmp.recipes
               for rec in _band_records(rr, numeric, draw) + _ensemble_band_records(rr, numeric, draw)]
    df = pd.DataFrame.from_records(records)
    return _model_column(df, "band") if numeric else df


def classes_frame(cmp: Comparison, numeric: bool = False, pm: str = "±", cell: Cell | None = None) -> pd.DataFrame:
    """Per recipe (chosen configuration) and class: n (support), recall, precision and F1 over replicates."""
    draw: Cell = cell or (lambda s, m: fmt(s, pm))
    records = []
    for rr in cmp.recipes:
        classes = [m.removeprefix("recall/") for m in rr.stats if m.startswith("recall/")]
        for c in classes:
            s = {k: rr.stat(f"{k}/{c}") for k in ("recall", "precision", "f1")}
            n = _counts(rr, f"support/{c}")
            if numeric:
                ns = [x for x in n if x is not None]
                rec = {"recipe": rr.recipe, "config": value_label(rr.keys, rr.chosen), "split": rr.split, "class": c,
                       "n_min": min(ns) if ns else None, "n_max": max(ns) if ns else None}
                for k, v in s.items():
                    rec.update({f"{k}_mean": v.mean, f"{k}_std": v.std})
                records.append({**rec, "n_replicates": s["recall"].n})
            else:
                records.append({"Recipe": rr.recipe, "Class": c, "n": fmt_count(n),
                                "Recall": draw(s["recall"], "recall"),
                                "Precision": draw(s["precision"], "precision"), "F1": draw(s["f1"], "f1")})
    return pd.DataFrame.from_records(records)


def sites_of(rr: RecipeResult) -> list[str]:
    """The acquisition sites of ``rr``'s chosen replicates' test metrics (``site/<site>/acc``), sorted."""
    return sorted(m.removeprefix("site/").removesuffix("/acc") for m in rr.stats
                  if m.startswith("site/") and m.endswith("/acc"))


def sites_frame(cmp: Comparison, numeric: bool = False, pm: str = "±", cell: Cell | None = None) -> pd.DataFrame:
    """Per recipe (chosen configuration) and site (a manifest's ``site`` column): n (test images of the
    site; a range when replicates differ), accuracy and macro-F1 over the replicates that tested on it."""
    draw: Cell = cell or (lambda s, m: fmt(s, pm))
    records: list[dict[str, Any]] = []
    for rr in cmp.recipes:
        for site in sites_of(rr):
            pre = f"site/{site}/"
            if numeric:
                records.append(_subset_numbers(rr, "site", site, pre))
            else:
                n = [x for x in _counts(rr, f"{pre}n") if x is not None]
                acc, f1 = rr.stat(f"{pre}acc"), rr.stat(f"{pre}macro_f1")
                records.append({"Recipe": rr.recipe, "Site": site, "n": fmt_count(n), "Replicates": acc.n,
                                "Acc": draw(acc, "acc"), "Macro-F1": draw(f1, "macro_f1")})
    return pd.DataFrame.from_records(records)


def interval_method(rr: RecipeResult, v: ValuePoint | None = None) -> str:
    v = v or rr.point
    if v.folds:
        return f"corrected t over {v.folds} folds × {v.seeds} seed(s), ρ = {v.rho:.3f}"
    return f"t over {v.seeds} seed(s)"


def intervals_frame(cmp: Comparison, numeric: bool = False) -> pd.DataFrame:
    """Per recipe (chosen configuration): mean, std and 95 % interval of the selection metric and the
    main table's metrics, with the number of replicates and how the interval was computed."""
    records = []
    for rr in cmp.recipes:
        v = rr.point
        metrics = [(cmp.metric, v.selection)] + [(f"{rr.split}/{m}", rr.stats[m]) for m in MAIN_METRICS
                                                 if m in rr.stats]
        for name, s in metrics:
            if numeric:
                records.append({"recipe": rr.recipe, "config": value_label(rr.keys, rr.chosen), "metric": name,
                                "mean": s.mean, "std": s.std, "ci_low": s.ci_low, "ci_high": s.ci_high,
                                "n_replicates": s.n, "folds": v.folds, "n_seeds": v.seeds, "rho": v.rho,
                                "method": interval_method(rr, v)})
            else:
                records.append({"Recipe": rr.recipe, "Metric": name, "Mean": fmt(Stat.one(s.mean)),
                                "Std": "–" if s.n < 2 else f"{s.std:.3f}", "95 % interval": fmt_interval(s),
                                "Replicates": s.n, "Interval": interval_method(rr, v)})
    return pd.DataFrame.from_records(records)


def mcnemar_cell(mc: McNemar) -> str:
    """McNemar's p over the replicates: one value, or the range and the count."""
    ps = mc.ps
    return "–" if not ps else fmt_p(ps[0]) if len(ps) == 1 else f"{fmt_p(min(ps))}–{fmt_p(max(ps))} ({len(ps)})"


def paired_cells(p: PairedTest, diff: Callable[[TTest], str], dash: str) -> list[Any]:
    """Recipe, vs, pairs, Δ acc (``diff(ttest)``), t, p and McNemar's p (range and count over the pairs) of one
    paired comparison; ``dash`` where the t-test could not be run."""
    t = p.ttest
    if t.reason is not None:
        return [p.b, p.a, dash, dash, dash, dash, mcnemar_cell(p.mcnemar)]
    return [p.b, p.a, t.pairs, diff(t), f"{t.t:.2f}", fmt_p(t.p), mcnemar_cell(p.mcnemar)]


def paired_frame(cmp: Comparison, pm: str = "±") -> pd.DataFrame:
    """Every other recipe against the best (by validation): the corrected resampled t-test over common
    (fold, seed) pairs, and McNemar's p on the shared test images (range over the pairs)."""
    cols = ["Recipe", "vs", "Pairs", "Δ acc (vs − recipe)", "t", "p (corrected t)", "McNemar p"]
    records = [{**dict(zip(cols, paired_cells(p, lambda t: f"{t.diff:.3f} {pm} {t.std:.3f}", "–"), strict=True)),
                "Note": p.ttest.reason or p.mcnemar.reason or ""} for p in cmp.paired]
    return pd.DataFrame.from_records(records)


def loso_frame(cmp: Comparison) -> pd.DataFrame:
    """The leave-one-site-out table: recipe, held-out site, test accuracy, macro-F1, AUC, test images, runs."""
    def num(v: float | None, digits: int = 3) -> str:
        return "" if v is None else (f"{v:.0f}" if float(v).is_integer() and v > 1 else f"{v:.{digits}f}")

    return pd.DataFrame([{"recipe": r.recipe, "held-out site": r.held_out_site, "test acc": num(r.acc),
                          "test macro-F1": num(r.macro_f1), "test AUC": num(r.auc), "test n": num(r.n),
                          "runs": r.runs} for r in cmp.loso])


def incomplete_folds_frame(cmp: Comparison) -> pd.DataFrame:
    """One row per configuration and seed with fewer finished folds than ``data.folds``."""
    return pd.DataFrame([{"recipe": m.recipe, "config": m.config, "seed": m.seed,
                          "folds finished": f"{len(m.finished)} of {m.folds}",
                          "missing folds": ", ".join(map(str, m.missing))} for m in cmp.incomplete_folds])


FRAMES: dict[str, Callable[[Comparison, bool], pd.DataFrame]] = {
    "main": lambda cmp, per_value: display_frame(cmp, per_value),
    "bands": lambda cmp, per_value: bands_frame(cmp),
    "classes": lambda cmp, per_value: classes_frame(cmp),
    "sites": lambda cmp, per_value: sites_frame(cmp),
    "intervals": lambda cmp, per_value: intervals_frame(cmp)}
NUMERIC: dict[str, Callable[[Comparison, bool], pd.DataFrame]] = {
    "main": lambda cmp, per_value: results_frame(cmp, per_value),
    "bands": lambda cmp, per_value: bands_frame(cmp, numeric=True),
    "classes": lambda cmp, per_value: classes_frame(cmp, numeric=True),
    "sites": lambda cmp, per_value: sites_frame(cmp, numeric=True),
    "intervals": lambda cmp, per_value: intervals_frame(cmp, numeric=True)}


# ---------------------------------------------------------------- text around the tables

def markdown_table(df: pd.DataFrame, empty: str = "Nothing finished: no row to show.") -> str:
    if df.empty:
        return empty
    cells = [[str(c) for c in df.columns]] + [[" ".join(str(x).split()).replace("|", "\\|") for x in row]
                                              for row in df.values]
    lines = ["| " + " | ".join(r) + " |" for r in cells]
    lines.insert(1, "|" + "---|" * len(df.columns))
    return "\n".join(lines)


def replicate_text(fold: Any, seed: Any) -> str:
    """'seed 0' or 'fold 2, seed 0' (a fold read back from a frame may be NaN)."""
    if fold is None or (isinstance(fold, float) and math.isnan(fold)):
        return f"seed {seed}"
    return f"fold {int(fold) if isinstance(fold, float) else fold}, seed {seed}"


def mcnemar_lines(cmp: Comparison) -> list[str]:
    mc = cmp.mcnemar
    if not mc:
        return ["Fewer than two recipes finished: no paired test."]
    head = (f"McNemar, {mc.a} vs {mc.b} (best two by validation), one test per common (fold, seed) on the "
            "shared test images, not pooled")
    if mc.reason:
        return [f"{head}: not computed ({mc.reason})."]
    lines = [head + ":"]
    for s in mc.replicates:
        if s.test is None:
            lines.append(f"- {replicate_text(s.fold, s.seed)}: {s.error}")
        else:
            lines.append(f"- {replicate_text(s.fold, s.seed)}: n={s.n} images, acc {s.acc_a:.3f} vs {s.acc_b:.3f}, "
                         f"discordant b={s.test.b} c={s.test.c}, {s.test.method}, p={s.test.p:.4g}"
                         + (f" ({s.unmatched} unmatched images dropped)" if s.unmatched else ""))
    return lines


def ttest_lines(cmp: Comparison) -> list[str]:
    lines = []
    for p in cmp.paired:
        t = p.ttest
        if t.reason:
            lines.append(f"- {t.a} vs {t.b}: no corrected t-test ({t.reason}).")
        else:
            lines.append(f"- {t.a} vs {t.b}: {t.metric} {t.mean_a:.3f} vs {t.mean_b:.3f} over "
                         f"{t.pairs} (fold, seed) pairs, difference {t.diff:.3f} ± {t.std:.3f}, "
                         f"ρ = n_test/n_train = {t.rho:.3f}, t = {t.t:.2f} ({t.df} df), p = {t.p:.3g}")
    return lines


def incomplete_frame(cmp: Comparison, full_error: bool = False) -> pd.DataFrame:
    """One row per incomplete run (a fold column when any has one); ``error`` is its first line unless
    ``full_error``."""
    def err(e: str | None) -> str:
        e = e or ""
        return e if full_error else (e.strip().splitlines() or [""])[0][:120]
    folds = any(r.fold is not None for r in cmp.incomplete)
    return pd.DataFrame([{"id": r.id, "recipe": r.recipe, **({"fold": r.fold} if folds else {}), "seed": r.seed,
                          "status": r.status, "error": err(r.error), "source": r.sources[0]} for r in cmp.incomplete])


INTERVALS_METHOD = ("95 % intervals of the mean: the t-interval over seeds for one train/val split; over folds "
                    "the corrected resampled t of Nadeau & Bengio (2003), t(J−1) · std · sqrt(1/J + ρ) with "
                    "ρ = n_test/n_train of a fold, because folds share training images.")
NO_SITES = "No run has per-site test metrics: they come from a manifest with a site column and test rows."
LOSO_TEXT = ("Each site held out as the test part in turn (``data.test_site``); test metrics of the chosen "
             "configuration, averaged over seeds, and their mean over the sites.")
SITES_TEXT = ("Cells: mean ± std over the replicates that tested on the site (Replicates counts them); n: test "
              "images of the site (a manifest's site column). A held-out site (data.test_site) is tested by "
              "its own replicates only: see the leave-one-site-out table.")
ENSEMBLE_ROWS = (" Rows '(ensemble of N)': one model, the mean of the N replicates' softmax probabilities per "
                 "test image (from their test predictions); its bands are by the nearest image among all "
                 "its members' training images.")


def intro_text(cmp: Comparison, table: str = "main") -> str:
    base = (f"Per recipe, the configuration (swept config keys) with the best mean {cmp.metric} over its replicates "
            f"is selected on the validation split; test metrics are reported for that choice only. A replicate is "
            f"a (fold, seed) pair: with data.folds, the {cmp.metric} is averaged over the folds (and seeds); "
            f"a seed missing folds is listed as incomplete, never averaged. Recipes ordered by {cmp.metric}.")
    ensemble = ENSEMBLE_ROWS if any(ensemble_of(rr) for rr in cmp.recipes) else ""
    cells = {"main": "Cells: mean ± std over replicates; Folds and Seeds count them. Acc novel: test accuracy on "
                     "the images whose most similar training image is novel (brainmri.data.leakage)." + ensemble,
             "bands": "Cells: mean ± std over replicates; n: test images in the band (a range when folds differ)."
                      + ensemble,
             "classes": "Cells: mean ± std over replicates; n: test images of the class.",
             "sites": SITES_TEXT,
             "intervals": INTERVALS_METHOD + " Rates clipped to [0, 1]."}
    return f"{base} {cells[table]}"
