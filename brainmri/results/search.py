"""The search view: a search sweep's trials beside the comparison of its runs.

Reads the trial table the search driver keeps (``trials.json`` of the sweep directory, handed over
as a dict by ``launch/collect.py``): per trial its recipe, number, state (finished, pruned, failed),
value, the metric at each epoch it reported (what the pruner saw) and its run directory. Shows the
optimisation history (each trial's value by trial number, pruned trials marked at the last value
they reported, the best so far), the curves the pruner saw, parallel coordinates of the searched
keys against the value and the keys' importance (Optuna's fANOVA over the finished trials), and
whether the study's best trial is the comparison's choice. Pruned trials are marked in every view
and are never averaged: the comparison lists their runs as incomplete.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import pandas as pd

from brainmri.metric_names import choice_key
from brainmri.results.collect import Comparison, value_label
from brainmri.results.report import markdown_table
from brainmri.sweepdir import TRIAL_ACTIVE, TRIAL_ENDED, TrialState

MARKERS = {TrialState.FINISHED: "circle", TrialState.PRUNED: "x", TrialState.FAILED: "triangle-down"}
MIN_FOR_IMPORTANCE = 3  # finished trials


def _run_id(row: dict) -> str:
    return Path(row["run_dir"]).name


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def trials_frame(trials: dict, recipe: str | None = None) -> pd.DataFrame:
    """One row per trial (best first, then pruned, then failed): state, value, epochs reported, values, run."""
    search = trials.get("search", {})
    sign = -1 if search.get("direction") == "maximize" else 1
    order = {TrialState.FINISHED: 0, TrialState.PRUNED: 1, **dict.fromkeys(TRIAL_ACTIVE, 2), TrialState.FAILED: 3}
    rows = [r for r in trials["trials"] if recipe is None or r["recipe"] == recipe]
    rows.sort(key=lambda r: (order.get(r["state"], 4), sign * (r["value"] if r["value"] is not None else 0),
                             r["number"]))
    out = []
    for r in rows:
        pruned = r["state"] == TrialState.PRUNED and r.get("pruned_at")
        state = f"pruned at epoch {r['pruned_at']}" if pruned else r["state"]
        out.append({"recipe": r["recipe"], "trial": r["number"], "state": state,
                    search.get("metric", "value"): _fmt(r["value"]), "epochs reported": len(r["intermediate"]),
                    **{k: _fmt(v) for k, v in r["params"].items()}, "run": _run_id(r)})
    return pd.DataFrame(out)


def study_best(trials: dict, recipe: str) -> dict | None:
    best = (trials.get("best") or {}).get(recipe)
    if best is not None:
        return best
    done = [r for r in trials["trials"] if r["recipe"] == recipe and r["state"] == TrialState.FINISHED]
    direction = trials.get("search", {}).get("direction", "maximize")
    return min(done, key=lambda r: choice_key(r["value"], r.get("loss"), (r["number"],), direction), default=None)


def agreement(trials: dict, cmp: Comparison) -> list[str]:
    """Per recipe: the study's best trial, and whether it is the run the comparison chose."""
    lines = []
    chosen = {rr.recipe: rr for rr in cmp.recipes}
    for recipe in dict.fromkeys(r["recipe"] for r in trials["trials"]):
        states = [r["state"] for r in trials["trials"] if r["recipe"] == recipe]
        counts = ", ".join(f"{states.count(s)} {s}" for s in TRIAL_ENDED if states.count(s))
        best = study_best(trials, recipe)
        if best is None:
            lines.append(f"{recipe}: {len(states)} trial(s) ({counts}); none finished")
            continue
        rr = chosen.get(recipe)
        runs = {r.run_dir.name for r in rr.runs if r.run_dir} if rr else set()
        verdict = ("the comparison's choice" if Path(best["run_dir"]).name in runs else
                   f"the comparison chose {value_label(rr.keys, rr.chosen)}" if rr else "not compared")
        lines.append(f"{recipe}: {len(states)} trial(s) ({counts}); study's best trial {best['number']} "
                     f"({trials['search'].get('metric')} {best['value']:.4g}, run {Path(best['run_dir']).name}): "
                     f"{verdict}")
    for recipe, entry in (trials.get("confirm") or {}).items():
        lines.append(f"{recipe}: trial {entry['trial']} re-run over seeds {', '.join(map(str, entry['seeds']))} "
                     "(--confirm-seeds)")
    return lines


def search_markdown(trials: dict, cmp: Comparison) -> str:
    s = trials.get("search", {})
    head = (f"{s.get('sampler')} sampler, {s.get('pruner')} pruner on {s.get('metric')} ({s.get('direction')}), "
            f"{s.get('trials')} trial(s) per recipe, {s.get('parallel')} at once. Pruned trials stopped early and "
            "are never averaged (listed as incomplete runs).")
    return "\n\n".join(["## Search", head, "\n".join(f"- {line}" for line in agreement(trials, cmp)),
                        markdown_table(trials_frame(trials), "No trial has been asked yet.")]) + "\n"


