"""The collector over K-fold runs: replicates are (fold, seed) pairs, fold statistics and the corrected
resampled t-test against a hand recomputation, incomplete fold sets, data provenance, the four tables,
and LaTeX that compiles on a two-column page (synthetic run directories laid out per the contract)."""

import io
import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from run_dirs import CLASSES, make_run

from brainmri.cli import collect as cli
from brainmri.results.collect import MixedDataError, collect_runs, compare
from brainmri.results.report import to_csv, to_latex, to_markdown
from brainmri.results.report_html import render_html

K = 5
VAL_N = [101, 99, 100, 102, 98]  # validation images of folds 0..4 (the pool: 500 training images)
LABELS = np.arange(40) % 4


def _preds(rng, acc):
    return LABELS, np.where(rng.random(40) < acc, LABELS, (LABELS + 1) % 4)


def cv_runs(root, recipe, level, lr=1e-3, seeds=(0, 1), folds=range(K), data="d1", rng_seed=0, split_seed=0):
    """K-fold runs of one configuration; val and test accuracy vary by fold and seed (returned for hand checks)."""
    rng = np.random.default_rng(rng_seed)
    out = {}
    for seed in seeds:
        for f in folds:
            val, test = level + 0.01 * f + 0.003 * seed, level - 0.02 + float(rng.uniform(-0.03, 0.03))
            d = make_run(root, recipe, seed, lr, val, test, fold=f, folds=K, data=data, val_n=VAL_N[f],
                         preds=_preds(rng, test), extra={"test/n": 40, "test/band/novel/n": 30 - f,
                                                         "test/band/novel/acc": test - 0.1,
                                                         **{f"test/support/{c}": 10 for c in CLASSES}})
            if split_seed:
                cfg = d / "config.yaml"
                cfg.write_text(cfg.read_text().replace("split_seed: 0", f"split_seed: {split_seed}"))
                summary = json.loads((d / "summary.json").read_text())
                summary["data_manifest"]["val"] = f"other-{f}"
                summary["config"]["data"]["split_seed"] = split_seed
                (d / "summary.json").write_text(json.dumps(summary))
            out[f, seed] = (val, test)
    return out


def test_fold_statistics_and_corrected_t_equal_a_hand_recomputation(tmp_path):
    a = cv_runs(tmp_path, "cnn", 0.80, rng_seed=1)
    b = cv_runs(tmp_path, "vit", 0.70, rng_seed=2)
    cv_runs(tmp_path, "vit", 0.60, lr=1e-2, rng_seed=3)  # worse on validation averaged over folds: not chosen
    cmp = compare(collect_runs([tmp_path]))
    assert [rr.recipe for rr in cmp.recipes] == ["cnn", "vit"]
    cnn, vit = cmp.recipes
    assert vit.chosen == (1e-3,) and (cnn.folds, cnn.seeds, len(cnn.runs)) == (K, 2, 10)
    assert sorted(r.replicate for r in cnn.runs) == sorted((f, s) for f in range(K) for s in (0, 1))
    # rho = n_test/n_train of each fold: its validation images over the rest of the pool
    rho = np.mean([n / (sum(VAL_N) - n) for n in VAL_N])
    assert cnn.rho == pytest.approx(rho, abs=1e-15)
    keys = sorted(a)
    for rr, truth in ((cnn, a), (vit, b)):
        for name, values in (("selection", [truth[k][0] for k in keys]), ("acc", [truth[k][1] for k in keys])):
            x = np.array(values)
            mean, std = x.sum() / len(x), math.sqrt(((x - x.mean()) ** 2).sum() / (len(x) - 1))
            half = stats.t.ppf(0.975, len(x) - 1) * std * math.sqrt(1 / len(x) + rho)
            s = next(v.selection for v in rr.per_value if v.value == rr.chosen) if name == "selection" \
                else rr.stats["acc"]
            assert (s.n, s.mean, s.std) == (10, pytest.approx(mean, abs=1e-12), pytest.approx(std, abs=1e-12))
            assert s.ci_low == pytest.approx(max(0.0, mean - half), abs=1e-12)
            assert s.ci_high == pytest.approx(min(1.0, mean + half), abs=1e-12)
    # the corrected resampled t-test, paired by (fold, seed)
    d = np.array([a[k][1] - b[k][1] for k in keys])
    t = d.mean() / math.sqrt((1 / len(d) + rho) * d.var(ddof=1))
    p = 2 * stats.t.sf(abs(t), len(d) - 1)
    (pair,) = cmp.paired
    tt = pair.ttest
    assert (tt.a, tt.b, tt.pairs, tt.df) == ("cnn", "vit", 10, 9) and tt.reason is None
    assert (tt.diff, tt.t, tt.p) == (pytest.approx(d.mean(), abs=1e-12), pytest.approx(t, rel=1e-10),
                                              pytest.approx(p, rel=1e-9))
    naive = stats.ttest_rel([a[k][1] for k in keys], [b[k][1] for k in keys])
    assert tt.p > naive.pvalue  # the correction is more cautious than the plain paired t over folds
    # McNemar on the shared test images, one test per (fold, seed), never pooled
    assert [(s.fold, s.seed) for s in cmp.mcnemar.replicates] == [(f, s) for s in (0, 1) for f in range(K)]
    csv = pd.read_csv(io.StringIO(to_csv(cmp)))
    row = csv[csv["recipe"] == "vit"].iloc[0]
    assert (row["vs"], row["ttest_pairs"], row["folds"], row["n_seeds"], row["n_replicates"]) == ("cnn", 10, K, 2, 10)
    assert row["ttest_p"] == pytest.approx(p, rel=1e-9)
    assert row["acc_mean"] == pytest.approx(np.mean([b[k][1] for k in keys]))
    md = to_markdown(cmp)
    assert f"p = {p:.3g}" in md and "fold 4, seed 1:" in md


