"""brainmri.results.collect / brainmri.results.report / launch/collect.py on synthetic run dirs and real
offline W&B files."""

import json
import math
import os

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from run_dirs import CLASSES, _metrics, make_run  # noqa: F401  (make_run is used by other tests too)
from wandb_runs import write_runs

from brainmri.cli import collect as cli  # launch/collect.py is its shim
from brainmri.results.collect import api_filters, collect_runs, compare, mcnemar, mean_ci, runs_from_api
from brainmri.results.report import to_csv, to_markdown

os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true")
def _by_hand(x):
    x = np.array(x, dtype=float)
    n, mean = len(x), x.sum() / len(x)
    std = math.sqrt(((x - mean) ** 2).sum() / (n - 1))
    half = stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half


def test_table_stats_equal_independent_computation(tmp_path):
    tests = [0.81, 0.86, 0.78, 0.90]
    for seed, t in enumerate(tests):
        make_run(tmp_path, "resnet18", seed, 1e-3, 0.8 + seed / 100, t)
    (rr,) = compare(collect_runs([tmp_path])).recipes
    for metric, values in {"acc": tests, "ece": [1 - t for t in tests],
                           "recall/notumor": [t - 0.02 for t in tests]}.items():
        s = rr.stats[metric]
        assert s.n == 4
        assert np.allclose([s.mean, s.std, s.ci_low, s.ci_high], _by_hand(values), rtol=0, atol=1e-12)
    csv = pd.read_csv(pd.io.common.StringIO(to_csv(compare(collect_runs([tmp_path])))))
    assert np.isclose(csv.loc[0, "acc_mean"], np.mean(tests)) and csv.loc[0, "n_seeds"] == 4


def test_rate_intervals_are_clipped_to_their_range():
    values = [0.99, 0.80]  # two seeds: the raw t-interval runs far past 1
    _, _, lo, hi = _by_hand(values)
    assert hi > 1 and lo < 0.8
    s = mean_ci(values, bounds=(0.0, 1.0))
    assert s.ci_high == 1.0 and s.ci_low == pytest.approx(max(lo, 0.0))
    assert mean_ci(values).ci_high == pytest.approx(hi)  # a loss keeps its raw interval


def test_lr_selected_on_validation_not_test(tmp_path):
    # lr=1e-3: better validation, worse test. lr=1e-4: the reverse. Honest selection picks 1e-3.
    for seed in range(3):
        make_run(tmp_path, "vit", seed, 1e-3, val_acc=0.90 + seed / 100, test_acc=0.70 + seed / 100)
        make_run(tmp_path, "vit", seed, 1e-4, val_acc=0.80 + seed / 100, test_acc=0.95)
    (rr,) = compare(collect_runs([tmp_path])).recipes
    assert rr.keys == ["optim.lr"] and rr.chosen == (1e-3,)
    assert np.isclose(rr.stats["acc"].mean, 0.71)
    md = to_markdown(compare(collect_runs([tmp_path]), by=["optim.lr"]), per_value=True)
    assert "optim.lr=0.001" in md and "optim.lr=0.0001" in md


def test_val_fallback_is_labelled(tmp_path):
    for seed in range(2):
        make_run(tmp_path, "cnn", seed, 1e-3, val_acc=0.8 + seed / 10)
    cmp = compare(collect_runs([tmp_path]))
    assert cmp.recipes[0].split == "val" and np.isclose(cmp.recipes[0].stats["acc"].mean, 0.85)
    assert any("VALIDATION" in n for n in cmp.notes)


def test_crashed_and_running_runs_listed_not_averaged(tmp_path):
    for seed in range(2):
        make_run(tmp_path, "cnn", seed, 1e-3, 0.8, 0.8)
    make_run(tmp_path, "cnn", 2, 1e-3, 0.1, status="failed")
    make_run(tmp_path, "cnn", 3, 1e-3, 0.1, status="running")
    cmp = compare(collect_runs([tmp_path]))
    assert cmp.recipes[0].stats["acc"].n == 2 and cmp.recipes[0].stats["acc"].mean == 0.8
    assert sorted((r.seed, r.status) for r in cmp.incomplete) == [(2, "failed"), (3, "running")]
    md = to_markdown(cmp)
    incomplete = md.split("## Incomplete runs")[1]
    assert "failed" in incomplete and "boom" in incomplete and "running" in incomplete