# ---------------------------------------------------------------- figures
def history_figure(trials: dict, recipe: str):
    """Each trial's value by trial number (pruned: the last value it reported, marked ×) and the best so far."""
    import plotly.graph_objects as go

    s = trials["search"]
    rows = sorted((r for r in trials["trials"] if r["recipe"] == recipe), key=lambda r: r["number"])
    fig = go.Figure()
    for state, symbol in MARKERS.items():
        mine = [r for r in rows if r["state"] == state and r["value"] is not None]
        if mine:
            fig.add_scatter(x=[r["number"] for r in mine], y=[r["value"] for r in mine], mode="markers", name=state,
                            marker={"symbol": symbol, "size": 10}, text=[_run_id(r) for r in mine])
    best, xs, ys = None, [], []
    pick = max if s.get("direction") == "maximize" else min
    for r in rows:
        if r["state"] == TrialState.FINISHED:
            best = r["value"] if best is None else pick(best, r["value"])
        if best is not None:
            xs.append(r["number"])
            ys.append(best)
    if xs:
        fig.add_scatter(x=xs, y=ys, mode="lines", name="best so far", line={"shape": "hv"})
    fig.update_layout(title=f"{recipe}: optimisation history ({s.get('metric')}; × = pruned, at its last report)",
                      height=340, xaxis_title="trial", yaxis_title=s.get("metric"))
    return fig


def curves_figure(trials: dict, recipe: str):
    """The metric at each epoch, as the driver reported it to the pruner; pruned trials dashed."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for r in sorted((r for r in trials["trials"] if r["recipe"] == recipe), key=lambda r: r["number"]):
        steps = sorted(r["intermediate"], key=int)
        if steps:
            fig.add_scatter(x=[int(e) for e in steps], y=[r["intermediate"][e] for e in steps], mode="lines+markers",
                            name=f"trial {r['number']} ({r['state']})",
                            line={"dash": "dash" if r["state"] == TrialState.PRUNED else "solid"})
    fig.update_layout(title=f"{recipe}: {trials['search'].get('metric')} per epoch as reported to the pruner "
                      "(dashed = pruned)", height=340, xaxis_title="epoch")
    return fig


def _distributions(trials: dict) -> dict:
    from optuna.distributions import json_to_distribution

    return {k: json_to_distribution(v) for k, v in (trials.get("distributions") or {}).items()}


def parallel_figure(trials: dict, recipe: str):
    """Parallel coordinates of the searched keys (log10 for log-uniform ones) and the value; finished trials."""
    import plotly.graph_objects as go

    dists = _distributions(trials)
    rows = [r for r in trials["trials"] if r["recipe"] == recipe and r["state"] == TrialState.FINISHED]
    if len(rows) < 2 or not dists:
        return None
    dims = []
    for key, d in dists.items():
        values = [r["params"].get(key) for r in rows]
        if hasattr(d, "choices"):
            labels = [repr(c) for c in d.choices]
            dims.append({"label": key, "values": [labels.index(repr(v)) for v in values],
                         "tickvals": list(range(len(labels))), "ticktext": labels})
        elif getattr(d, "log", False):
            dims.append({"label": f"log10 {key}", "values": [math.log10(v) for v in values]})
        else:
            dims.append({"label": key, "values": values})
    metric = trials["search"].get("metric")
    value = [r["value"] for r in rows]
    dims.append({"label": metric, "values": value})
    fig = go.Figure(go.Parcoords(line={"color": value, "colorscale": "Viridis", "showscale": True}, dimensions=dims))
    fig.update_layout(title=f"{recipe}: searched keys vs {metric} (finished trials)", height=380)
    return fig


def importance(trials: dict, recipe: str) -> dict[str, float] | None:
    """Optuna's fANOVA importance of each searched key over the finished trials (None with too few)."""
    import optuna

    dists = _distributions(trials)
    rows = [r for r in trials["trials"] if r["recipe"] == recipe and r["state"] == TrialState.FINISHED]
    if len(rows) < MIN_FOR_IMPORTANCE or not dists:
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=trials["search"].get("direction", "maximize"))
    study.add_trials([optuna.trial.create_trial(params=r["params"], distributions=dists, value=r["value"])
                      for r in rows])
    return optuna.importance.get_param_importances(study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))


def search_section(trials: dict, cmp: Comparison, fig_html) -> str:
    """The HTML report's search section; ``fig_html`` renders a plotly figure (report_html's)."""
    import plotly.graph_objects as go

    parts = ["<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in agreement(trials, cmp)) + "</ul>"]
    for recipe in dict.fromkeys(r["recipe"] for r in trials["trials"]):
        parts += [fig_html(history_figure(trials, recipe)), fig_html(curves_figure(trials, recipe))]
        par = parallel_figure(trials, recipe)
        if par is not None:
            parts.append(fig_html(par))
        imp = importance(trials, recipe)
        if imp:
            fig = go.Figure(go.Bar(x=list(imp.values()), y=list(imp), orientation="h"))
            fig.update_layout(title=f"{recipe}: importance of each searched key (fANOVA, finished trials)",
                              height=120 + 40 * len(imp), xaxis_title="importance")
            parts.append(fig_html(fig))
    table = trials_frame(trials).to_html(index=False, escape=True, classes="sortable", border=0, na_rep="–")
    return "".join(parts) + "<h3>Trials (pruned ones stopped early; never averaged)</h3>" + table
