"""A real training run's W&B offline files hold its result plots and tables, and the collector's numbers
read from them equal the run directory's."""

import json

import numpy as np
import pandas as pd
from PIL import Image

from conftest import TINY, run_train

from brainmri.results.collect import collect_runs, compare
from brainmri.results.wandb_offline import read_offline_runs
from brainmri.results.wandb_results import THUMB_PX


def test_offline_run_holds_result_tables_and_collector_numbers_unchanged(tmp_path, phantom_root):
    run_dir = tmp_path / "run"
    run_train("--config", "configs/baseline_cnn.yaml", *TINY, f"data.root={phantom_root}", f"run_dir={run_dir}",
              "train.epochs=2", "train.max_steps_per_epoch=2", "wandb.enabled=true", "wandb.group=g")
    summary = json.loads((run_dir / "summary.json").read_text())
    (wb,) = read_offline_runs(run_dir / "wandb")
    assert wb["state"] == "finished" and wb["run_id"] == summary["wandb_id"]

    # the logged media: W&B table files inside the run directory, referenced from history and summary
    media = {k: v for row in wb["history"] for k, v in row.items() if isinstance(v, dict) and "_type" in v}
    for key in ("val/confusion_table", "test/confusion_table", "per_class_metrics", "test/predictions"):
        assert media[key]["_type"] == "table-file" and wb["summary"][key]["path"] == media[key]["path"], key
    files = run_dir / "wandb" / "latest-run" / "files"
    classes = summary["classes"]

    def table(key):
        t = json.loads((files / media[key]["path"]).read_text())
        return pd.DataFrame(t["data"], columns=t["columns"])

    # confusion counts equal the predictions file's
    preds = pd.read_csv(run_dir / "predictions_test.csv")
    cm = table("test/confusion_table")
    counts = {(a, p): int(n) for a, p, n in cm[["Actual", "Predicted", "nPredictions"]].itertuples(index=False)}
    expect = preds.groupby(["label", "pred"]).size().to_dict()
    assert sum(counts.values()) == len(preds) and {k: v for k, v in counts.items() if v} == expect

    per_class = table("per_class_metrics")
    assert len(per_class) == 2 * len(classes)
    row = per_class[(per_class["split"] == "test") & (per_class["class"] == classes[0])].iloc[0]
    assert np.isclose(row["recall"], summary[f"test/recall/{classes[0]}"])
    assert row["support"] == summary[f"test/support/{classes[0]}"]

    pred_table = table("test/predictions")
    assert list(pred_table["path"]) == list(preds["path"]) and list(pred_table["prediction"]) == list(preds["pred"])
    assert np.allclose(pred_table[f"prob_{classes[1]}"], preds[f"prob_{classes[1]}"])
    wrong = (preds["label"] != preds["pred"]).sum()
    assert wrong > 0  # two steps of training: plenty of mistakes to show
    # the thumbnails of the misclassified images: a run_table artifact staged inside the run dir, downsized
    (art,) = [a for a in wb["artifacts"] if a["type"] == "run_table" and "predictions" in a["name"]]
    images = {p: local for p, local in art["files"].items() if p.startswith("media/images/")}
    assert len(images) == min(wrong, 64)
    for local in images.values():
        assert local.startswith(str(run_dir)), local
        with Image.open(local) as im:
            assert max(im.size) <= THUMB_PX

    # the run's config groups by recipe; the best monitored value is its summary
    assert wb["config"]["recipe"] == "baseline_cnn" and wb["job_type"] == "baseline_cnn" and wb["group"] == "g"
    best = max(row["val/acc"] for row in wb["history"] if "val/acc" in row)
    assert wb["summary"]["val/acc"] == summary["val/acc"] == best

    # and the collector reads the same numbers from the offline files as from the run directory
    from_offline = compare(collect_runs([run_dir / "wandb"]))
    from_rundir = compare([r for r in collect_runs([run_dir]) if r.sources[0].startswith("rundir")])
    assert repr(from_offline.recipes[0].stats) == repr(from_rundir.recipes[0].stats)
    assert [h["epoch"] for h in collect_runs([run_dir / "wandb"])[0].history() if "epoch" in h] == [1, 2]
