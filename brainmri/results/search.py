"""The search view: a search sweep's trials beside the comparison of its runs.

Reads the trial table the search driver keeps (``trials.json`` of the sweep directory, handed over
as a dict by ``launch/collect.py`` and typed here as a ``SearchTable`` of ``Trial``s): per trial its
recipe, number, state (finished, pruned, failed),
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from brainmri.metric_names import choice_key
from brainmri.results.comparison import Comparison, value_label
from brainmri.results.tables import markdown_table
from brainmri.sweepdir import TRIAL_ACTIVE, TRIAL_ENDED, TrialState

MARKERS = {TrialState.FINISHED: "circle", TrialState.PRUNED: "x", TrialState.FAILED: "triangle-down"}
MIN_FOR_IMPORTANCE = 3  # finished trials


@dataclass(frozen=True)
class Trial:
    """One trial of the trial table: its recipe, number, state, value (a pruned trial: the last value it
    reported), validation loss, searched values, the metric at each epoch it reported, and its run."""

    recipe: str
    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    intermediate: dict[str, float]
    run_dir: str
    loss: float | None = None
    pruned_at: int | None = None

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> Trial:
        return cls(recipe=r["recipe"], number=r["number"], state=r["state"], value=r["value"],
                   params=dict(r["params"]), intermediate=dict(r["intermediate"]), run_dir=str(r["run_dir"]),
                   loss=r.get("loss"), pruned_at=r.get("pruned_at"))

    @property
    def run_id(self) -> str:
        return Path(self.run_dir).name


@dataclass(frozen=True)
class SearchSettings:
    """The search block the study ran with (``None``: not recorded)."""

    sampler: str | None = None
    pruner: str | None = None
    metric: str | None = None
    direction: str | None = None
    trials: int | None = None
    parallel: int | None = None


@dataclass(frozen=True)
class Confirmation:
    """A recipe's best trial re-run over more seeds (``--confirm-seeds``)."""

    trial: int
    seeds: list[Any]


@dataclass(frozen=True)
class SearchTable:
    """The search driver's trial table (``trials.json``), typed."""

    settings: SearchSettings
    trials: list[Trial]
    best: dict[str, Trial] = field(default_factory=dict)  # per recipe, as the driver recorded it (no epochs)
    confirm: dict[str, Confirmation] = field(default_factory=dict)
    distributions: dict[str, Any] = field(default_factory=dict)  # searched key -> Optuna's distribution JSON

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SearchTable:
        s = d.get("search") or {}
        return cls(settings=SearchSettings(**{k: s.get(k) for k in SearchSettings.__dataclass_fields__}),
                   trials=[Trial.from_record(r) for r in d.get("trials") or []],
                   best={k: Trial.from_record({"recipe": k, "state": TrialState.FINISHED, "intermediate": {}, **v})
                         for k, v in (d.get("best") or {}).items() if v is not None},
                   confirm={k: Confirmation(trial=v["trial"], seeds=list(v["seeds"]))
                            for k, v in (d.get("confirm") or {}).items()},
                   distributions=dict(d.get("distributions") or {}))

    def of(self, recipe: str) -> list[Trial]:
        return [t for t in self.trials if t.recipe == recipe]

    @property
    def recipes(self) -> list[str]:
        return list(dict.fromkeys(t.recipe for t in self.trials))


Trials = SearchTable | dict[str, Any]


def as_table(trials: Trials) -> SearchTable:
    """A ``SearchTable`` (``trials.json`` as read by ``brainmri.sweep.search.read_trials`` is typed here)."""
    return trials if isinstance(trials, SearchTable) else SearchTable.from_json(trials)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def trials_frame(trials: Trials, recipe: str | None = None) -> pd.DataFrame:
    """One row per trial (best first, then pruned, then failed): state, value, epochs reported, values, run."""
    table = as_table(trials)
    sign = -1 if table.settings.direction == "maximize" else 1
    order: dict[str, int] = {TrialState.FINISHED: 0, TrialState.PRUNED: 1, **dict.fromkeys(TRIAL_ACTIVE, 2),
                             TrialState.FAILED: 3}
    rows = [t for t in table.trials if recipe is None or t.recipe == recipe]
    rows.sort(key=lambda t: (order.get(t.state, 4), sign * (t.value if t.value is not None else 0), t.number))
    out = []
    for t in rows:
        pruned = t.state == TrialState.PRUNED and t.pruned_at
        state = f"pruned at epoch {t.pruned_at}" if pruned else t.state
        out.append({"recipe": t.recipe, "trial": t.number, "state": state,
                    table.settings.metric or "value": _fmt(t.value), "epochs reported": len(t.intermediate),
                    **{k: _fmt(v) for k, v in t.params.items()}, "run": t.run_id})
    return pd.DataFrame(out)