def test_run_in_rundir_and_offline_wandb_counted_once(tmp_path):
    d = make_run(tmp_path, "cnn", 0, 1e-3, 0.8, 0.75, wandb_id="dup1")
    config = yaml.safe_load((d / "config.yaml").read_text())
    write_runs([{"dir": str(d), "id": "dup1", "config": config, "rows": [{"epoch": 1, "val/acc": 0.8}],
                 "summary": _metrics("val", 0.8) | _metrics("test", 0.75)}], tmp_path)
    runs = collect_runs([tmp_path])
    assert len(runs) == 1 and {s.split(":")[0] for s in runs[0].sources} == {"rundir", "wandb-offline"}
    assert compare(runs).recipes[0].stats["acc"].n == 1


def test_offline_only_resumed_run_counted_once_and_killed_listed(tmp_path):
    spec = {"dir": str(tmp_path), "config": {"recipe": "cnn", "seed": 0, "optim": {"lr": 1e-3}}}
    write_runs([{**spec, "id": "r1", "rows": [{"epoch": 1, "val/acc": 0.5}], "exit_code": 1},
                {**spec, "id": "r1", "rows": [{"epoch": 2, "val/acc": 0.7}], "summary": _metrics("val", 0.7)},
                {**spec, "id": "r2", "config": {**spec["config"], "seed": 1},
                 "rows": [{"epoch": 1, "val/acc": 0.6}], "summary": _metrics("val", 0.6)},
                {**spec, "id": "k1", "config": {**spec["config"], "seed": 2}, "rows": [{"epoch": 1, "val/acc": 0.1}]}],
               tmp_path)
    (killed,) = tmp_path.rglob("run-k1.wandb")
    killed.write_bytes(killed.read_bytes()[:-40])  # SIGKILL: the tail with the exit record never reached disk
    cmp = compare(collect_runs([tmp_path]))
    (rr,) = cmp.recipes
    assert sorted(r.id for r in rr.runs) == ["r1", "r2"] and np.isclose(rr.stats["acc"].mean, 0.65)
    assert [(r.id, r.status) for r in cmp.incomplete] == [("k1", "running")]
    assert [h["epoch"] for h in next(r for r in rr.runs if r.id == "r1").history()] == [1, 2]


def _naive_exact(b, c):
    n, k = b + c, min(b, c)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def test_mcnemar_exact_and_chi2():
    a = np.array([1] * 7 + [0] * 2 + [1] * 10, bool)
    b = np.array([0] * 7 + [1] * 2 + [1] * 10, bool)
    res = mcnemar(a, b)
    assert (res.b, res.c, res.method) == (7, 2, "exact") and np.isclose(res.p, _naive_exact(7, 2))
    a = np.array([1] * 30 + [0] * 12, bool)
    res = mcnemar(a, ~a)
    assert res.method == "chi2-cc" and np.isclose(res.statistic, (18 - 1) ** 2 / 42)
    assert np.isclose(res.p, math.erfc(math.sqrt(res.statistic / 2)))  # chi2(1) sf
    assert mcnemar(a, a).p == 1.0


