"""Render a brainmri.results.comparison.Comparison as one self-contained HTML file (no network needed to open it).

Presentation only: every number comes from the Comparison and brainmri.results' statistics
(``stats``: every pairwise test, Holm, confusion counts, reliability and the one ECE; ``cost``).
Plotly's offline bundle is inlined once per page.
"""

from __future__ import annotations

import base64
import functools
import gzip
import html
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from plotly.utils import PlotlyJSONEncoder

from brainmri.atomic import atomic_write
from brainmri.results.comparison import Comparison, RecipeResult, value_label
from brainmri.results.cost import recipe_cost
from brainmri.results.runs import load_predictions
from brainmri.results.selection import config_differences
from brainmri.results.stats import confusion, pairwise_mcnemar, pairwise_ttest, reliability
from brainmri.results.tables import (
    INTERVALS_METHOD,
    LOSO_TEXT,
    SITES_TEXT,
    bands_frame,
    classes_frame,
    display_frame,
    fmt,
    incomplete_folds_frame,
    incomplete_frame,
    intervals_frame,
    intro_text,
    loso_frame,
    paired_frame,
    replicate_text,
    sites_frame,
)

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")

SORT_JS = """
document.querySelectorAll('table.sortable th').forEach(function (th, i) {
  th.addEventListener('click', function () {
    var tb = th.closest('table').tBodies[0], rows = Array.from(tb.rows), asc = th.dataset.asc !== '1';
    rows.sort(function (a, b) {
      var x = a.cells[i].innerText, y = b.cells[i].innerText, nx = parseFloat(x), ny = parseFloat(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return asc ? c : -c; });
    rows.forEach(function (r) { tb.appendChild(r); }); th.dataset.asc = asc ? '1' : '0'; });
});
"""
CSS = ("body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em;color:#222}"
       "table{border-collapse:collapse;margin:.5em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}"
       "th{background:#eee;cursor:pointer}pre{background:#f6f6f6;padding:.5em;white-space:pre-wrap}"
       "section{margin-bottom:2em}")


def _table(df: pd.DataFrame, sortable: bool = False) -> str:
    return df.to_html(index=False, escape=True, classes="sortable" if sortable else "", border=0,
                      na_rep="–")


def _fig(fig: Any) -> str:
    """A placeholder div and the figure's JSON (without the shared template); PLOTLY_LOADER draws it."""
    spec = fig.to_plotly_json()
    spec["layout"].pop("template", None)
    data = json.dumps(spec, cls=PlotlyJSONEncoder, separators=(",", ":")).replace("</", "<\\/")
    return f"<div class='plotly-fig'></div><script type='application/json' class='plotly-data'>{data}</script>"


# plotly.js inlined gzip-compressed (≈ 1.9 MB of base64 instead of 4.8 MB; the package ships no
# partial bundle) and unpacked by the browser's DecompressionStream, then every figure is drawn
# with one shared template. Works from file:// with no network.
PLOTLY_LOADER = """
(function () {
  var bytes = Uint8Array.from(atob(document.getElementById('plotly-gz').textContent),
                              function (c) { return c.charCodeAt(0); });
  var template = JSON.parse(document.getElementById('plotly-template').textContent);
  new Response(new Blob([bytes]).stream().pipeThrough(new DecompressionStream('gzip'))).text().then(function (src) {
    var s = document.createElement('script'); s.text = src; document.head.appendChild(s);
    document.querySelectorAll('div.plotly-fig').forEach(function (div) {
      var spec = JSON.parse(div.nextElementSibling.textContent);
      spec.layout.template = template;
      Plotly.newPlot(div, spec.data, spec.layout, {responsive: true});
    });
  });
})();
"""


@functools.lru_cache(maxsize=1)
def _plotly_gz() -> str:
    from plotly.offline import get_plotlyjs

    return base64.b64encode(gzip.compress(get_plotlyjs().encode(), 9, mtime=0)).decode()


def _plotly_template() -> str:
    import plotly.io as pio

    return json.dumps(pio.templates[pio.templates.default].to_plotly_json()["layout"], cls=PlotlyJSONEncoder)


