"""The W&B report is built offline from a real Comparison; its wandb-workspaces model holds every panel.
Saving needs the W&B server, which no test reaches: only the clear offline refusal is exercised."""

import json

import pytest

from run_dirs import make_grid

from brainmri.results.collect import collect_runs, compare
from brainmri.results.report import display_frame, markdown_table

wr = pytest.importorskip("wandb_workspaces.reports.v2")


@pytest.fixture
def cmp(tmp_path):
    make_grid(tmp_path, {"baseline_cnn": 0.8, "resnet50_feature": 0.6}, best_lr=3e-4, rng_seed=1)
    return compare(collect_runs([tmp_path]))


def _panels(model_json):
    return [p for b in model_json["spec"]["blocks"] if b["type"] == "panel-grid"
            for p in b["metadata"]["panelBankSectionConfig"]["panels"]]


def test_report_model_holds_the_panels(cmp):
    from brainmri.results.wandb_report import build_wandb_report

    report = build_wandb_report(cmp, "brainmri", "lab", group="demo", runset_project=False)
    spec = json.loads(report._to_model().model_dump_json(by_alias=True, exclude_none=True))
    assert (spec["project"], spec["displayName"]) == ({"name": "brainmri", "entityName": "lab"},
                                                      "brainmri recipe comparison")
    grids = [b for b in spec["spec"]["blocks"] if b["type"] == "panel-grid"]
    assert len(grids) == 1 + len(cmp.recipes)
    for grid in grids:  # every runset: the sweep's group, grouped by recipe
        (rs,) = grid["metadata"]["runSets"]
        assert rs["grouping"] == [{"section": "config", "name": "recipe.value"}]
        assert {"key": {"section": "run", "name": "group"}, "op": "=", "value": "demo", "disabled": False} \
            in rs["filters"]["filters"]

    overview = grids[0]["metadata"]["panelBankSectionConfig"]["panels"]
    lines = [p["config"] for p in overview if p["viewType"] == "Run History Line Plot"]
    assert [(c["xAxis"], c["metrics"], c["groupBy"], c["groupArea"]) for c in lines] == \
        [("epoch", ["val/acc"], "recipe.value", "stddev"), ("epoch", ["val/loss"], "recipe.value", "stddev")]
    (bar,) = [p["config"] for p in overview if p["viewType"] == "Bar Chart"]
    assert bar["metrics"] == ["summary_metrics.test/acc"] and bar["groupBy"] == "recipe.value"
    (pc,) = [p["config"] for p in overview if p["viewType"] == "Parallel Coordinates Plot"]
    assert [c["accessor"] for c in pc["columns"]] == ["config:recipe.value", "config:optim.value.lr",
                                                      "summary:val/acc", "summary:test/acc"]

    # the comparison table, as the Markdown renderer writes it
    (md,) = [b["content"] for b in spec["spec"]["blocks"] if b["type"] == "markdown-block"]
    assert markdown_table(display_frame(cmp)) in md and "McNemar" in md

    # one confusion-matrix chart per recipe, over that recipe's chosen configuration
    for grid, rr in zip(grids[1:], cmp.recipes, strict=True):
        (rs,) = grid["metadata"]["runSets"]
        assert rs["name"] == rr.recipe
        leaves = {(f["key"]["section"], f["key"]["name"], f["op"], f["value"]) for f in rs["filters"]["filters"]}
        assert leaves == {("run", "group", "=", "demo"), ("config", "recipe", "=", rr.recipe),
                          ("config", "optim.lr", "=", rr.chosen[0])}
        (chart,) = grid["metadata"]["panelBankSectionConfig"]["panels"]
        assert chart["viewType"] == "Vega2" and chart["config"]["panelDefId"] == "wandb/confusion_matrix/v1"
        (query,) = chart["config"]["userQuery"]["queryFields"][0]["fields"][:1]
        assert query["name"] == "summaryTable"
        assert query["args"] == [{"name": "tableKey", "value": "test/confusion_table"}]
    assert [rr.chosen for rr in cmp.recipes] == [(3e-4,), (3e-4,)]

    # publishing names the project in every runset (resolved on the server when saved)
    named = build_wandb_report(cmp, "brainmri", "lab", group="demo")
    runsets = [rs for b in named.blocks if isinstance(b, wr.PanelGrid) for rs in b.runsets]
    assert {(rs.entity, rs.project) for rs in runsets} == {("lab", "brainmri")}


def test_publish_offline_is_one_clear_line(cmp, monkeypatch):
    from brainmri.results.wandb_report import ReportUnavailable, publish_wandb_report

    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(ReportUnavailable, match="WANDB_MODE=offline: a report needs the W&B server"):
        publish_wandb_report(cmp, "brainmri", "lab")
