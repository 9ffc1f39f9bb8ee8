"""Render a brainmri.results.collect.Comparison: Markdown, CSV, LaTeX and PNG plots (HTML: brainmri.results.report_html,
W&B report: brainmri.results.wandb_report).

Owns presentation only; every number comes from the Comparison (no statistics here). Four tables
(``TABLES``): ``main`` (what a paper shows: recipe, chosen configuration, folds and seeds as
integers, validation, test, novel-band test, macro-F1, AUC, ECE as mean ± std over replicates),
``bands`` (metrics by similarity-to-training band), ``classes`` (per-class recall, precision, F1)
and ``intervals`` (95 % intervals and how they were computed). Markdown and HTML round for
people (3 decimals; LaTeX in % with 1 decimal), CSV keeps full precision.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from brainmri.atomic import atomic_path
from brainmri.data.leakage import BANDS
from brainmri.results.collect import Comparison, RecipeResult, is_count, value_label

TABLES = ("main", "bands", "classes", "intervals")
NAMES = {"acc": "acc", "macro_f1": "macro-F1", "auc": "AUC", "ece": "ECE", "loss": "loss"}
# the main table's reported-split columns: metric -> header
MAIN_METRICS = {"acc": "Test acc", "band/novel/acc": "Acc novel", "macro_f1": "Macro-F1", "auc": "AUC", "ece": "ECE"}
TITLES = {"main": "Recipe comparison", "bands": "Recipe comparison by similarity-to-training band",
          "classes": "Recipe comparison per class", "intervals": "Recipe comparison: 95 % intervals"}


def metric_label(metric: str) -> str:
    """``val/acc`` → ``Val acc``; ``band/novel/acc`` → ``Acc novel``."""
    if metric.startswith("band/"):
        _, band, what = metric.split("/")
        return f"{NAMES.get(what, what).capitalize()} {band.replace('_', '-')}"
    split, _, name = metric.rpartition("/")
    name = NAMES.get(name, name.replace("_", "-"))
    return f"{split.capitalize()} {name}" if split else name[:1].upper() + name[1:]


def _rows(cmp: Comparison, per_value: bool) -> list[tuple[RecipeResult, dict, bool]]:
    rows = []
    for rr in cmp.recipes:
        for v in rr.per_value:
            if per_value or v["value"] == rr.chosen:
                rows.append((rr, v, v["value"] == rr.chosen))
    return rows


def _mixed_split(cmp: Comparison) -> bool:
    return any(rr.split != "test" for rr in cmp.recipes)


def _main_headers(cmp: Comparison) -> dict[str, str]:
    """metric -> header of the main table's reported-split columns (no "Test" when a recipe has none)."""
    if not _mixed_split(cmp):
        return dict(MAIN_METRICS)
    return {m: ("Acc" if m == "acc" else h) for m, h in MAIN_METRICS.items()}


# ---------------------------------------------------------------- cells

def fmt(s: dict, pm: str = "±", digits: int = 3) -> str:
    """'mean ± std' over replicates (just the mean for one replicate); '–' when there is none."""
    if not s or s.get("n", 0) == 0 or math.isnan(s["mean"]):
        return "–"
    if s["n"] < 2 or math.isnan(s["std"]):
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} {pm} {s['std']:.{digits}f}"


def fmt_interval(s: dict, digits: int = 3) -> str:
    if not s or s.get("n", 0) < 2 or math.isnan(s.get("ci_low", math.nan)):
        return "–"
    return f"[{s['ci_low']:.{digits}f}, {s['ci_high']:.{digits}f}]"


def fmt_count(values) -> str:
    """An image count, once, as an integer: '30', or '28–31' when it differs between replicates."""
    xs = sorted({int(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))})
    if not xs:
        return "–"
    return str(xs[0]) if len(xs) == 1 else f"{xs[0]}–{xs[-1]}"


def fmt_p(p) -> str:
    return "–" if p is None or (isinstance(p, float) and math.isnan(p)) else f"{p:.2g}"


def _counts(rr: RecipeResult, metric: str) -> list:
    return [r.summary.get(f"{rr.split}/{metric}") for r in rr.runs]


def _folds_cell(v: dict):
    return v["folds"] if v["folds"] else "–"


def _paired_of(cmp: Comparison, recipe: str) -> dict | None:
    return next((p for p in cmp.paired if p["b"] == recipe), None)


