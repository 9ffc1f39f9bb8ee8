"""The comparison as LaTeX: booktabs ``table*`` environments that fit a two-column page.

Rates in % with one decimal and the std over replicates as a subscript; draws the frames of
``brainmri.results.tables`` and computes nothing.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from brainmri.results.comparison import Comparison, Stat, TTest, value_label
from brainmri.results.stats import is_count
from brainmri.results.tables import (
    TITLES,
    bands_frame,
    classes_frame,
    ensemble_label,
    ensemble_of,
    folds_cell,
    incomplete_folds_frame,
    incomplete_frame,
    intervals_frame,
    main_headers,
    mcnemar_lines,
    metric_label,
    mixed_split,
    paired_cells,
    sites_frame,
    table_rows,
    ttest_lines,
)

TEX = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$", "{": r"\{",
       "}": r"\}", "^": r"\textasciicircum{}", "~": r"\textasciitilde{}", "<": r"\textless{}",
       ">": r"\textgreater{}", "±": r"$\pm$", "–": "--", "−": "$-$", "Δ": r"$\Delta$", "ρ": r"$\rho$",
       "×": r"$\times$", "≥": r"$\geq$"}


class Tex(str):
    """A cell that is LaTeX already (``_tex`` leaves it as it is)."""


def _tex(s: Any) -> str:
    return s if isinstance(s, Tex) else "".join(TEX.get(ch, ch) for ch in str(s))


def _pct(s: Stat, metric: str) -> Tex:
    """A rate in % (1 decimal) with its std as a subscript: 91.2$_{\\pm 0.4}$; losses and counts as they are."""
    if s.n == 0 or s.mean is None or math.isnan(s.mean):
        return Tex("--")
    scale, digits = (1, 3) if "loss" in metric or is_count(metric) else (100, 1)
    text = f"{s.mean * scale:.{digits}f}"
    if s.n > 1 and not math.isnan(s.std):
        text += rf"$_{{\pm {s.std * scale:.{digits}f}}}$"
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


def _numeric(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) or str(x)[:1].isdigit()


def _latex_main(cmp: Comparison, per_value: bool) -> str:
    headers, mixed = main_headers(cmp), mixed_split(cmp)
    head = (["Recipe", "Configuration"] + (["Split"] if mixed else [])
            + ["Folds", "Seeds", _tex(metric_label(cmp.metric))])
    head += [_tex(h) for h in headers.values()]
    rows = []
    for rr, v, chosen in table_rows(cmp, per_value):
        row = [_tex(rr.recipe), _stack(value_label(rr.keys, v.value)) + (" *" if per_value and chosen else "")]
        row += ([rr.split] if mixed else []) + [_tex(folds_cell(v)), str(v.seeds), _pct(v.selection, cmp.metric)]
        row += [_pct(v.stats.get(m, Stat()), m) for m in headers]
        rows.append(row)
        ens = ensemble_of(rr) if chosen else None
        if ens:
            rows.append([_tex(ensemble_label(rr)), *row[1:-len(headers) - 1], "--",
                         *[_pct(ens.stats.get(m, Stat()), m) for m in headers]])
    caption = (f"Recipes compared: configuration chosen on {_tex(cmp.metric)} averaged over replicates "
               r"(fold, seed); rates in \% as mean$_{\pm\mathrm{std}}$ over replicates; test split. "
               "Acc novel: test images unlike any training image.")
    align = "ll" + ("l" if mixed else "") + "rr" + "r" * (1 + len(headers))
    return latex_table(head, rows, caption, "tab:recipes", align)


def _pct_diff(t: TTest) -> str:
    return rf"{100 * t.diff:.1f}$_{{\pm {100 * t.std:.1f}}}$"


def _latex_paired(cmp: Comparison) -> str:
    rows = []
    for p in cmp.paired:
        b, a, pairs, diff, t, pt, mc = paired_cells(p, _pct_diff, "--")
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
        lo, hi = (_pct(Stat.one(r[k]), r["metric"]) for k in ("ci_low", "ci_high"))
        rows.append({"Recipe": r["recipe"], "Metric": r["metric"],
                     "Mean": _pct(Stat.one(r["mean"]), r["metric"]),
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
              "sites": lambda: sites_frame(cmp, cell=_pct),
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