def test_recipes_on_different_folds_or_without_folds_get_no_t_test(tmp_path):
    cv_runs(tmp_path / "a", "cnn", 0.8, seeds=(0,))
    cv_runs(tmp_path / "a", "vit", 0.7, seeds=(0,), split_seed=7)  # other folds: not paired fold by fold
    (pair,) = compare(collect_runs([tmp_path / "a"])).paired
    assert "validated on different images" in pair.ttest.reason and pair.ttest.pairs == 0
    for seed in (0, 1):
        make_run(tmp_path / "b", "cnn", seed, 1e-3, 0.8, 0.8)
        make_run(tmp_path / "b", "vit", seed, 1e-3, 0.7, 0.7)
    cmp = compare(collect_runs([tmp_path / "b"]))
    assert cmp.paired[0].ttest.reason.startswith("not cross-validated")
    assert cmp.recipes[0].folds is None and cmp.recipes[0].rho == 0.0  # seeds alone: the plain t-interval
    assert "| – | 2 |" in to_markdown(cmp)  # Folds –, Seeds 2


def test_an_incomplete_set_of_folds_is_shown_and_never_averaged(tmp_path):
    cv_runs(tmp_path, "cnn", 0.80, seeds=(0,))
    cv_runs(tmp_path, "cnn", 0.80, seeds=(1,), folds=[0, 1, 2])  # seed 1: folds 3 and 4 never finished
    make_run(tmp_path, "cnn", 1, 1e-3, 0.1, status="failed", fold=3, folds=K)
    cv_runs(tmp_path, "cnn", 0.95, lr=1e-2, seeds=(0,), folds=[0, 1])  # better on validation, 2 of 5 folds only
    cmp = compare(collect_runs([tmp_path]))
    (rr,) = cmp.recipes
    assert rr.chosen == (1e-3,) and len(rr.runs) == K and {r.seed for r in rr.runs} == {0}
    assert [(m.config, m.seed, m.finished, m.missing) for m in cmp.incomplete_folds] == [
        ("optim.lr=0.001", 1, [0, 1, 2], [3, 4]), ("optim.lr=0.01", 0, [0, 1], [2, 3, 4])]
    assert [(r.fold, r.status) for r in cmp.incomplete] == [(3, "failed")]
    md = to_markdown(cmp)
    section = md.split("## Incomplete fold sets (not averaged)")[1].split("##")[0]
    assert "| cnn | optim.lr=0.001 | 1 | 3 of 5 | 3, 4 |" in section and "| 2 of 5 | 2, 3, 4 |" in section
    csv = pd.read_csv(io.StringIO(to_csv(cmp)))
    assert list(csv["state"]) == ["finished", "incomplete_folds", "incomplete_folds", "failed"]
    assert csv.loc[1, "error"] == "seed 1: 3 of 5 folds finished, missing 3, 4"
    assert "Incomplete fold sets (not averaged)" in to_latex(cmp) and "3 of 5" in to_latex(cmp)
    assert "Incomplete fold sets (not averaged)" in render_html(cmp) and "fold 3, seed 1" in render_html(cmp)
    only_partial = tmp_path / "partial"
    cv_runs(only_partial, "vit", 0.9, seeds=(0,), folds=[0, 1, 2, 3])
    cmp = compare(collect_runs([only_partial]))
    assert cmp.recipes == [] and "vit: no configuration has a complete set of folds" in cmp.notes[0]