def ensemble_of(rr: RecipeResult) -> dict | None:
    """The ensemble of ``rr``'s chosen replicates when it has test metrics (``collect.ensemble_result``)."""
    ens = rr.ensemble
    return ens if ens and not ens.get("reason") and ens.get("stats") else None


def ensemble_label(rr: RecipeResult) -> str:
    return f"{rr.recipe} (ensemble of {(rr.ensemble or {})['members']})"


def _mcnemar_ps(mc: dict | None) -> list[float]:
    return [s["p"] for s in (mc or {}).get("seeds", []) if "p" in s]


# ---------------------------------------------------------------- the four tables (display and numeric)

def display_frame(cmp: Comparison, per_value: bool = False, pm: str = "±") -> pd.DataFrame:
    """The main table, rounded for people: one row per recipe (per swept value with ``per_value``)."""
    headers, mixed = _main_headers(cmp), _mixed_split(cmp)
    records = []
    for rr, v, chosen in _rows(cmp, per_value):
        rec = {"Recipe": rr.recipe,
               "Configuration": value_label(rr.keys, v["value"]) + (" *" if per_value and chosen else "")}
        if mixed:
            rec["Split"] = rr.split
        rec.update({"Folds": _folds_cell(v), "Seeds": v["seeds"], metric_label(cmp.metric): fmt(v["selection"], pm)})
        rec.update({h: fmt(v["stats"].get(m, {}), pm) for m, h in headers.items()})
        records.append(rec)
        ens = ensemble_of(rr) if chosen else None
        if ens:
            records.append({**rec, "Recipe": ensemble_label(rr), metric_label(cmp.metric): "–",
                            **{h: fmt(ens["stats"].get(m, {}), pm) for m, h in headers.items()}})
    return pd.DataFrame.from_records(records)


def results_frame(cmp: Comparison, per_value: bool = False) -> pd.DataFrame:
    """The main table at full precision: mean/std columns, counts as integers, and each recipe's
    paired tests against the best one (corrected resampled t over folds, McNemar p range)."""
    records = []
    for rr, v, chosen in _rows(cmp, per_value):
        rec = {"recipe": rr.recipe, "config": value_label(rr.keys, v["value"]), "chosen": chosen,
               "split": rr.split, "folds": v["folds"], "n_seeds": v["seeds"], "n_replicates": len(v["runs"]),
               f"{cmp.metric}_mean": v["selection"]["mean"], f"{cmp.metric}_std": v["selection"]["std"]}
        for m in MAIN_METRICS:
            s = v["stats"].get(m, {})
            rec.update({f"{m}_mean": s.get("mean", math.nan), f"{m}_std": s.get("std", math.nan)})
        paired = _paired_of(cmp, rr.recipe) if chosen else None
        t = (paired or {}).get("ttest") or {}
        ps = _mcnemar_ps((paired or {}).get("mcnemar"))
        rec.update({"vs": paired["a"] if paired else None, "ttest_pairs": t.get("pairs"), "ttest_diff": t.get("diff"),
                    "ttest_t": t.get("t"), "ttest_df": t.get("df"), "ttest_p": t.get("p"), "ttest_rho": t.get("rho"),
                    "ttest_note": t.get("reason"), "mcnemar_n": len(ps) if paired else None,
                    "mcnemar_p_min": min(ps) if ps else None, "mcnemar_p_max": max(ps) if ps else None})
        records.append(rec)
        ens = ensemble_of(rr) if chosen else None
        if ens:
            records.append({"recipe": rr.recipe, "config": rec["config"], "chosen": chosen, "model": "ensemble",
                            "split": rr.split, "folds": v["folds"], "n_seeds": v["seeds"],
                            "n_replicates": ens["members"],
                            **{f"{m}_mean": ens["stats"].get(m, {}).get("mean", math.nan) for m in MAIN_METRICS}})
    df = pd.DataFrame.from_records(records)
    if len(df):  # which rows are the mean over replicates and which the replicates' ensemble
        df.insert(df.columns.get_loc("split"), "model", df.pop("model").fillna("replicates")
                  if "model" in df else "replicates")
    return df


def _bands_of(rr: RecipeResult) -> list[str]:
    return [b for b in BANDS if any(n for n in _counts(rr, f"band/{b}/n") if n)]