def test_mcnemar_between_best_two_recipes_per_seed(tmp_path):
    labels = np.arange(40) % 4
    wrong = (labels + 1) % 4
    for seed in (0, 1):
        a_pred = np.where(np.arange(40) < 30, labels, wrong)           # 30 right
        b_pred = np.where(np.arange(40) < 22 + seed, labels, wrong)     # 22 / 23 right
        make_run(tmp_path, "best", seed, 1e-3, 0.9, 0.75, preds=(labels, a_pred))
        make_run(tmp_path, "second", seed, 1e-3, 0.8, 0.55, preds=(labels, b_pred))
        make_run(tmp_path, "third", seed, 1e-3, 0.7, 0.99, preds=(labels, labels))
    cmp = compare(collect_runs([tmp_path]))
    assert [rr.recipe for rr in cmp.recipes] == ["best", "second", "third"]  # ranked by validation
    mc = cmp.mcnemar
    assert (mc.a, mc.b) == ("best", "second") and [s.seed for s in mc.replicates] == [0, 1]
    s0, s1 = mc.replicates
    assert (s0.n, s0.test.b, s0.test.c, s1.test.b) == (40, 8, 0, 7)
    assert np.isclose(s0.test.p, _naive_exact(8, 0)) and np.isclose(s1.test.p, _naive_exact(7, 0))
    assert "p=0.007812" in to_markdown(cmp)


class FakeApiRun:
    """Shaped like wandb.apis.public.Run: id, name, group, state, config (plain values), summary_metrics,
    summary, scan_history(). No W&B server is reachable here, so these stand in for API results."""

    def __init__(self, id, state, config, summary, rows):
        self.id, self.name, self.group, self.state, self.config = id, f"run-{id}", "g", state, config
        self.summary_metrics = {**summary, "_wandb": {"runtime": 3}}
        self.summary = dict(self.summary_metrics)
        self._rows = rows

    def scan_history(self, keys=None, page_size=1000):
        return iter(self._rows)

    def history(self, samples=500, keys=None, pandas=True):
        raise AssertionError("sampled history must not be used")


class FakeApi:
    def __init__(self, runs):
        self._runs, self.calls = runs, []

    def runs(self, path, filters=None, **kw):
        self.calls.append((path, filters))
        return list(self._runs)


def test_online_path_on_api_shaped_runs(tmp_path):
    def cfg(seed):
        return {"recipe": "cnn", "seed": seed, "optim": {"name": "adam", "lr": 1e-3}, "_wandb": {"x": 1}}

    api = FakeApi([FakeApiRun("a1", "finished", cfg(0), _metrics("val", 0.8) | _metrics("test", 0.7),
                              [{"_step": 1, "epoch": 1, "val/acc": 0.8}]),
                   FakeApiRun("a2", "finished", cfg(1), _metrics("val", 0.9) | _metrics("test", 0.8), []),
                   FakeApiRun("a3", "crashed", cfg(2), {"val/acc": 0.1}, [])])
    # a2 was also synced from a local run dir: counted once, the run dir wins
    make_run(tmp_path, "cnn", 1, 1e-3, 0.9, 0.8, wandb_id="a2")
    runs = collect_runs([tmp_path], wandb_project="brainmri", wandb_entity="lab", group="g", tags=["x", "y"],
                        api=api)
    assert api.calls == [("lab/brainmri", {"$and": [{"group": "g"}, {"tags": {"$in": ["x"]}},
                                                   {"tags": {"$in": ["y"]}}]})]
    assert len(runs) == 3
    cmp = compare(runs)
    (rr,) = cmp.recipes
    assert np.isclose(rr.stats["acc"].mean, 0.75) and rr.stats["acc"].n == 2
    assert [(r.id, r.status) for r in cmp.incomplete] == [("a3", "crashed")]
    assert "_wandb" not in runs[0].config and "_wandb" not in runs[0].summary
    assert next(r for r in runs if r.id == "a1").history() == [{"_step": 1, "epoch": 1, "val/acc": 0.8}]
    assert api_filters() == {} and api_filters("g") == {"group": "g"}
    assert len(runs_from_api("p", api=FakeApi([]))) == 0


