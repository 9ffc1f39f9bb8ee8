"""Fold × seed ensembles and label issues from out-of-fold predictions, on a real K-fold sweep of phantoms.

One tiny sweep (baseline CNN, 3 folds × 1 seed, 32 px) trains in process on a copy of a phantom set
in which a few training files were moved into another class's folder (their label flipped). Then:
the ensemble's probabilities equal the mean of its members' in predict, evaluate and the exported
ONNX graph; the collector's ensemble row equals the ensemble evaluated on the shared test split; every
training image is predicted exactly once out of fold; the flipped phantoms rank near the top of
label_issues.csv.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from brainmri.cli import collect as collect_cli
from brainmri.cli import evaluate as evaluate_cli
from brainmri.cli import export as export_cli
from brainmri.cli import predict as predict_cli
from brainmri.cli import sweep as sweep_cli
from brainmri.cli.target import load_target
from brainmri.results.collect import collect_runs, compare
from brainmri.results.label_issues import CoverageError, out_of_fold
from brainmri.results.report import to_csv, to_latex, to_markdown
from brainmri.results.report_html import render_html
from brainmri.use.ensemble import Ensemble, EnsembleError, Member
from brainmri.use.predict import predict_files
from brainmri.use.trained import TrainedRun

POOL = 120  # training images: 30 per class
FLIPS = {"glioma": "pituitary", "notumor": "meningioma", "pituitary": "notumor", "meningioma": "glioma"}


@pytest.fixture(scope="module")
def cv_sweep(tmp_path_factory):
    """(sweep dir, data root, flipped relative paths): 3 folds x seed 0 on phantoms with 4 labels flipped."""
    from brainmri.data.phantoms import generate_phantoms

    base = tmp_path_factory.mktemp("cv-ensemble")
    clean = generate_phantoms(base / "clean", n_per_class=POOL // 4, n_test_per_class=4, image_size=64, seed=3)
    data = base / "data"
    shutil.copytree(clean / "Training", data / "Training")
    shutil.copytree(clean / "Testing", data / "Testing")
    flipped = []
    for given, wrong in FLIPS.items():  # one file of each class moved into another class's folder
        src = min((data / "Training" / given).iterdir())
        dst = data / "Training" / wrong / f"flipped-{src.name}"
        src.rename(dst)
        flipped.append(str(dst.relative_to(data)))
    sweep = base / "cv.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "cv", "recipes": ["baseline_cnn"], "folds": 3, "seeds": [0],
        "overrides": {"data.root": str(data), "data.input_size": 48, "data.batch_size": 8, "data.num_workers": 0,
                      "train.mixed_precision": "no", "train.epochs": 8, "wandb.enabled": False,
                      },
        "slurm": {"cpus_per_task": 1, "mem_gb": 2, "time_min": 30}}))
    assert sweep_cli.main(["--config", str(sweep), "--cluster", "debug", "--sweeps-root", str(base / "sweeps")]) == 0
    return base / "sweeps" / "cv", data, flipped


def _member_runs(sweep_dir: Path) -> list[Path]:
    return sorted(d for d in (sweep_dir / "runs").iterdir())


@pytest.mark.slow
def test_collector_writes_label_issues_with_out_of_fold_coverage_and_flipped_phantoms_on_top(cv_sweep, capsys):
    sweep_dir, data, flipped = cv_sweep
    assert collect_cli.main([str(sweep_dir), "--format", "md"]) == 0
    out, err = capsys.readouterr()
    assert "baseline_cnn (ensemble of 3)" in out
    # coverage, read straight from the fold runs' files: every pool image validated exactly once
    pool, predicted = set(), []
    for d in _member_runs(sweep_dir):
        record = json.loads((d / "split.json").read_text())
        pool |= {r["path"] for part in ("train", "val") for r in record["files"][part]}
        predicted += [str(Path(p).relative_to(data)) for p in pd.read_csv(d / "predictions_val.csv")["path"]]
    assert len(predicted) == len(set(predicted)) == len(pool) == POOL and set(predicted) == pool
    issues = pd.read_csv(sweep_dir / "label_issues.csv")
    assert len(issues) == POOL and set(issues["path"]) == pool and issues["path"].is_unique
    assert {"label", "prob_label", "label_quality", "suggested", "group", "rank"} <= set(issues.columns)
    # given labels are the folders (flipped files under their wrong class) and the rows are ranked
    for rel in flipped:
        assert issues.set_index("path").loc[rel, "label"] == rel.split("/")[1]
    assert (issues["rank"].dropna().diff().dropna() == 1).all() and issues["is_issue"].iloc[0]
    top = list(issues["path"][:8])
    assert sum(rel in top for rel in flipped) >= 3, issues.head(10).to_string()
    flagged = issues[issues["path"].isin(flipped)]
    assert (flagged["suggested"] == [FLIPS_BACK[p.split("/")[1]] for p in flagged["path"]]).sum() >= 3
    assert f"label issues: baseline_cnn: {int(issues['is_issue'].sum())} of {POOL} training images flagged" in err
    sheet = (sweep_dir / "label_issues.html").read_text()
    assert sheet.count("data:image/png;base64,") == min(int(issues["is_issue"].sum()), 48)
    assert "given: " in sheet and "suggested: " in sheet and "http" not in sheet.replace("http-equiv", "")


FLIPS_BACK = {v: k for k, v in FLIPS.items()}


@pytest.mark.slow
def test_out_of_fold_refuses_runs_that_do_not_cover_the_pool(cv_sweep):
    sweep_dir, _, _ = cv_sweep
    runs = compare(collect_runs([sweep_dir])).recipes[0].runs
    assert len(out_of_fold(runs).paths) == POOL
    with pytest.raises(CoverageError, match=r"seed 0: the folds do not predict every training image exactly once "
                                            r"\(\d+ never, 0 more than once"):
        out_of_fold(runs[:2])


@pytest.mark.slow
def test_ensemble_row_equals_the_mean_of_members_predictions_in_every_format(cv_sweep):
    sweep_dir, _, _ = cv_sweep
    cmp = compare(collect_runs([sweep_dir]))
    (rr,) = cmp.recipes
    frames = [pd.read_csv(d / "predictions_test.csv").set_index("path") for d in _member_runs(sweep_dir)]
    cols = [c for c in frames[0].columns if c.startswith("prob_")]
    mean = np.mean([f.loc[frames[0].index, cols].to_numpy() for f in frames], axis=0)
    labels = frames[0]["label"].map({c.removeprefix("prob_"): i for i, c in enumerate(cols)}).to_numpy()
    ens = rr.ensemble
    assert ens.members == 3 and ens.reason is None
    assert ens.metrics["test/acc"] == pytest.approx(float((mean.argmax(1) == labels).mean()), abs=1e-12)
    assert ens.metrics["test/n"] == 16 and "test/band/novel/n" in ens.metrics
    md, csv, tex = to_markdown(cmp), to_csv(cmp), to_latex(cmp, table="bands")
    assert "| baseline_cnn (ensemble of 3) |" in md
    assert "baseline_cnn (ensemble of 3)" in to_markdown(cmp, table="bands")
    rows = pd.read_csv(__import__("io").StringIO(csv))
    assert list(rows["model"]) == ["replicates", "ensemble"]
    assert rows.loc[1, "acc_mean"] == pytest.approx(ens.metrics["test/acc"], abs=1e-12)
    assert "ensemble of 3" in tex
    page = render_html(cmp)  # the report's comparison table and its bands section
    assert page.count("baseline_cnn (ensemble of 3)") >= 1 + len([k for k in ens.metrics if k.endswith("/n")
                                                                   and k.startswith("test/band/")
                                                                   and ens.metrics[k]])


@pytest.mark.slow
def test_ensemble_predict_evaluate_and_onnx_equal_the_mean_of_members(cv_sweep, tmp_path):
    sweep_dir, data, _ = cv_sweep
    ens = load_target(sweep_dir, "baseline_cnn")
    assert isinstance(ens, Ensemble) and sorted(m.fold for m in ens.members) == [0, 1, 2]
    members = [TrainedRun.load(d) for d in _member_runs(sweep_dir)]
    scans = data / "Testing"
    # predict: the ensemble's probabilities are the mean of each member's own prediction
    got = predict_files(ens, [scans], progress=False)
    singles = [predict_files(m, [scans], similarity=False, progress=False) for m in members]
    assert all(s.paths == got.paths for s in singles) and len(got.paths) == 16
    assert np.abs(got.probs - np.mean([s.probs for s in singles], axis=0)).max() < 1e-6
    # the union of the members' training images: every training image is someone's (bands vs the whole pool)
    reference, note = ens.training_reference()
    assert note == "" and len(reference.paths) == POOL and got.band is not None
    # the command line: CSV probabilities (6 decimals) equal the mean
    out_csv = tmp_path / "preds.csv"
    assert predict_cli.main([str(sweep_dir), str(scans), "--recipe", "baseline_cnn", "--out", str(out_csv)]) == 0
    csv = pd.read_csv(out_csv)
    assert np.abs(csv[[f"prob_{c}" for c in ens.classes]].to_numpy() - got.probs).max() < 1e-6
    # evaluate: the same evaluation path, mean probabilities; it equals the collector's ensemble row
    assert evaluate_cli.main([str(sweep_dir), "--recipe", "baseline_cnn", "--data", str(data)]) == 0
    out_dir = sweep_dir / "ensembles" / "baseline_cnn" / "eval" / "data"
    ev = pd.read_csv(out_dir / "predictions_test.csv").set_index("path")
    cols = [f"prob_{c}" for c in ens.classes]
    mean_saved = np.mean([pd.read_csv(m.run_dir / "predictions_test.csv").set_index("path").loc[ev.index, cols]
                          .to_numpy() for m in members], axis=0)
    assert np.abs(ev[cols].to_numpy() - mean_saved).max() < 2e-6
    summary = json.loads((out_dir / "summary.json").read_text())
    cmp = compare(collect_runs([sweep_dir]))  # the evaluation's folder in the sweep is no run of it
    (rr,) = cmp.recipes
    assert cmp.incomplete == [] and len(rr.runs) == 3
    assert summary["test/acc"] == pytest.approx(rr.ensemble.metrics["test/acc"], abs=1e-12)
    assert [m["fold"] for m in summary["ensemble"]["members"]] == [m.fold for m in ens.members]
    # export: one ONNX graph, parity with the Python ensemble, a card listing the members
    model_dir = tmp_path / "model"
    assert export_cli.main([str(sweep_dir), "--recipe", "baseline_cnn", "--format", "onnx", "torchscript",
                            "--out", str(model_dir)]) == 0
    import onnxruntime as ort

    size = ens.cfg.data.input_size
    x = torch.randn(5, 3, size, size)
    with torch.no_grad():
        want = np.mean([torch.softmax(m.model(x), dim=1).numpy() for m in members], axis=0)
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    assert len(session.get_inputs()) == 1  # one graph holding the three members
    onnx_p = session.run(["probabilities"], {"image": x.numpy()})[0]
    assert np.abs(onnx_p - want).max() <= 1e-4
    with torch.no_grad():
        ts_p = torch.jit.load(str(model_dir / "model.ts"))(x).numpy()
    assert np.abs(ts_p - want).max() <= 1e-5
    # with test-time views (eval.tta) the graph averages every member over the same views
    from brainmri.train.regularise import TTA
    from brainmri.use.ensemble import MeanProbabilities

    with torch.no_grad():
        views = MeanProbabilities(ens.model, ["hflip", "vflip"])(x).numpy()
        each = np.mean([TTA(m.model, ["hflip", "vflip"])(x).numpy() for m in members], axis=0)
    assert np.abs(views - each).max() < 1e-6 and np.abs(views - want).max() > 1e-4
    card = json.loads((model_dir / "model_card.json").read_text())
    assert card["kind"] == "ensemble" and card["ensemble"]["recipe"] == "baseline_cnn"
    assert sorted((m["run"], m["fold"], m["seed"]) for m in card["ensemble"]["members"]) == \
        sorted((m.run_dir.name, m.cfg.data.fold, 0) for m in members)
    assert all("val/acc" in m["metrics"] for m in card["ensemble"]["members"])
    assert card["ensemble"]["metrics"]["test"]["test/acc"] == pytest.approx(rr.ensemble.metrics["test/acc"])


@pytest.mark.slow
@pytest.mark.parametrize("args, says", [
    ([], "is a sweep directory: give --recipe NAME (recipes: baseline_cnn)"),
    (["--recipe", "vit"], "--recipe vit: no such recipe in"),
])
@pytest.mark.slow
def test_a_sweep_without_a_known_recipe_is_one_line_listing_the_recipes(cv_sweep, tmp_path, capsys, args, says):
    sweep_dir, data, _ = cv_sweep
    for main, extra in ((predict_cli.main, [str(data / "Testing"), "--out", str(tmp_path / "p.csv")]),
                        (evaluate_cli.main, ["--data", str(data)]),
                        (export_cli.main, ["--out", str(tmp_path / "m")])):
        assert main([str(sweep_dir), *extra, *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and says in err and "(recipes: baseline_cnn)" in err
    run = _member_runs(sweep_dir)[0]
    assert export_cli.main([str(run), "--recipe", "baseline_cnn", "--out", str(tmp_path / "m")]) == 2
    assert "is not a sweep directory" in capsys.readouterr().err


@pytest.mark.slow
def test_members_that_differ_in_preprocessing_are_one_line_naming_the_runs(cv_sweep, trained_run):
    sweep_dir, _, _ = cv_sweep
    a, b = TrainedRun.load(_member_runs(sweep_dir)[0]), TrainedRun.load(trained_run)  # 48 px vs 32 px
    with pytest.raises(EnsembleError, match=r"members differ in preprocessing .*: runs .*runs/.* \(\(48, 3, .*\) "
                                            r"and .*run \(\(32, 3"):
        Ensemble([Member(a, 0, 0), Member(b, None, 0)], "baseline_cnn", "-", sweep_dir)