def pairwise_mcnemar_frame(cmp: Comparison) -> pd.DataFrame:
    """McNemar between every pair of recipes, per common (fold, seed), Holm-adjusted (``stats``)."""
    folds = any(r.fold is not None for rr in cmp.recipes for r in rr.runs)
    df = pd.DataFrame([{"A": m.a, "B": m.b, **({"fold": m.fold} if folds else {}), "seed": m.seed, "n": m.n,
                        "acc A": f"{m.acc_a:.3f}" if m.n else None, "acc B": f"{m.acc_b:.3f}" if m.n else None,
                        "b": m.test.b, "c": m.test.c, "method": m.test.method, "p": f"{m.test.p:.2g}",
                        "p (Holm)": f"{m.p_holm:.2g}"} for m in pairwise_mcnemar(cmp.recipes)])
    return df


def pairwise_ttest_frame(cmp: Comparison) -> pd.DataFrame:
    """The corrected resampled t-test between every pair of recipes, Holm-adjusted (``stats``)."""
    return pd.DataFrame([{"A": t.a, "B": t.b, "pairs": t.pairs, "acc A": f"{t.mean_a:.3f}", "acc B": f"{t.mean_b:.3f}",
                          "Δ (A − B)": f"{t.diff:.3f} ± {t.std:.3f}", "ρ": f"{t.rho:.3f}", "t": f"{t.t:.2f}",
                          "p": f"{t.p:.2g}", "p (Holm)": f"{w.p_holm:.2g}"}
                         for w in pairwise_ttest(cmp.recipes) for t in [w.test]])


def cost_frame(cmp: Comparison) -> pd.DataFrame:
    """Per recipe (all finished runs): wall time, images/s, CPU- or GPU-hours (``cost``)."""
    return pd.DataFrame([{"recipe": c.recipe, "runs": c.runs, "wall time (s)": round(c.wall_s, 1),
                          "images/s (mean)": round(c.images_per_s, 1), "device-hours": round(c.hours, 4),
                          "kind": c.kind} for c in map(recipe_cost, cmp.recipes)])


def config_diff(cmp: Comparison) -> pd.DataFrame:
    """One row per config key whose value differs between the recipes' chosen configurations."""
    return pd.DataFrame([{"key": k, **{rec: str(v) for rec, v in values.items()}}
                         for k, values in config_differences(cmp.recipes).items()])


Section = tuple[str, str]


def _comparison_section(cmp: Comparison) -> Section:
    chosen = "; ".join(html.escape(f"{rr.recipe}: {value_label(rr.keys, rr.chosen)} (best mean {cmp.metric})")
                       for rr in cmp.recipes)
    return ("1. Comparison table", f"<p>{html.escape(intro_text(cmp))}</p>" + _table(display_frame(cmp), True)
            + f"<p>Chosen on validation: {chosen}</p><h3>95 % intervals</h3>"
            + f"<p>{html.escape(INTERVALS_METHOD)}</p>" + _table(intervals_frame(cmp), True))


def _swept_section(cmp: Comparison) -> Section:
    import plotly.graph_objects as go

    parts = []
    for rr in cmp.recipes:
        fig = go.Figure()
        for v in rr.per_value:
            lab = value_label(rr.keys, v.value)
            ys = [r.summary.get(cmp.metric) for r in v.runs]
            fig.add_scatter(x=[lab] * len(ys), y=ys, mode="markers", name=f"{lab} replicates",
                            marker={"size": 9, "symbol": "star" if v.value == rr.chosen else "circle"})
            fig.add_scatter(x=[lab], y=[v.selection.mean], mode="markers", name=f"{lab} mean",
                            marker={"size": 14, "symbol": "line-ew-open", "color": "black"})
        fig.update_layout(title=f"{rr.recipe}: swept value vs {cmp.metric} (star = chosen)",
                          height=320, yaxis_title=cmp.metric)
        parts.append(_fig(fig))
    return "2. Swept value vs validation metric", "".join(parts)


