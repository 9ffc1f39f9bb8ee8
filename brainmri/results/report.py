"""Render a brainmri.results.collect.Comparison: Markdown, CSV, LaTeX and PNG plots (HTML: brainmri.results.report_html,
W&B report: brainmri.results.wandb_report).

Owns presentation only; every number comes from the Comparison (no statistics here).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from brainmri.results.collect import Comparison, RecipeResult, value_label

NAMES = {"acc": "Acc", "macro_f1": "Macro-F1", "auc": "Macro-AUC", "ece": "ECE"}


def metric_name(m: str) -> str:
    if m.startswith("band/"):  # band/<band>/acc|n: by similarity to the training images
        _, band, what = m.split("/")
        return f"{'Acc' if what == 'acc' else 'n'} {band.replace('_', '-')}"
    return NAMES.get(m) or f"Recall {m.removeprefix('recall/')}"


def _metrics(cmp: Comparison) -> list[str]:
    seen: dict[str, None] = {}
    for rr in cmp.recipes:
        seen.update(dict.fromkeys(rr.stats))
    return list(seen)


def _rows(cmp: Comparison, per_value: bool) -> list[tuple[RecipeResult, dict, bool]]:
    rows = []
    for rr in cmp.recipes:
        for v in rr.per_value:
            if per_value or v["value"] == rr.chosen:
                rows.append((rr, v, v["value"] == rr.chosen))
    return rows


def results_frame(cmp: Comparison, per_value: bool = False) -> pd.DataFrame:
    """Numeric table: one row per recipe (per swept value with ``per_value``), mean/std/CI columns."""
    records = []
    for rr, v, chosen in _rows(cmp, per_value):
        rec = {"recipe": rr.recipe, "config": value_label(rr.keys, v["value"]), "chosen": chosen,
               "split": rr.split, "n_seeds": v["selection"]["n"],
               f"{cmp.metric}_mean": v["selection"]["mean"], f"{cmp.metric}_std": v["selection"]["std"]}
        for m in _metrics(cmp):
            s = v["stats"].get(m, {})
            rec.update({f"{m}_{k}": s.get(k, math.nan) for k in ("mean", "std", "ci_low", "ci_high")})
        records.append(rec)
    return pd.DataFrame.from_records(records)


def fmt(s: dict, pm: str = "±", digits: int = 3) -> str:
    """'mean ± std [ci_low, ci_high]' (just the mean when one seed)."""
    if not s or s.get("n", 0) == 0 or math.isnan(s["mean"]):
        return "–"
    if s["n"] < 2:
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} {pm} {s['std']:.{digits}f} [{s['ci_low']:.{digits}f}, {s['ci_high']:.{digits}f}]"


def display_frame(cmp: Comparison, per_value: bool = False, pm: str = "±") -> pd.DataFrame:
    records = []
    for rr, v, chosen in _rows(cmp, per_value):
        rec = {"Recipe": rr.recipe, "Config": value_label(rr.keys, v["value"]) + (" *" if per_value and chosen else ""),
               "Split": rr.split, "n": v["selection"]["n"], f"{cmp.metric} (selection)": fmt(v["selection"], pm)}
        rec.update({metric_name(m): fmt(v["stats"].get(m, {}), pm, 0 if m.endswith("/n") else 3) for m in _metrics(cmp)})
        records.append(rec)
    return pd.DataFrame.from_records(records)


def markdown_table(df: pd.DataFrame) -> str:
    cells = [[str(c) for c in df.columns]] + [[" ".join(str(x).split()).replace("|", "\\|") for x in row] for row in df.values]
    lines = ["| " + " | ".join(r) + " |" for r in cells]
    lines.insert(1, "|" + "---|" * len(df.columns))
    return "\n".join(lines)


def _mcnemar_lines(cmp: Comparison) -> list[str]:
    mc = cmp.mcnemar
    if not mc:
        return ["Fewer than two recipes finished: no paired test."]
    head = f"McNemar, {mc['a']} vs {mc['b']} (best two by validation), one test per common seed, not pooled"
    if mc["reason"]:
        return [f"{head}: not computed ({mc['reason']})."]
    lines = [head + ":"]
    for s in mc["seeds"]:
        if "error" in s:
            lines.append(f"- seed {s['seed']}: {s['error']}")
        else:
            lines.append(f"- seed {s['seed']}: n={s['n']} images, acc {s['acc_a']:.3f} vs {s['acc_b']:.3f}, "
                         f"discordant b={s['b']} c={s['c']}, {s['method']}, p={s['p']:.4g}"
                         + (f" ({s['unmatched']} unmatched images dropped)" if s["unmatched"] else ""))
    return lines


def incomplete_frame(cmp: Comparison, full_error: bool = False) -> pd.DataFrame:
    """One row per incomplete run; ``error`` is its first line unless ``full_error``."""
    def err(e):
        e = e or ""
        return e if full_error else (e.strip().splitlines() or [""])[0][:120]
    return pd.DataFrame([{"id": r.id, "recipe": r.recipe, "seed": r.seed, "status": r.status,
                          "error": err(r.error), "source": r.sources[0]} for r in cmp.incomplete])


def intro_text(cmp: Comparison) -> str:
    return (f"Per recipe, the configuration (swept config keys) with the best mean {cmp.metric} over seeds "
            f"is selected on the validation split; test metrics are reported for that choice only. "
            f"Cells: mean ± std over seeds [95% t-interval of the mean, clipped to [0, 1]]. Recipes ordered by {cmp.metric}.")


def to_markdown(cmp: Comparison, per_value: bool = False) -> str:
    parts = ["# Recipe comparison", intro_text(cmp), markdown_table(display_frame(cmp))]
    if per_value:
        parts += ["## Per swept value (* = selected; test columns of other values are for reference, "
                  "not used for selection)", markdown_table(display_frame(cmp, per_value=True))]
    parts += ["## Paired test", "\n".join(_mcnemar_lines(cmp))]
    parts += ["## Incomplete runs (not averaged)",
              markdown_table(incomplete_frame(cmp)) if cmp.incomplete else "None."]
    if cmp.notes:
        parts += ["## Notes", "\n".join(f"- {n}" for n in cmp.notes)]
    return "\n\n".join(parts) + "\n"


def to_csv(cmp: Comparison, per_value: bool = False) -> str:
    """Finished rows, then one row per incomplete run (its state and the error's first line)."""
    df = results_frame(cmp, per_value)
    if len(df):
        df.insert(df.columns.get_loc("split"), "state", "finished")
    inc = incomplete_frame(cmp)
    if len(inc):
        inc = inc.rename(columns={"status": "state", "seed": "n_seeds"})[["recipe", "state", "error", "id"]]
        df = pd.concat([df, inc], ignore_index=True)
    return df.to_csv(index=False)


def _tex(s: str) -> str:
    s = s.replace("\\", r"\textbackslash ")
    for ch in "_%&#${}":
        s = s.replace(ch, "\\" + ch)
    return s.replace("±", r"$\pm$").replace("–", "--")


def to_latex(cmp: Comparison, per_value: bool = False) -> str:
    """A booktabs ``table`` environment; McNemar and incomplete runs follow as LaTeX comments."""
    df = display_frame(cmp, per_value).map(lambda x: _tex(str(x)))
    df.columns = [_tex(c) for c in df.columns]
    body = df.to_latex(index=False, escape=False, caption=_tex(intro_text(cmp)),
                       label="tab:recipes", position="t")
    comments = _mcnemar_lines(cmp) + cmp.notes
    if cmp.incomplete:
        inc = incomplete_frame(cmp)[["recipe", "seed", "status", "error"]].astype(str).map(_tex)
        body += inc.to_latex(index=False, escape=False, caption="Incomplete runs (not averaged)",
                             label="tab:incomplete", position="t")
    return body + "".join(f"% {' '.join(line.split())}\n" for line in comments)


RENDERERS = {"md": to_markdown, "csv": to_csv, "latex": to_latex}


# ---------------------------------------------------------------- plots

def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_accuracy(cmp: Comparison, path: str | Path) -> Path:
    """Bar per recipe: mean accuracy of the selected config, 95% CI error bars, seeds as dots."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.5, 1.5 + 1.2 * len(cmp.recipes)), 4))
    for i, rr in enumerate(cmp.recipes):
        s = rr.stats["acc"]
        err = [[s["mean"] - s["ci_low"]], [s["ci_high"] - s["mean"]]] if s["n"] > 1 else None
        ax.bar(i, s["mean"], yerr=err, capsize=6, color="C0" if rr.split == "test" else "C1", alpha=0.8)
        ax.scatter([i] * len(rr.runs), [r.summary.get(f"{rr.split}/acc") for r in rr.runs], color="k", s=12, zorder=3)
    ax.set_xticks(range(len(cmp.recipes)), [f"{rr.recipe}\n({rr.split}, n={rr.stats['acc']['n']})"
                                            for rr in cmp.recipes], fontsize=8)
    ax.set_ylabel("accuracy (mean, 95% CI; dots = seeds)")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"Accuracy per recipe\n(config chosen by {cmp.metric})", fontsize=10)
    return _save(fig, path)


def plot_val_curves(cmp: Comparison, path: str | Path, metric: str | None = None) -> Path:
    """Validation curve per recipe (selected config): mean ± std band over seeds per epoch."""
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
    ax.set_ylabel(f"{metric} (mean ± std over seeds)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _plt().close(fig)
    return path


def write_plots(cmp: Comparison, out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    return [plot_accuracy(cmp, out_dir / "accuracy.png"), plot_val_curves(cmp, out_dir / "val_curves.png")]
