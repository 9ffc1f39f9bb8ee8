"""A W&B report of a brainmri.results.comparison.Comparison (wandb-workspaces, ``wandb_workspaces.reports.v2``).

``build_wandb_report`` assembles the report offline: the comparison table (Markdown), a runset of
the sweep's runs grouped by recipe with line plots of val/acc and val/loss over epochs (mean ±
std per recipe), a bar panel of test accuracy per recipe, a parallel-coordinates panel over the
swept config keys and the metrics, and one confusion-matrix chart per recipe over the runs of its
chosen configuration (the ``test/confusion_table`` each run logs, brainmri.results.wandb_results).
``publish_wandb_report`` saves it; saving is the only step that talks to the W&B server.
Owns presentation only; every number comes from the Comparison or from the runs in W&B.
"""

from __future__ import annotations

import os

from brainmri.metric_names import lower_is_better
from brainmri.results.comparison import Comparison
from brainmri.results.report import to_markdown

CONFUSION_CHART = "wandb/confusion_matrix/v1"  # the chart wandb.plot.confusion_matrix logs with


class ReportUnavailable(RuntimeError):
    """The report cannot be published (offline, no server, wandb-workspaces missing); one line says why."""


def _wr():
    try:
        import wandb_workspaces.reports.v2 as wr
    except ImportError as exc:
        raise ReportUnavailable("wandb-workspaces is not installed (pip install wandb-workspaces)") from exc
    return wr


def swept_keys(cmp: Comparison) -> list[str]:
    """The config keys swept by any recipe (seed and paths excluded), in first-seen order."""
    return list(dict.fromkeys(k for rr in cmp.recipes for k in rr.keys))


def _runset(wr, name: str, filters: list, project: str | None, entity: str | None):
    where = {"entity": entity or "", "project": project or ""}  # empty: the report's own project
    return wr.Runset(name=name, groupby=["config.recipe"], filters=filters or "", **where)


def build_wandb_report(cmp: Comparison, project: str, entity: str | None, group: str | None = None,
                       title: str = "brainmri recipe comparison", runset_project: bool = True):
    """The report object (``wandb_workspaces.reports.v2.Report``), built without any network access.

    ``group`` (the sweep name) restricts every runset to that W&B group. With
    ``runset_project=False`` the runsets name no project (W&B then uses the report's), which keeps
    ``report._to_model()`` offline too; with a project named, converting a runset looks up the
    project's id on the server.
    """
    wr = _wr()
    from wandb_workspaces import expr

    base = [expr.Metric("Group") == group] if group else []
    where = (project, entity) if runset_project else (None, None)
    keys = swept_keys(cmp)
    agg = {"groupby": "config.recipe", "groupby_aggfunc": "mean", "groupby_rangefunc": "stddev"}
    metric = cmp.metric
    columns = [wr.ParallelCoordinatesPlotColumn(metric=wr.Config(k)) for k in ["recipe", *keys]]
    columns += [wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(m))
                for m in dict.fromkeys([metric, "test/acc"])]
    overview = wr.PanelGrid(
        runsets=[_runset(wr, group or project, base, *where)],
        panels=[
            wr.LinePlot(title="val/acc per epoch (mean ± std per recipe)", x="epoch", y=["val/acc"], **agg),
            wr.LinePlot(title="val/loss per epoch (mean ± std per recipe)", x="epoch", y=["val/loss"], **agg),
            wr.BarPlot(title="test accuracy per recipe (mean ± std, all runs)", metrics=[wr.SummaryMetric("test/acc")],
                       orientation="v", **agg),
            wr.ParallelCoordinatesPlot(title=f"swept keys → {metric}, test/acc", columns=columns),
        ])
    blocks = [wr.H1(text=title), wr.MarkdownBlock(text=to_markdown(cmp)), wr.H2(text="Curves and swept values"),
              overview, wr.H2(text="Confusion matrices (test, chosen configuration per recipe)")]
    for rr in cmp.recipes:
        chosen = [expr.Config(k) == v for k, v in zip(rr.keys, rr.chosen, strict=True)]
        blocks.append(wr.PanelGrid(
            runsets=[_runset(wr, rr.recipe, base + [expr.Config("recipe") == rr.recipe] + chosen, *where)],
            panels=[wr.CustomChart(query={"summaryTable": {"tableKey": "test/confusion_table"}},
                                   chart_name=CONFUSION_CHART,
                                   chart_fields={"Actual": "Actual", "Predicted": "Predicted",
                                                 "nPredictions": "nPredictions"},
                                   chart_strings={"title": f"{rr.recipe}: test confusion matrix"})]))
    direction = "lower" if lower_is_better(metric) else "higher"
    blocks.append(wr.P(text=f"Configurations were chosen on {metric} ({direction} is better), never on test."))
    return wr.Report(project=project, entity=entity, title=title, blocks=blocks,
                     description=f"{len(cmp.recipes)} recipe(s), selection on {metric}")


def publish_wandb_report(cmp: Comparison, project: str, entity: str | None = None, group: str | None = None,
                         title: str = "brainmri recipe comparison") -> str:
    """Build and save the report on the W&B server; returns its URL.

    Raises ReportUnavailable with a one-line reason when offline, without wandb-workspaces, or
    when the server cannot be reached.
    """
    mode = os.environ.get("WANDB_MODE")
    if mode in ("offline", "disabled", "dryrun"):
        raise ReportUnavailable(f"WANDB_MODE={mode}: a report needs the W&B server")
    _wr()
    try:
        if entity is None:
            import wandb
            entity = wandb.Api().default_entity
        report = build_wandb_report(cmp, project, entity, group, title)
        report.save()
        return report.url
    except ReportUnavailable:
        raise
    except Exception as exc:  # no network, no API key, unknown project: the server's answer, one line
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ReportUnavailable(f"cannot save to the W&B server: {type(exc).__name__}: {line}") from None