def test_cli_formats_and_plots(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    for seed in range(3):
        for recipe, v in (("cnn", 0.7), ("resnet18_recipe", 0.8)):
            make_run(sweep, recipe, seed, 1e-3, v + seed / 100, v)
    make_run(sweep, "cnn", 9, 1e-3, 0.1, status="failed")
    assert cli.main([str(sweep), "--format", "md", "--plots", str(tmp_path / "plots")]) == 0
    md = capsys.readouterr().out
    assert "| resnet18_recipe |" in md and "0.800 ± 0.000" in md and "Incomplete" in md
    for name in ("accuracy.png", "val_curves.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    assert cli.main([str(sweep), "--format", "latex", "--out", str(tmp_path / "t.tex")]) == 0
    tex = (tmp_path / "t.tex").read_text()
    assert r"\begin{tabular}" in tex and r"resnet18\_recipe" in tex and r"$_{\pm" in tex  # mean$_{\pm std}$ in %
    assert cli.main([str(sweep), "--format", "csv", "--out", str(tmp_path / "t.csv"), "--by", "optim.lr"]) == 0
    df = pd.read_csv(tmp_path / "t.csv")
    done = df[df["state"] == "finished"]
    assert list(done["recipe"]) == ["resnet18_recipe", "cnn"] and (done["n_seeds"] == 3).all()
    assert list(df[df["state"] == "failed"]["error"]) == ["boom"]  # incomplete runs are never dropped


def test_wandb_report_offline_is_a_clear_failure(tmp_path, capsys):
    make_run(tmp_path, "cnn", 0, 1e-3, 0.8, 0.8)
    assert cli.main([str(tmp_path), "--wandb-report"]) == 3
    assert "not published" in capsys.readouterr().err


@pytest.fixture
def tiny_real_data(tmp_path):
    """A few real MRI slices per class in Training/ and Testing/ (so test/* metrics exist)."""
    from conftest import SHARED_DATA

    if not SHARED_DATA.is_dir():
        pytest.skip("real data set not available")
    root = tmp_path / "data"
    for cls_dir in sorted(SHARED_DATA.iterdir()):
        files = sorted(cls_dir.glob("*.jpg"))[:14]
        for split, chunk in (("Training", files[:10]), ("Testing", files[10:])):
            (root / split / cls_dir.name).mkdir(parents=True)
            for f in chunk:
                (root / split / cls_dir.name / f.name).write_bytes(f.read_bytes())
    return root


@pytest.mark.slow
def test_e2e_offline_wandb_equals_summary_json(tmp_path, tiny_real_data):
    """Two real tiny trainings with offline W&B; the collector reads the .wandb files (only) back."""
    pytest.importorskip("brainmri.train.engine")
    from conftest import run_train

    tiny = ["data.input_size=32", "data.batch_size=8", "data.num_workers=0"]

    for seed in (0, 1):
        run_train("--config", "configs/baseline_cnn.yaml", *tiny, f"seed={seed}", f"run_dir={tmp_path / f's{seed}'}",
                  f"data.root={tiny_real_data}", "train.epochs=1", "train.max_steps_per_epoch=2",
                  "wandb.enabled=true", "wandb.group=e2e")
    offline = {r.id: r for r in collect_runs([tmp_path / "s0" / "wandb", tmp_path / "s1" / "wandb"])}
    merged = collect_runs([tmp_path])
    assert len(offline) == 2 and len(merged) == 2
    for seed in (0, 1):
        summary = json.loads((tmp_path / f"s{seed}" / "summary.json").read_text())
        run = offline[summary["wandb_id"]]
        assert run.status == "finished" and run.sources[0].startswith("wandb-offline")
        scalars = {k: v for k, v in summary.items() if not isinstance(v, (list, dict))}  # W&B gets scalars
        assert any(k.startswith("test/recall/") for k in scalars)
        assert {k: run.summary.get(k) for k in scalars} == scalars
        assert run.config == summary["config"]
        rows = [r for r in map(json.loads, (tmp_path / f"s{seed}" / "metrics.jsonl").read_text().splitlines())
                if "epoch" in r]
        logged = [{k: v for k, v in h.items() if k in rows[0]} for h in run.history() if "epoch" in h]
        assert logged == [{k: v for k, v in r.items() if v is not None} for r in rows]
    (rr,) = compare(merged).recipes
    assert rr.stats["acc"].n == 2
    assert np.isclose(rr.stats["acc"].mean, np.mean([r.summary["test/acc"] for r in offline.values()]))