def bands_frame(cmp: Comparison, numeric: bool = False, pm: str = "±", cell=None) -> pd.DataFrame:
    """Per recipe (chosen configuration) and band: n (test images; a range when folds differ), accuracy
    and macro-F1 (bands of ≥ 20 images) over replicates; ``all`` is the whole test split.
    ``cell(stats, metric)`` renders a mean ± std cell (default ``fmt``)."""
    cell = cell or (lambda s, m: fmt(s, pm))
    records = []
    for rr in cmp.recipes:
        for band in ["all", *_bands_of(rr)]:
            pre = "" if band == "all" else f"band/{band}/"
            n = _counts(rr, f"{pre}n")
            acc, f1 = rr.stats.get(f"{pre}acc", {}), rr.stats.get(f"{pre}macro_f1", {})
            if numeric:
                ns = [x for x in n if x is not None]
                records.append({"recipe": rr.recipe, "config": value_label(rr.keys, rr.chosen), "split": rr.split,
                                "band": band, "n_min": min(ns) if ns else None, "n_max": max(ns) if ns else None,
                                "acc_mean": acc.get("mean"), "acc_std": acc.get("std"),
                                "macro_f1_mean": f1.get("mean"), "macro_f1_std": f1.get("std"),
                                "n_replicates": acc.get("n", 0)})
            else:
                records.append({"Recipe": rr.recipe, "Band": band.replace("_", "-"), "n": fmt_count(n),
                                "Acc": cell(acc, "acc"), "Macro-F1": cell(f1, "macro_f1")})
        ens = ensemble_of(rr) or {}
        for band in (["all", *[b for b in BANDS if ens["stats"].get(f"band/{b}/n", {}).get("mean")]] if ens else []):
            pre = "" if band == "all" else f"band/{band}/"
            n, acc, f1 = (ens["stats"].get(f"{pre}{m}", {}) for m in ("n", "acc", "macro_f1"))
            if numeric:
                records.append({"recipe": rr.recipe, "config": value_label(rr.keys, rr.chosen), "split": rr.split,
                                "model": "ensemble", "band": band, "n_min": n.get("mean"), "n_max": n.get("mean"),
                                "acc_mean": acc.get("mean"), "acc_std": None, "macro_f1_mean": f1.get("mean"),
                                "macro_f1_std": None, "n_replicates": ens["members"]})
            else:
                records.append({"Recipe": ensemble_label(rr), "Band": band.replace("_", "-"),
                                "n": fmt_count([n.get("mean")]), "Acc": cell(acc, "acc"),
                                "Macro-F1": cell(f1, "macro_f1")})
    df = pd.DataFrame.from_records(records)
    if numeric and len(df):
        df.insert(df.columns.get_loc("band"), "model", df.pop("model").fillna("replicates")
                  if "model" in df else "replicates")
    return df


def classes_frame(cmp: Comparison, numeric: bool = False, pm: str = "±", cell=None) -> pd.DataFrame:
    """Per recipe (chosen configuration) and class: n (support), recall, precision and F1 over replicates."""
    cell = cell or (lambda s, m: fmt(s, pm))
    records = []
    for rr in cmp.recipes:
        classes = [m.removeprefix("recall/") for m in rr.stats if m.startswith("recall/")]
        for c in classes:
            s = {k: rr.stats.get(f"{k}/{c}", {}) for k in ("recall", "precision", "f1")}
            n = _counts(rr, f"support/{c}")
            if numeric:
                ns = [x for x in n if x is not None]
                rec = {"recipe": rr.recipe, "config": value_label(rr.keys, rr.chosen), "split": rr.split, "class": c,
                       "n_min": min(ns) if ns else None, "n_max": max(ns) if ns else None}
                for k, v in s.items():
                    rec.update({f"{k}_mean": v.get("mean"), f"{k}_std": v.get("std")})
                records.append({**rec, "n_replicates": s["recall"].get("n", 0)})
            else:
                records.append({"Recipe": rr.recipe, "Class": c, "n": fmt_count(n),
                                "Recall": cell(s["recall"], "recall"),
                                "Precision": cell(s["precision"], "precision"), "F1": cell(s["f1"], "f1")})
    return pd.DataFrame.from_records(records)


def interval_method(rr: RecipeResult, v: dict | None = None) -> str:
    v = v or next(x for x in rr.per_value if x["value"] == rr.chosen)
    if v["folds"]:
        return f"corrected t over {v['folds']} folds × {v['seeds']} seed(s), ρ = {v['rho']:.3f}"
    return f"t over {v['seeds']} seed(s)"