def test_runs_on_different_data_are_refused_in_one_line_unless_allowed(tmp_path, capsys):
    cv_runs(tmp_path / "s", "cnn", 0.8, seeds=(0,))
    cv_runs(tmp_path / "s", "cnn", 0.8, seeds=(1,), data="d2")  # the replicates of one recipe disagree
    assert cli.main([str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: replicates of cnn were trained on different data")
    assert "cnn-lr0.001-s0-f0" in err and "cnn-lr0.001-s1-f0" in err and "--allow-mixed-data" in err
    assert cli.main([str(tmp_path / "s"), "--allow-mixed-data"]) == 0
    assert "pooled despite different data" in capsys.readouterr().out
    cv_runs(tmp_path / "r", "cnn", 0.8, seeds=(0,))
    cv_runs(tmp_path / "r", "vit", 0.8, seeds=(0,), data="d3")
    with pytest.raises(MixedDataError, match=r"^recipes were trained on different data: runs cnn-lr0\.001-s0-f0 and "
                                             r"vit-lr0\.001-s0-f0"):
        compare(collect_runs([tmp_path / "r"]))


def test_tables_people_can_read_and_csv_keeps_full_precision(tmp_path, capsys):
    cv_runs(tmp_path, "cnn", 0.8)
    cv_runs(tmp_path, "vit", 0.7, rng_seed=5)
    cmp = compare(collect_runs([tmp_path]))
    assert cli.main([str(tmp_path)]) == 0
    md = capsys.readouterr().out
    header = next(line for line in md.splitlines() if line.startswith("| Recipe"))
    assert header == ("| Recipe | Configuration | Folds | Seeds | Val acc | Test acc | Acc novel | Macro-F1 | AUC "
                      "| ECE |")
    row = next(line for line in md.splitlines() if line.startswith("| cnn |"))
    assert row.startswith("| cnn | - | 5 | 2 | ") and "[" not in row and row.count("±") == 6
    acc = cmp.recipes[0].stats["acc"]
    assert f"| {acc.mean:.3f} ± {acc.std:.3f} |" in row
    for table, first in (("bands", "| Recipe | Band | n | Acc | Macro-F1 |"),
                         ("classes", "| Recipe | Class | n | Recall | Precision | F1 |"),
                         ("intervals", "| Recipe | Metric | Mean | Std | 95 % interval | Replicates | Interval |")):
        assert cli.main([str(tmp_path), "--table", table]) == 0
        out = capsys.readouterr().out
        assert first in out
    assert "| cnn | novel | 26–30 |" in cli_out(tmp_path, capsys, "--table", "bands")  # counts once, integers
    assert "| cnn | glioma | 10 |" in cli_out(tmp_path, capsys, "--table", "classes")
    intervals = cli_out(tmp_path, capsys, "--table", "intervals")
    assert f"[{acc.ci_low:.3f}, {acc.ci_high:.3f}]" in intervals and "corrected t over 5 folds" in intervals
    csv = pd.read_csv(io.StringIO(cli_out(tmp_path, capsys, "--format", "csv")))
    assert csv.loc[0, "acc_mean"] == acc.mean and csv.loc[0, "acc_std"] == acc.std  # full precision
    assert str(csv["folds"].dtype) == "int64" and list(csv["n_replicates"]) == [10, 10]
    bands = pd.read_csv(io.StringIO(cli_out(tmp_path, capsys, "--format", "csv", "--table", "bands")))
    novel = bands[(bands["recipe"] == "cnn") & (bands["band"] == "novel")].iloc[0]
    assert (novel["n_min"], novel["n_max"]) == (26, 30)
    page = render_html(cmp)
    assert "Nadeau" in page and "p (Holm)" in page and "corrected t over 5 folds" in page


def cli_out(root, capsys, *args) -> str:
    assert cli.main([str(root), *args]) == 0
    return capsys.readouterr().out


DOCUMENT = r"""\documentclass[twocolumn]{article}
\usepackage{booktabs}
\begin{document}
\section*{Results}
%(text)s
\input{tables.tex}
%(more)s
\end{document}
"""


@pytest.mark.skipif(not shutil.which("pdflatex"), reason="pdflatex not installed (launch/setup.sh --slurm installs "
                    "texlive-latex-base texlive-latex-recommended poppler-utils)")
def test_latex_tables_compile_on_a_two_column_page(tmp_path):
    root = tmp_path / "runs"
    cv_runs(root, "baseline_cnn", 0.85)
    cv_runs(root, "resnet50_finetune", 0.9, rng_seed=4)
    cv_runs(root, "resnet152_ranger", 0.8, lr=3e-4, rng_seed=6)
    cv_runs(root, "resnet152_ranger", 0.75, lr=1e-3, folds=[0, 1, 2], rng_seed=7)
    make_run(root, "resnet152_ranger", 0, 1e-3, 0.1, status="failed", fold=3, folds=K)
    cmp = compare(collect_runs([root]))
    tex = "".join(to_latex(cmp, table=t) for t in ("main", "bands", "classes", "intervals"))
    (tmp_path / "tables.tex").write_text(tex)
    sentence = ("Recipes are paired fold by fold; the corrected resampled t-test allows for the training images "
                "that folds share. ")
    (tmp_path / "doc.tex").write_text(DOCUMENT % {"text": sentence * 20, "more": sentence * 120})
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    log = (tmp_path / "doc.log").read_text(errors="replace")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "Overfull \\hbox" not in log, log[log.find("Overfull"):][:500]  # every table fits the page's width
    # main, paired tests, incomplete fold sets and runs; bands, classes, intervals with the incomplete ones each
    assert tex.count("\\begin{table*}") == 4 + 3 * 3 and "Float(s) lost" not in log
    if shutil.which("pdftoppm"):
        subprocess.run(["pdftoppm", "-png", "-r", "90", "-f", "2", "-l", "2", "-singlefile", "doc.pdf", "page"],
                       cwd=tmp_path, check=True, timeout=120)
        png = tmp_path / "page.png"
        assert png.read_bytes()[:4] == b"\x89PNG"
        if os.environ.get("BRAINMRI_DOCS_PNG"):  # how docs/latex-table.png is made (docs/tables.md)
            shutil.copy(png, Path(os.environ["BRAINMRI_DOCS_PNG"]))


@pytest.mark.slow
def test_a_fold_sweep_trains_paired_folds_and_the_collector_pairs_them(tmp_path, phantom_root, capsys):
    """Two recipes x 2 folds through the in-process cluster: the same folds for both recipes (split.json),
    then the collector's replicates, fold statistics and the corrected t-test on the real run directories."""
    import yaml

    from slurm_cluster import SMALL_JOBS, TINY

    from brainmri.cli import sweep as sweep_cli

    wide = tmp_path / "wide_cnn.yaml"  # a second recipe: the baseline CNN with a wider dense layer
    wide.write_text((Path(__file__).resolve().parents[1] / "configs" / "baseline_cnn.yaml").read_text()
                    + "\nrecipe: wide_cnn\n")
    sweep = tmp_path / "cv.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "cv", "recipes": ["baseline_cnn", str(wide)], "folds": 2, "seeds": [0],
        "overrides": {"data.root": str(phantom_root), **TINY, "train.epochs": 1, "train.max_steps_per_epoch": 1,
                      "wandb.enabled": False},
        "per_recipe": {str(wide): {"overrides": {"model.hidden": 64}}}, "slurm": SMALL_JOBS}))
    assert sweep_cli.main(["--config", str(sweep), "--cluster", "debug",
                           "--sweeps-root", str(tmp_path / "sweeps")]) == 0
    assert "4 finished" in capsys.readouterr().out
    runs = sorted((tmp_path / "sweeps" / "cv" / "runs").iterdir())
    records = [json.loads((d / "split.json").read_text()) for d in runs]
    folds = [{r["path"]: r["fold"] for part in ("train", "val") for r in rec["files"][part]} for rec in records]
    assert all(f == folds[0] for f in folds) and set(folds[0].values()) == {0, 1}  # one assignment for both recipes
    cmp = compare(collect_runs([tmp_path / "sweeps" / "cv"]))
    assert sorted(rr.recipe for rr in cmp.recipes) == ["baseline_cnn", "wide_cnn"]
    for rr in cmp.recipes:
        assert (rr.folds, rr.seeds, sorted(r.fold for r in rr.runs)) == (2, 1, [0, 1])
        n = [r.summary["val/n"] for r in rr.runs]
        assert sum(n) == len(folds[0]) and rr.rho == pytest.approx(np.mean([x / (sum(n) - x) for x in n]))
    (pair,) = cmp.paired
    assert pair.ttest.pairs == 2 and [s.fold for s in pair.mcnemar.replicates] == [0, 1]
    assert "Nadeau" in to_markdown(cmp) and cmp.incomplete_folds == [] and cmp.incomplete == []
