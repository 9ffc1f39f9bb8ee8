"""Render a brainmri.results.collect.Comparison as one self-contained HTML file (no network needed to open it).

Owns presentation only: every number comes from the Comparison, the run dirs' files and
brainmri.results.collect's statistics (McNemar). Plotly's offline bundle is inlined once per page.
"""

from __future__ import annotations

import base64
import functools
import gzip
import html
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from plotly.utils import PlotlyJSONEncoder

from brainmri.atomic import atomic_write
from brainmri.results.collect import (
    Comparison,
    Run,
    corrected_ttest,
    flatten,
    load_predictions,
    mcnemar,
    not_swept,
    value_label,
)
from brainmri.results.report import (
    bands_frame,
    classes_frame,
    display_frame,
    fmt,
    incomplete_folds_frame,
    incomplete_frame,
    intervals_frame,
    intro_text,
    paired_frame,
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


def _fig(fig) -> str:
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


def _predictions(run: Run) -> pd.DataFrame | None:
    return load_predictions(run)


def _paired_correct(pa: pd.DataFrame, pb: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per-image correctness of two runs on their common test images, matched on path."""
    if len(pa) == len(pb) and (pa["path"].to_numpy() == pb["path"].to_numpy()).all():
        return ((pa["pred"] == pa["label"]).to_numpy(), (pb["pred"] == pb["label"]).to_numpy())
    m = pa.merge(pb, on="path", suffixes=("_a", "_b"))
    return (m["pred_a"] == m["label_a"]).to_numpy(), (m["pred_b"] == m["label_b"]).to_numpy()


def _class_index(values: pd.Series, classes: list[str]) -> np.ndarray:
    """Class indices of a predictions column, which holds class names (the engine) or indices."""
    if pd.api.types.is_integer_dtype(values):
        return values.to_numpy()
    index = {c: i for i, c in enumerate(classes)}
    for v in pd.unique(values):
        index.setdefault(v, len(index))
    return values.map(index).to_numpy()


def holm(pvalues: list[float]) -> list[float]:
    """Holm step-down adjusted p-values (same order as given)."""
    order = np.argsort(pvalues)
    m, adj, running = len(pvalues), [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adj[i] = running
    return adj


def pairwise_mcnemar(cmp: Comparison) -> pd.DataFrame:
    """McNemar between every pair of finished recipes (chosen configs), per common (fold, seed), Holm-corrected."""
    rows = []
    folds = any(r.fold is not None for rr in cmp.recipes for r in rr.runs)
    for a, b in itertools.combinations(cmp.recipes, 2):
        rb = {r.replicate: r for r in b.runs}
        for ra in sorted(a.runs, key=lambda r: (str(r.seed), str(r.fold))):
            if ra.replicate not in rb:
                continue
            pa, pb = _predictions(ra), _predictions(rb[ra.replicate])
            if pa is None or pb is None:
                continue
            ca, cb = _paired_correct(pa, pb)
            res = mcnemar(ca, cb)
            rows.append({"A": a.recipe, "B": b.recipe, **({"fold": ra.fold} if folds else {}), "seed": ra.seed,
                         "n": len(ca), "acc A": f"{ca.mean():.3f}" if len(ca) else None,
                         "acc B": f"{cb.mean():.3f}" if len(cb) else None,
                         "b": res["b"], "c": res["c"], "method": res["method"], "p": res["p"]})
    df = pd.DataFrame(rows)
    if len(df):
        df["p (Holm)"] = holm(df["p"].tolist())
        df["p"] = df["p"].map(lambda p: f"{p:.2g}")
        df["p (Holm)"] = df["p (Holm)"].map(lambda p: f"{p:.2g}")
    return df


def pairwise_ttest(cmp: Comparison) -> pd.DataFrame:
    """The corrected resampled t-test (Nadeau & Bengio, 2003) between every pair of recipes over their
    common (fold, seed) pairs, Holm-corrected over the pairs that have one."""
    rows = []
    for a, b in itertools.combinations(cmp.recipes, 2):
        t = corrected_ttest(a, b)
        if t["reason"] is None:
            rows.append({"A": a.recipe, "B": b.recipe, "pairs": t["pairs"], "acc A": f"{t['mean_a']:.3f}",
                         "acc B": f"{t['mean_b']:.3f}", "Δ (A − B)": f"{t['diff']:.3f} ± {t['std']:.3f}",
                         "ρ": f"{t['rho']:.3f}", "t": f"{t['t']:.2f}", "p": t["p"]})
    df = pd.DataFrame(rows)
    if len(df):
        df["p (Holm)"] = [f"{p:.2g}" for p in holm(df["p"].tolist())]
        df["p"] = df["p"].map(lambda p: f"{p:.2g}")
    return df


def cost_frame(cmp: Comparison) -> pd.DataFrame:
    """Per recipe (all finished runs): wall time, images/s, CPU- or GPU-hours."""
    from brainmri.results.collect import run_cost
    rows = []
    for rr in cmp.recipes:
        costs = [run_cost(r) for v in rr.per_value for r in v["runs"]]
        rows.append({"recipe": rr.recipe, "runs": len(costs),
                     "wall time (s)": round(sum(c["wall_s"] for c in costs), 1),
                     "images/s (mean)": round(float(np.nanmean([c["images_per_s"] for c in costs] or [math.nan])), 1),
                     "device-hours": round(sum(c["hours"] for c in costs), 4),
                     "kind": "/".join(sorted({c["kind"] for c in costs}))})
    return pd.DataFrame(rows)


def config_diff(cmp: Comparison) -> pd.DataFrame:
    flats = {rr.recipe: flatten(rr.runs[0].config) for rr in cmp.recipes if rr.runs}
    keys = sorted(set().union(*flats.values())) if flats else []
    rows = [{"key": k, **{rec: str(f.get(k, "–")) for rec, f in flats.items()}} for k in keys
            if not not_swept(k)
            and len({repr(f.get(k)) for f in flats.values()}) > 1]
    return pd.DataFrame(rows)


def render_html(cmp: Comparison, title: str = "brainmri recipe comparison", search: dict | None = None) -> str:
    """The page; ``search``: a search sweep's trial table (its driver's ``trials.json``) adds the search view."""
    import plotly.graph_objects as go

    sec: list[tuple[str, str]] = []
    sec.append(("1. Comparison table", f"<p>{html.escape(intro_text(cmp))}</p>" + _table(display_frame(cmp), True)
                + "<p>Chosen on validation: " + "; ".join(
                    html.escape(f"{rr.recipe}: {value_label(rr.keys, rr.chosen)} (best mean {cmp.metric})")
                    for rr in cmp.recipes) + "</p>"
                + "<h3>95 % intervals</h3>" + f"<p>{html.escape(intro_text(cmp, 'intervals').split('. ')[-2])}.</p>"
                + _table(intervals_frame(cmp), True)))
    parts = []
    for rr in cmp.recipes:
        fig = go.Figure()
        for v in rr.per_value:
            lab = value_label(rr.keys, v["value"])
            ys = [r.summary.get(cmp.metric) for r in v["runs"]]
            fig.add_scatter(x=[lab] * len(ys), y=ys, mode="markers", name=f"{lab} replicates",
                            marker={"size": 9, "symbol": "star" if v["value"] == rr.chosen else "circle"})
            fig.add_scatter(x=[lab], y=[v["selection"]["mean"]], mode="markers", name=f"{lab} mean",
                            marker={"size": 14, "symbol": "line-ew-open", "color": "black"})
        fig.update_layout(title=f"{rr.recipe}: swept value vs {cmp.metric} (star = chosen)",
                          height=320, yaxis_title=cmp.metric)
        parts.append(_fig(fig))
    sec.append(("2. Swept value vs validation metric", "".join(parts)))
    parts = []
    for metric in ("train/loss", "val/loss", "train/acc", "val/acc"):
        fig = go.Figure()
        for i, rr in enumerate(cmp.recipes):
            hist = [h for r in rr.runs for h in r.history() if metric in h]
            if not hist:
                continue
            g = pd.DataFrame([{"x": h.get("epoch"), "y": h[metric]} for h in hist]).groupby("x")["y"]
            g = g.agg(["mean", "std"]).fillna(0.0)
            x = list(g.index)
            color = COLORS[i % len(COLORS)]
            fig.add_scatter(x=x + x[::-1], y=list(g["mean"] + g["std"]) + list(g["mean"] - g["std"])[::-1],
                            fill="toself", opacity=0.2, line={"width": 0}, fillcolor=color, showlegend=False,
                            hoverinfo="skip")
            fig.add_scatter(x=x, y=list(g["mean"]), mode="lines+markers", name=rr.recipe, line={"color": color})
            phases: dict = {}
            for h in hist:
                phases.setdefault(h.get("phase"), h.get("epoch"))
            for ph, e in list(phases.items())[1:]:
                fig.add_vline(x=e - 0.5, line_dash="dot", annotation_text=str(ph))
        fig.update_layout(title=f"{metric} (mean ± std over replicates)", height=300, xaxis_title="epoch")
        parts.append(_fig(fig))
    sec.append(("3. Training curves", "".join(parts)))
    parts, rel_parts = [], []
    for rr in cmp.recipes:
        preds = [p for p in (_predictions(r) for r in rr.runs) if p is not None]
        classes = rr.runs[0].summary.get("classes") or []
        if preds:
            df = pd.concat(preds)
            label, pred = _class_index(df["label"], classes), _class_index(df["pred"], classes)
            k = max(len(classes), int(max(label.max(), pred.max())) + 1)
            cm = np.zeros((k, k), int)
            np.add.at(cm, (label, pred), 1)
            norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
            names = classes or [str(i) for i in range(k)]
            fig = go.Figure(go.Heatmap(z=norm, x=names, y=names, text=cm, texttemplate="%{text}",
                                       colorscale="Blues", zmin=0, zmax=1))
            fig.update_layout(title=f"{rr.recipe} ({value_label(rr.keys, rr.chosen)}), test, all replicates: "
                              "row-normalised, counts in cells", height=380, xaxis_title="predicted",
                              yaxis_title="true", yaxis_autorange="reversed")
            parts.append(_fig(fig))
            prob_cols = [c for c in df.columns if c.startswith("prob")]
            if prob_cols:
                conf = df[prob_cols].max(axis=1).to_numpy()
                correct = (df["label"] == df["pred"]).to_numpy()
                bins = np.clip((conf * 10).astype(int), 0, 9)
                xs, ys, ece = [], [], 0.0
                for b in range(10):
                    m = bins == b
                    if m.any():
                        xs.append(float(conf[m].mean()))
                        ys.append(float(correct[m].mean()))
                        ece += m.mean() * abs(xs[-1] - ys[-1])
                fig = go.Figure([go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect"),
                                 go.Scatter(x=xs, y=ys, mode="lines+markers", name=rr.recipe)])
                fig.update_layout(title=f"{rr.recipe}: reliability, ECE={ece:.3f}", height=320,
                                  xaxis_title="confidence", yaxis_title="accuracy")
                rel_parts.append(_fig(fig))
    sec.append(("4. Confusion matrices (chosen configuration)", "".join(parts) or "<p>No test predictions.</p>"))
    ece_tab = pd.DataFrame([{"recipe": rr.recipe, "ECE": fmt(rr.stats.get("ece", {}))} for rr in cmp.recipes])
    classes = classes_frame(cmp)
    sec.append(("5. Calibration and per-class metrics", "".join(rel_parts) + _table(ece_tab, True)
                + (_table(classes, True) if len(classes) else "")))
    pw, pt, vs = pairwise_mcnemar(cmp), pairwise_ttest(cmp), paired_frame(cmp)
    sec.append(("6. Paired tests: corrected resampled t over folds, McNemar per (fold, seed)",
                ("<h3>Every recipe vs the best by validation</h3>" + _table(vs, True) if len(vs) else "")
                + "<h3>Corrected resampled t-test (Nadeau &amp; Bengio, 2003), every pair, Holm-corrected</h3>"
                + (_table(pt, True) if len(pt) else "<p>No pair of cross-validated recipes on the same folds.</p>")
                + "<h3>McNemar on the shared test images, per (fold, seed), every pair, Holm-corrected</h3>"
                + (_table(pw, True) if len(pw) else
                   "<p>Fewer than two recipes with test predictions: no paired test.</p>")))
    bands = bands_frame(cmp)
    if (bands["Band"] != "all").any() if len(bands) else False:
        sec.append(("7. Accuracy by similarity-to-training band (chosen configuration, over replicates)",
                    _table(bands, True)))
    sec.append(("8. Compute cost", _table(cost_frame(cmp), True)))
    inc, folds = incomplete_frame(cmp, full_error=True), incomplete_folds_frame(cmp)
    pruned = inc[inc["status"] == "pruned"] if len(inc) else inc
    inc = inc[inc["status"] != "pruned"] if len(inc) else inc
    failed = f"<p>{len(pruned)} trial(s) pruned by the search (stopped early, never averaged): " \
        f"{html.escape(', '.join(map(str, pruned['id'])))}.</p>" if len(pruned) else ""
    failed += "".join(
        f"<h3>{html.escape(str(r['id']))} ({html.escape(str(r['recipe']))}, {_replicate(r)}): "
        f"{html.escape(str(r['status']))}</h3><pre>{html.escape(str(r['error']))}</pre>"
        for r in inc.to_dict("records"))
    sec.append(("9. Failed or unfinished runs, incomplete fold sets",
                ("<h3>Incomplete fold sets (not averaged)</h3>" + _table(folds) if len(folds) else "")
                + (failed or "<p>No failed or unfinished runs.</p>")))
    cd = config_diff(cmp)
    sec.append(("10. Config differences between recipes", _table(cd) if len(cd) else "<p>No differences.</p>"))
    if search:
        from brainmri.results.search import search_section

        sec.append(("11. Search: trials, pruning, optimisation history", search_section(search, cmp, _fig)))
    body = "".join(f"<section id='s{t.split('.')[0]}'><h2>{html.escape(t)}</h2>{c}</section>" for t, c in sec)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>{body}"
            f"<script type='application/octet-stream' id='plotly-gz'>{_plotly_gz()}</script>"
            f"<script type='application/json' id='plotly-template'>{_plotly_template()}</script>"
            f"<script>{PLOTLY_LOADER}</script><script>{SORT_JS}</script></body></html>")


def _replicate(row: dict) -> str:
    fold = row.get("fold")
    return f"seed {row['seed']}" if fold is None or pd.isna(fold) else f"fold {int(fold)}, seed {row['seed']}"


def write_html(cmp: Comparison, path: str | Path, search: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, render_html(cmp, search=search))
    return path