def intervals_frame(cmp: Comparison, numeric: bool = False) -> pd.DataFrame:
    """Per recipe (chosen configuration): mean, std and 95 % interval of the selection metric and the
    main table's metrics, with the number of replicates and how the interval was computed."""
    records = []
    for rr in cmp.recipes:
        v = next(x for x in rr.per_value if x["value"] == rr.chosen)
        metrics = [(cmp.metric, v["selection"])] + [(f"{rr.split}/{m}", rr.stats[m]) for m in MAIN_METRICS
                                                    if m in rr.stats]
        for name, s in metrics:
            if numeric:
                records.append({"recipe": rr.recipe, "config": value_label(rr.keys, rr.chosen), "metric": name,
                                "mean": s["mean"], "std": s["std"], "ci_low": s["ci_low"], "ci_high": s["ci_high"],
                                "n_replicates": s["n"], "folds": v["folds"], "n_seeds": v["seeds"], "rho": v["rho"],
                                "method": interval_method(rr, v)})
            else:
                records.append({"Recipe": rr.recipe, "Metric": name, "Mean": fmt({**s, "n": 1}),
                                "Std": "–" if s["n"] < 2 else f"{s['std']:.3f}", "95 % interval": fmt_interval(s),
                                "Replicates": s["n"], "Interval": interval_method(rr, v)})
    return pd.DataFrame.from_records(records)


def _paired_cells(p: dict, diff, dash: str) -> list:
    """Recipe, vs, pairs, Δ acc (``diff(ttest)``), t, p and McNemar's p (range and count over the pairs) of one
    paired comparison; ``dash`` where the t-test could not be run."""
    t, ps = p["ttest"], _mcnemar_ps(p["mcnemar"])
    mcnemar = ("–" if not ps else fmt_p(ps[0]) if len(ps) == 1 else f"{fmt_p(min(ps))}–{fmt_p(max(ps))} ({len(ps)})")
    if t.get("reason") is not None:
        return [p["b"], p["a"], dash, dash, dash, dash, mcnemar]
    return [p["b"], p["a"], t["pairs"], diff(t), f"{t['t']:.2f}", fmt_p(t["p"]), mcnemar]


def paired_frame(cmp: Comparison, pm: str = "±") -> pd.DataFrame:
    """Every other recipe against the best (by validation): the corrected resampled t-test over common
    (fold, seed) pairs, and McNemar's p on the shared test images (range over the pairs)."""
    cols = ["Recipe", "vs", "Pairs", "Δ acc (vs − recipe)", "t", "p (corrected t)", "McNemar p"]
    records = [{**dict(zip(cols, _paired_cells(p, lambda t: f"{t['diff']:.3f} {pm} {t['std']:.3f}", "–"), strict=True)),
                "Note": p["ttest"].get("reason") or p["mcnemar"].get("reason") or ""} for p in cmp.paired]
    return pd.DataFrame.from_records(records)


def loso_frame(cmp: Comparison) -> pd.DataFrame:
    """The leave-one-site-out table: recipe, held-out site, test accuracy, macro-F1, AUC, test images, runs."""
    def num(v, digits: int = 3):
        return "" if v is None else (f"{v:.0f}" if float(v).is_integer() and v > 1 else f"{v:.{digits}f}")

    return pd.DataFrame([{"recipe": r["recipe"], "held-out site": r["held_out_site"], "test acc": num(r["acc"]),
                          "test macro-F1": num(r["macro_f1"]), "test AUC": num(r["auc"]), "test n": num(r["n"]),
                          "runs": r["runs"]} for r in cmp.loso])


def incomplete_folds_frame(cmp: Comparison) -> pd.DataFrame:
    """One row per configuration and seed with fewer finished folds than ``data.folds``."""
    return pd.DataFrame([{"recipe": m["recipe"], "config": m["config"], "seed": m["seed"],
                          "folds finished": f"{len(m['finished'])} of {m['folds']}",
                          "missing folds": ", ".join(map(str, m["missing"]))} for m in cmp.incomplete_folds])


FRAMES = {"main": lambda cmp, per_value: display_frame(cmp, per_value),
          "bands": lambda cmp, per_value: bands_frame(cmp),
          "classes": lambda cmp, per_value: classes_frame(cmp),
          "intervals": lambda cmp, per_value: intervals_frame(cmp)}