def _curve(fig: Any, rr: RecipeResult, metric: str, color: str) -> None:
    """``rr``'s mean ± std of ``metric`` per epoch over its replicates, and where each phase begins."""
    hist = [h for r in rr.runs for h in r.history() if metric in h]
    if not hist:
        return
    g = pd.DataFrame([{"x": h.get("epoch"), "y": h[metric]} for h in hist]).groupby("x")["y"]
    g = g.agg(["mean", "std"]).fillna(0.0)
    x = list(g.index)
    fig.add_scatter(x=x + x[::-1], y=list(g["mean"] + g["std"]) + list(g["mean"] - g["std"])[::-1],
                    fill="toself", opacity=0.2, line={"width": 0}, fillcolor=color, showlegend=False,
                    hoverinfo="skip")
    fig.add_scatter(x=x, y=list(g["mean"]), mode="lines+markers", name=rr.recipe, line={"color": color})
    phases: dict = {}
    for h in hist:
        phases.setdefault(h.get("phase"), h.get("epoch"))
    for ph, e in list(phases.items())[1:]:
        fig.add_vline(x=e - 0.5, line_dash="dot", annotation_text=str(ph))


def _curves_section(cmp: Comparison) -> Section:
    import plotly.graph_objects as go

    parts = []
    for metric in ("train/loss", "val/loss", "train/acc", "val/acc"):
        fig = go.Figure()
        for i, rr in enumerate(cmp.recipes):
            _curve(fig, rr, metric, COLORS[i % len(COLORS)])
        fig.update_layout(title=f"{metric} (mean ± std over replicates)", height=300, xaxis_title="epoch")
        parts.append(_fig(fig))
    return "3. Training curves", "".join(parts)


def _prediction_figures(rr: RecipeResult) -> tuple[str, str]:
    """``rr``'s confusion matrix and reliability curve over its replicates' pooled test predictions."""
    import plotly.graph_objects as go

    preds = [p for p in (load_predictions(r) for r in rr.runs) if p is not None]
    if not preds:
        return "", ""
    df = pd.concat(preds)
    cm, names = confusion(df, rr.runs[0].summary.get("classes") or [])
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig = go.Figure(go.Heatmap(z=norm, x=names, y=names, text=cm, texttemplate="%{text}",
                               colorscale="Blues", zmin=0, zmax=1))
    fig.update_layout(title=f"{rr.recipe} ({value_label(rr.keys, rr.chosen)}), test, all replicates: "
                      "row-normalised, counts in cells", height=380, xaxis_title="predicted",
                      yaxis_title="true", yaxis_autorange="reversed")
    rel = reliability(df)
    if rel is None:
        return _fig(fig), ""
    curve = go.Figure([go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect"),
                       go.Scatter(x=rel.confidence, y=rel.accuracy, mode="lines+markers", name=rr.recipe)])
    curve.update_layout(title=f"{rr.recipe}: reliability, ECE={rel.ece:.3f}", height=320,
                        xaxis_title="confidence", yaxis_title="accuracy")
    return _fig(fig), _fig(curve)


def _prediction_sections(cmp: Comparison) -> list[Section]:
    figures = [_prediction_figures(rr) for rr in cmp.recipes]
    confusions, curves = "".join(f[0] for f in figures), "".join(f[1] for f in figures)
    ece_tab = pd.DataFrame([{"recipe": rr.recipe, "ECE": fmt(rr.stat("ece"))} for rr in cmp.recipes])
    classes = classes_frame(cmp)
    return [("4. Confusion matrices (chosen configuration)", confusions or "<p>No test predictions.</p>"),
            ("5. Calibration and per-class metrics", curves + _table(ece_tab, True)
             + (_table(classes, True) if len(classes) else ""))]