def study_best(trials: Trials, recipe: str) -> Trial | None:
    """The study's best trial of ``recipe``: the driver's record, else by the one choice rule."""
    table = as_table(trials)
    if recipe in table.best:
        return table.best[recipe]
    done = [t for t in table.of(recipe) if t.state == TrialState.FINISHED and t.value is not None]
    direction = table.settings.direction or "maximize"
    return min(done, key=lambda t: choice_key(float(t.value or 0.0), t.loss, (t.number,), direction), default=None)


def agreement(trials: Trials, cmp: Comparison) -> list[str]:
    """Per recipe: the study's best trial, and whether it is the run the comparison chose."""
    table, lines = as_table(trials), []
    chosen = {rr.recipe: rr for rr in cmp.recipes}
    for recipe in table.recipes:
        states = [t.state for t in table.of(recipe)]
        counts = ", ".join(f"{states.count(s)} {s}" for s in TRIAL_ENDED if states.count(s))
        best = study_best(table, recipe)
        if best is None:
            lines.append(f"{recipe}: {len(states)} trial(s) ({counts}); none finished")
            continue
        rr = chosen.get(recipe)
        runs = {r.run_dir.name for r in rr.runs if r.run_dir} if rr else set()
        verdict = ("the comparison's choice" if best.run_id in runs else
                   f"the comparison chose {value_label(rr.keys, rr.chosen)}" if rr else "not compared")
        lines.append(f"{recipe}: {len(states)} trial(s) ({counts}); study's best trial {best.number} "
                     f"({table.settings.metric} {best.value:.4g}, run {best.run_id}): {verdict}")
    for recipe, entry in table.confirm.items():
        lines.append(f"{recipe}: trial {entry.trial} re-run over seeds {', '.join(map(str, entry.seeds))} "
                     "(--confirm-seeds)")
    return lines


def search_markdown(trials: Trials, cmp: Comparison) -> str:
    table = as_table(trials)
    s = table.settings
    head = (f"{s.sampler} sampler, {s.pruner} pruner on {s.metric} ({s.direction}), "
            f"{s.trials} trial(s) per recipe, {s.parallel} at once. Pruned trials stopped early and "
            "are never averaged (listed as incomplete runs).")
    return "\n\n".join(["## Search", head, "\n".join(f"- {line}" for line in agreement(table, cmp)),
                        markdown_table(trials_frame(table), "No trial has been asked yet.")]) + "\n"


# ---------------------------------------------------------------- figures
def history_figure(table: SearchTable, recipe: str) -> Any:
    """Each trial's value by trial number (pruned: the last value it reported, marked ×) and the best so far."""
    import plotly.graph_objects as go

    s = table.settings
    rows = sorted(table.of(recipe), key=lambda t: t.number)
    fig = go.Figure()
    for state, symbol in MARKERS.items():
        mine = [t for t in rows if t.state == state and t.value is not None]
        if mine:
            fig.add_scatter(x=[t.number for t in mine], y=[t.value for t in mine], mode="markers", name=state,
                            marker={"symbol": symbol, "size": 10}, text=[t.run_id for t in mine])
    best: float | None = None
    xs, ys = [], []
    pick = max if s.direction == "maximize" else min
    for t in rows:
        if t.state == TrialState.FINISHED and t.value is not None:
            best = t.value if best is None else pick(best, t.value)
        if best is not None:
            xs.append(t.number)
            ys.append(best)
    if xs:
        fig.add_scatter(x=xs, y=ys, mode="lines", name="best so far", line={"shape": "hv"})
    fig.update_layout(title=f"{recipe}: optimisation history ({s.metric}; × = pruned, at its last report)",
                      height=340, xaxis_title="trial", yaxis_title=s.metric)
    return fig