NUMERIC = {"main": lambda cmp, per_value: results_frame(cmp, per_value),
           "bands": lambda cmp, per_value: bands_frame(cmp, numeric=True),
           "classes": lambda cmp, per_value: classes_frame(cmp, numeric=True),
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


def _replicate(s: dict) -> str:
    return f"seed {s['seed']}" if s.get("fold") is None else f"fold {s['fold']}, seed {s['seed']}"


def mcnemar_lines(cmp: Comparison) -> list[str]:
    mc = cmp.mcnemar
    if not mc:
        return ["Fewer than two recipes finished: no paired test."]
    head = (f"McNemar, {mc['a']} vs {mc['b']} (best two by validation), one test per common (fold, seed) on the "
            "shared test images, not pooled")
    if mc["reason"]:
        return [f"{head}: not computed ({mc['reason']})."]
    lines = [head + ":"]
    for s in mc["seeds"]:
        if "error" in s:
            lines.append(f"- {_replicate(s)}: {s['error']}")
        else:
            lines.append(f"- {_replicate(s)}: n={s['n']} images, acc {s['acc_a']:.3f} vs {s['acc_b']:.3f}, "
                         f"discordant b={s['b']} c={s['c']}, {s['method']}, p={s['p']:.4g}"
                         + (f" ({s['unmatched']} unmatched images dropped)" if s["unmatched"] else ""))
    return lines


def ttest_lines(cmp: Comparison) -> list[str]:
    lines = []
    for p in cmp.paired:
        t = p["ttest"]
        if t["reason"]:
            lines.append(f"- {t['a']} vs {t['b']}: no corrected t-test ({t['reason']}).")
        else:
            lines.append(f"- {t['a']} vs {t['b']}: {t['metric']} {t['mean_a']:.3f} vs {t['mean_b']:.3f} over "
                         f"{t['pairs']} (fold, seed) pairs, difference {t['diff']:.3f} ± {t['std']:.3f}, "
                         f"ρ = n_test/n_train = {t['rho']:.3f}, t = {t['t']:.2f} ({t['df']} df), p = {t['p']:.3g}")
    return lines


def incomplete_frame(cmp: Comparison, full_error: bool = False) -> pd.DataFrame:
    """One row per incomplete run (a fold column when any has one); ``error`` is its first line unless
    ``full_error``."""
    def err(e):
        e = e or ""
        return e if full_error else (e.strip().splitlines() or [""])[0][:120]
    folds = any(r.fold is not None for r in cmp.incomplete)
    return pd.DataFrame([{"id": r.id, "recipe": r.recipe, **({"fold": r.fold} if folds else {}), "seed": r.seed,
                          "status": r.status, "error": err(r.error), "source": r.sources[0]} for r in cmp.incomplete])


def intro_text(cmp: Comparison, table: str = "main") -> str:
    base = (f"Per recipe, the configuration (swept config keys) with the best mean {cmp.metric} over its replicates "
            f"is selected on the validation split; test metrics are reported for that choice only. A replicate is "
            f"a (fold, seed) pair: with data.folds, the {cmp.metric} is averaged over the folds (and seeds); "
            f"a seed missing folds is listed as incomplete, never averaged. Recipes ordered by {cmp.metric}.")
    ensemble = (" Rows '(ensemble of N)': one model, the mean of the N replicates' softmax probabilities per "
                "test image (from their test predictions); its bands are by the nearest image among all "
                "its members' training images." if any(ensemble_of(rr) for rr in cmp.recipes) else "")
    cells = {"main": "Cells: mean ± std over replicates; Folds and Seeds count them. Acc novel: test accuracy on "
                     "the images whose most similar training image is novel (brainmri.data.leakage)." + ensemble,
             "bands": "Cells: mean ± std over replicates; n: test images in the band (a range when folds differ)."
                      + ensemble,
             "classes": "Cells: mean ± std over replicates; n: test images of the class.",
             "intervals": "95 % intervals of the mean: the t-interval over seeds for one train/val split; over folds "
                          "the corrected resampled t of Nadeau & Bengio (2003), t(J−1) · std · sqrt(1/J + ρ) with "
                          "ρ = n_test/n_train of a fold, because folds share training images. Rates clipped to [0, 1]."}
    return f"{base} {cells[table]}"


# ---------------------------------------------------------------- Markdown, CSV

def to_markdown(cmp: Comparison, per_value: bool = False, table: str = "main") -> str:
    parts = [f"# {TITLES[table]}", intro_text(cmp, table), markdown_table(FRAMES[table](cmp, False))]
    if per_value and table == "main":
        parts += ["## Per swept value (* = selected; test columns of other values are for reference, "
                  "not used for selection)", markdown_table(display_frame(cmp, per_value=True))]
    parts += ["## Paired tests"]
    if cmp.paired:
        parts += ["Every recipe against the best by validation: the corrected resampled t-test over common "
                  "(fold, seed) pairs (Nadeau & Bengio, 2003) and McNemar on the shared test images.",
                  markdown_table(paired_frame(cmp)), "\n".join(ttest_lines(cmp))]
    parts += ["\n".join(mcnemar_lines(cmp))]
    if cmp.loso:
        parts += ["## Leave one site out", "Each site held out as the test part in turn (``data.test_site``); "
                  "test metrics of the chosen configuration, averaged over seeds, and their mean over the sites.",
                  markdown_table(loso_frame(cmp))]
    if cmp.incomplete_folds:
        parts += ["## Incomplete fold sets (not averaged)", markdown_table(incomplete_folds_frame(cmp))]
    parts += ["## Incomplete runs (not averaged)",
              markdown_table(incomplete_frame(cmp)) if cmp.incomplete else "None."]
    if cmp.notes:
        parts += ["## Notes", "\n".join(f"- {n}" for n in cmp.notes)]
    return "\n\n".join(parts) + "\n"


COUNT_COLUMNS = ("folds", "n_seeds", "n_replicates", "ttest_pairs", "ttest_df", "mcnemar_n", "n_min", "n_max")


def _integers(df: pd.DataFrame) -> pd.DataFrame:
    """Counts as integers (empty where there is none), never 5.0."""
    for col in COUNT_COLUMNS:
        if col in df:
            df[col] = pd.to_numeric(df[col]).round().astype("Int64")
    return df


def to_csv(cmp: Comparison, per_value: bool = False, table: str = "main") -> str:
    """Full precision. ``main``: finished rows, then one row per incomplete fold set (state
    ``incomplete_folds``) and per incomplete run (its state and the error's first line)."""
    df = NUMERIC[table](cmp, per_value)
    if table != "main":
        return _integers(df).to_csv(index=False)
    if len(df):
        df.insert(df.columns.get_loc("split"), "state", "finished")
    extra = [{"recipe": m["recipe"], "config": m["config"], "state": "incomplete_folds", "folds": m["folds"],
              "n_seeds": 1, "n_replicates": len(m["finished"]),
              "error": f"seed {m['seed']}: {len(m['finished'])} of {m['folds']} folds finished, missing "
                       + ", ".join(map(str, m["missing"]))} for m in cmp.incomplete_folds]
    inc = incomplete_frame(cmp)
    if len(inc):
        extra += inc.rename(columns={"status": "state"})[["recipe", "state", "error", "id"]].to_dict("records")
    if extra:
        df = pd.concat([df, pd.DataFrame(extra)], ignore_index=True)
    return _integers(df).to_csv(index=False)


# ---------------------------------------------------------------- LaTeX (booktabs, fits a two-column page)

TEX = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$", "{": r"\{",
       "}": r"\}", "^": r"\textasciicircum{}", "~": r"\textasciitilde{}", "<": r"\textless{}",
       ">": r"\textgreater{}", "±": r"$\pm$", "–": "--", "−": "$-$", "Δ": r"$\Delta$", "ρ": r"$\rho$",
       "×": r"$\times$", "≥": r"$\geq$"}


class Tex(str):
    """A cell that is LaTeX already (``_tex`` leaves it as it is)."""


def _tex(s) -> str:
    return s if isinstance(s, Tex) else "".join(TEX.get(ch, ch) for ch in str(s))


def _pct(s: dict, metric: str) -> Tex:
    """A rate in % (1 decimal) with its std as a subscript: 91.2$_{\\pm 0.4}$; losses and counts as they are."""
    if not s or s.get("n", 0) == 0 or s.get("mean") is None or math.isnan(s["mean"]):
        return Tex("--")
    scale, digits = (1, 3) if "loss" in metric or is_count(metric) else (100, 1)
    text = f"{s['mean'] * scale:.{digits}f}"
    if s["n"] > 1 and not math.isnan(s["std"]):
        text += rf"$_{{\pm {s['std'] * scale:.{digits}f}}}$"
    return Tex(text)


def _stack(label: str) -> str:
    """A configuration of several keys, one per line (no package needed)."""
    parts = [_tex(p) for p in label.split(", ")]
    return parts[0] if len(parts) == 1 else r"\shortstack[l]{" + r"\\".join(parts) + "}"


def latex_table(header: list[str], rows: list[list[str]], caption: str, label: str, align: str) -> str:
    """A booktabs ``table*`` (both columns of a two-column page) of already-escaped cells."""
    lines = [r"\begin{table*}[t]", r"\centering", r"\small", r"\setlength{\tabcolsep}{4pt}",
             rf"\caption{{{caption}}}", rf"\label{{{label}}}",
             rf"\begin{{tabular}}{{{align}}}", r"\toprule", " & ".join(header) + r" \\", r"\midrule"]
    lines += [" & ".join(row) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table*}"]
    return "\n".join(lines) + "\n"


def _latex_frame(df: pd.DataFrame, caption: str, label: str) -> str:
    align = "".join("l" if df[c].map(lambda x: not _numeric(x)).all() and i < 3 else "r"
                    for i, c in enumerate(df.columns)) if len(df) else "l" * len(df.columns)
    return latex_table([_tex(c) for c in df.columns], [[_tex(x) for x in row] for row in df.values],
                       caption, label, align)


def _numeric(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) or str(x)[:1].isdigit()


def _latex_main(cmp: Comparison, per_value: bool) -> str:
    headers, mixed = _main_headers(cmp), _mixed_split(cmp)
    head = (["Recipe", "Configuration"] + (["Split"] if mixed else [])
            + ["Folds", "Seeds", _tex(metric_label(cmp.metric))])
    head += [_tex(h) for h in headers.values()]
    rows = []
    for rr, v, chosen in _rows(cmp, per_value):
        row = [_tex(rr.recipe), _stack(value_label(rr.keys, v["value"])) + (" *" if per_value and chosen else "")]
        row += ([rr.split] if mixed else []) + [_tex(_folds_cell(v)), str(v["seeds"]), _pct(v["selection"], cmp.metric)]
        row += [_pct(v["stats"].get(m, {}), m) for m in headers]
        rows.append(row)
        ens = ensemble_of(rr) if chosen else None
        if ens:
            rows.append([_tex(ensemble_label(rr)), *row[1:-len(headers) - 1], "--",
                         *[_pct(ens["stats"].get(m, {}), m) for m in headers]])
    caption = (f"Recipes compared: configuration chosen on {_tex(cmp.metric)} averaged over replicates "
               r"(fold, seed); rates in \% as mean$_{\pm\mathrm{std}}$ over replicates; test split. "
               "Acc novel: test images unlike any training image.")
    align = "ll" + ("l" if mixed else "") + "rr" + "r" * (1 + len(headers))
    return latex_table(head, rows, caption, "tab:recipes", align)


def _latex_paired(cmp: Comparison) -> str:
    rows = []
    for p in cmp.paired:
        b, a, pairs, diff, t, pt, mc = _paired_cells(
            p, lambda t: rf"{100 * t['diff']:.1f}$_{{\pm {100 * t['std']:.1f}}}$", "--")
        rows.append([_tex(b), _tex(a), str(pairs), diff, t, _tex(pt), _tex(mc)])
    head = ["Recipe", "vs", "Pairs", r"$\Delta$ acc (\%)", "$t$", "$p$ (corrected $t$)", "McNemar $p$"]
    caption = (r"Paired comparisons with the best recipe by validation: corrected resampled $t$-test over common "
               r"(fold, seed) pairs (Nadeau \& Bengio, 2003), and McNemar on the shared test images "
               r"(range over pairs).")
    return latex_table(head, rows, caption, "tab:paired", "llrrrrr")


def _latex_intervals(cmp: Comparison) -> pd.DataFrame:
    num = intervals_frame(cmp, numeric=True)
    rows = []
    for r in num.to_dict("records"):
        lo, hi = (_pct({"mean": r[k], "n": 1}, r["metric"]) for k in ("ci_low", "ci_high"))
        rows.append({"Recipe": r["recipe"], "Metric": r["metric"],
                     "Mean": _pct({"mean": r["mean"], "n": 1}, r["metric"]),
                     "95 % interval": Tex(f"[{lo}, {hi}]") if r["n_replicates"] > 1 else "–",
                     "Replicates": r["n_replicates"],
                     "Interval": (f"corrected t, ρ = {r['rho']:.3f}" if pd.notna(r["folds"]) and r["folds"]
                                  else "t over seeds")})
    return pd.DataFrame(rows)


def to_latex(cmp: Comparison, per_value: bool = False, table: str = "main") -> str:
    """Booktabs ``table*`` environments (``\\usepackage{booktabs}``; they span both columns of a
    two-column page): the requested table, for ``main`` the paired tests, then incomplete fold sets
    and incomplete runs; McNemar per pair and the notes follow as LaTeX comments."""
    if table == "main":
        body = _latex_main(cmp, per_value) + (_latex_paired(cmp) if cmp.paired else "")
    else:
        df = {"bands": lambda: bands_frame(cmp, cell=_pct), "classes": lambda: classes_frame(cmp, cell=_pct),
              "intervals": lambda: _latex_intervals(cmp)}[table]()
        what = ")" if table == "intervals" else r" as mean$_{\pm\mathrm{std}}$ over replicates)"
        body = _latex_frame(df, _tex(TITLES[table]) + r" (chosen configurations; rates in \%" + what, f"tab:{table}")
    if cmp.incomplete_folds:
        body += _latex_frame(incomplete_folds_frame(cmp).astype(str), "Incomplete fold sets (not averaged)",
                             "tab:incomplete-folds")
    if cmp.incomplete:
        inc = incomplete_frame(cmp).drop(columns=["id", "source"]).astype(str)
        body += _latex_frame(inc, "Incomplete runs (not averaged)", "tab:incomplete")
    comments = mcnemar_lines(cmp) + ttest_lines(cmp) + cmp.notes
    return body + "".join(f"% {' '.join(line.split())}\n" for line in comments)


RENDERERS = {"md": to_markdown, "csv": to_csv, "latex": to_latex}




# ---------------------------------------------------------------- plots

def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_accuracy(cmp: Comparison, path: str | Path) -> Path:
    """Bar per recipe: mean accuracy of the selected config, 95% CI error bars, replicates ((fold, seed) pairs) as
    dots."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.5, 1.5 + 1.2 * len(cmp.recipes)), 4))
    for i, rr in enumerate(cmp.recipes):
        s = rr.stats["acc"]
        err = [[s["mean"] - s["ci_low"]], [s["ci_high"] - s["mean"]]] if s["n"] > 1 else None
        ax.bar(i, s["mean"], yerr=err, capsize=6, color="C0" if rr.split == "test" else "C1", alpha=0.8)
        ax.scatter([i] * len(rr.runs), [r.summary.get(f"{rr.split}/acc") for r in rr.runs], color="k", s=12, zorder=3)
    ax.set_xticks(range(len(cmp.recipes)), [f"{rr.recipe}\n({rr.split}, n={rr.stats['acc']['n']})"
                                            for rr in cmp.recipes], fontsize=8)
    ax.set_ylabel("accuracy (mean, 95% CI; dots = replicates)")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"Accuracy per recipe\n(config chosen by {cmp.metric})", fontsize=10)
    return _save(fig, path)


def plot_val_curves(cmp: Comparison, path: str | Path, metric: str | None = None) -> Path:
    """Validation curve per recipe (selected config): mean ± std band over replicates per epoch."""
    plt, metric = _plt(), metric or cmp.metric
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, rr in enumerate(cmp.recipes):
        rows = [{"seed": str(r.seed), "x": h.get("epoch", h.get("_step")), "y": h[metric]}
                for r in rr.runs for h in r.history() if metric in h]
        if not rows:
            continue
        g = pd.DataFrame(rows).groupby("x")["y"].agg(["mean", "std"]).fillna(0.0)
        ax.plot(g.index, g["mean"], color=f"C{i}", label=f"{rr.recipe} ({value_label(rr.keys, rr.chosen)})")
        ax.fill_between(g.index, g["mean"] - g["std"], g["mean"] + g["std"], color=f"C{i}", alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{metric} (mean ± std over replicates)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format=path.suffix.lstrip(".") or "png")
    _plt().close(fig)
    return path


def write_plots(cmp: Comparison, out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    return [plot_accuracy(cmp, out_dir / "accuracy.png"), plot_val_curves(cmp, out_dir / "val_curves.png")]