def _paired_section(cmp: Comparison) -> Section:
    pw, pt, vs = pairwise_mcnemar_frame(cmp), pairwise_ttest_frame(cmp), paired_frame(cmp)
    return ("6. Paired tests: corrected resampled t over folds, McNemar per (fold, seed)",
            ("<h3>Every recipe vs the best by validation</h3>" + _table(vs, True) if len(vs) else "")
            + "<h3>Corrected resampled t-test (Nadeau &amp; Bengio, 2003), every pair, Holm-corrected</h3>"
            + (_table(pt, True) if len(pt) else "<p>No pair of cross-validated recipes on the same folds.</p>")
            + "<h3>McNemar on the shared test images, per (fold, seed), every pair, Holm-corrected</h3>"
            + (_table(pw, True) if len(pw) else "<p>Fewer than two recipes with test predictions: no paired test.</p>"))


def _failed_section(cmp: Comparison) -> Section:
    inc, folds = incomplete_frame(cmp, full_error=True), incomplete_folds_frame(cmp)
    pruned = inc[inc["status"] == "pruned"] if len(inc) else inc
    inc = inc[inc["status"] != "pruned"] if len(inc) else inc
    failed = f"<p>{len(pruned)} trial(s) pruned by the search (stopped early, never averaged): " \
        f"{html.escape(', '.join(map(str, pruned['id'])))}.</p>" if len(pruned) else ""
    failed += "".join(
        f"<h3>{html.escape(str(r['id']))} ({html.escape(str(r['recipe']))}, "
        f"{replicate_text(r.get('fold'), r['seed'])}): "
        f"{html.escape(str(r['status']))}</h3><pre>{html.escape(str(r['error']))}</pre>"
        for r in inc.to_dict("records"))
    return ("9. Failed or unfinished runs, incomplete fold sets",
            ("<h3>Incomplete fold sets (not averaged)</h3>" + _table(folds) if len(folds) else "")
            + (failed or "<p>No failed or unfinished runs.</p>"))


def _site_sections(cmp: Comparison) -> list[Section]:
    """Test metrics per acquisition site, and the leave-one-site-out table, when the runs have them."""
    sec: list[Section] = []
    per_site = sites_frame(cmp)
    if len(per_site):
        sec.append(("7b. Accuracy per site (chosen configuration, over replicates)",
                    f"<p>{html.escape(SITES_TEXT)}</p>" + _table(per_site, True)))
    if cmp.loso:
        sec.append(("7c. Leave one site out", f"<p>{html.escape(LOSO_TEXT)}</p>" + _table(loso_frame(cmp), True)))
    return sec


def sections(cmp: Comparison, search: dict | None = None) -> list[Section]:
    """The page's sections in order: (title, HTML)."""
    sec = [_comparison_section(cmp), _swept_section(cmp), _curves_section(cmp), *_prediction_sections(cmp),
           _paired_section(cmp)]
    bands = bands_frame(cmp)
    if (bands["Band"] != "all").any() if len(bands) else False:
        sec.append(("7. Accuracy by similarity-to-training band (chosen configuration, over replicates)",
                    _table(bands, True)))
    sec += _site_sections(cmp)
    sec += [("8. Compute cost", _table(cost_frame(cmp), True)), _failed_section(cmp)]
    cd = config_diff(cmp)
    sec.append(("10. Config differences between recipes", _table(cd) if len(cd) else "<p>No differences.</p>"))
    if search:
        from brainmri.results.search import search_section

        sec.append(("11. Search: trials, pruning, optimisation history", search_section(search, cmp, _fig)))
    return sec


def render_html(cmp: Comparison, title: str = "brainmri recipe comparison", search: dict | None = None) -> str:
    """The page; ``search``: a search sweep's trial table (its driver's ``trials.json``) adds the search view."""
    body = "".join(f"<section id='s{t.split('.')[0]}'><h2>{html.escape(t)}</h2>{c}</section>"
                   for t, c in sections(cmp, search))
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>{body}"
            f"<script type='application/octet-stream' id='plotly-gz'>{_plotly_gz()}</script>"
            f"<script type='application/json' id='plotly-template'>{_plotly_template()}</script>"
            f"<script>{PLOTLY_LOADER}</script><script>{SORT_JS}</script></body></html>")


def write_html(cmp: Comparison, path: str | Path, search: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, render_html(cmp, search=search))
    return path