def curves_figure(table: SearchTable, recipe: str) -> Any:
    """The metric at each epoch, as the driver reported it to the pruner; pruned trials dashed."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for t in sorted(table.of(recipe), key=lambda t: t.number):
        steps = sorted(t.intermediate, key=int)
        if steps:
            fig.add_scatter(x=[int(e) for e in steps], y=[t.intermediate[e] for e in steps], mode="lines+markers",
                            name=f"trial {t.number} ({t.state})",
                            line={"dash": "dash" if t.state == TrialState.PRUNED else "solid"})
    fig.update_layout(title=f"{recipe}: {table.settings.metric} per epoch as reported to the pruner "
                      "(dashed = pruned)", height=340, xaxis_title="epoch")
    return fig


def _distributions(table: SearchTable) -> dict[str, Any]:
    from optuna.distributions import json_to_distribution

    return {k: json_to_distribution(v) for k, v in table.distributions.items()}


def _finished(table: SearchTable, recipe: str) -> list[Trial]:
    return [t for t in table.of(recipe) if t.state == TrialState.FINISHED]


def parallel_figure(table: SearchTable, recipe: str) -> Any:
    """Parallel coordinates of the searched keys (log10 for log-uniform ones) and the value; finished trials."""
    import plotly.graph_objects as go

    dists = _distributions(table)
    rows = _finished(table, recipe)
    if len(rows) < 2 or not dists:
        return None
    dims: list[dict[str, Any]] = []
    for key, d in dists.items():
        values: list[Any] = [t.params.get(key) for t in rows]
        if hasattr(d, "choices"):
            labels = [repr(c) for c in d.choices]
            dims.append({"label": key, "values": [labels.index(repr(v)) for v in values],
                         "tickvals": list(range(len(labels))), "ticktext": labels})
        elif getattr(d, "log", False):
            dims.append({"label": f"log10 {key}", "values": [math.log10(v) for v in values]})
        else:
            dims.append({"label": key, "values": values})
    metric = table.settings.metric
    value = [t.value for t in rows]
    dims.append({"label": metric, "values": value})
    fig = go.Figure(go.Parcoords(line={"color": value, "colorscale": "Viridis", "showscale": True}, dimensions=dims))
    fig.update_layout(title=f"{recipe}: searched keys vs {metric} (finished trials)", height=380)
    return fig


def importance(table: SearchTable, recipe: str) -> dict[str, float] | None:
    """Optuna's fANOVA importance of each searched key over the finished trials (None with too few)."""
    import optuna

    dists = _distributions(table)
    rows = _finished(table, recipe)
    if len(rows) < MIN_FOR_IMPORTANCE or not dists:
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize" if table.settings.direction == "minimize" else "maximize")
    study.add_trials([optuna.trial.create_trial(params=t.params, distributions=dists, value=t.value)
                      for t in rows])
    return dict(optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)))


def search_section(trials: Trials, cmp: Comparison, fig_html: Any) -> str:
    """The HTML report's search section; ``fig_html`` renders a plotly figure (report_html's)."""
    import plotly.graph_objects as go

    table = as_table(trials)
    parts = ["<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in agreement(table, cmp)) + "</ul>"]
    for recipe in table.recipes:
        parts += [fig_html(history_figure(table, recipe)), fig_html(curves_figure(table, recipe))]
        par = parallel_figure(table, recipe)
        if par is not None:
            parts.append(fig_html(par))
        imp = importance(table, recipe)
        if imp:
            fig = go.Figure(go.Bar(x=list(imp.values()), y=list(imp), orientation="h"))
            fig.update_layout(title=f"{recipe}: importance of each searched key (fANOVA, finished trials)",
                              height=120 + 40 * len(imp), xaxis_title="importance")
            parts.append(fig_html(fig))
    frame = trials_frame(table).to_html(index=False, escape=True, classes="sortable", border=0, na_rep="–")
    return "".join(parts) + "<h3>Trials (pruned ones stopped early; never averaged)</h3>" + frame
