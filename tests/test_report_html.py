"""HTML report and incomplete runs in every format, on run dirs laid out per the contract."""

import io
import json
import re
import shutil
import subprocess

import pandas as pd
import pytest

from run_dirs import make_grid, make_run

from brainmri.results.collect import collect_runs, compare
from brainmri.results.report import to_csv, to_latex, to_markdown
from brainmri.results.report_html import render_html
from brainmri.results.stats import holm


def _sweep(tmp_path):
    make_grid(tmp_path, {"baseline_cnn": 0.8, "tiny_cnn": 0.6}, best_lr=1e-3, rng_seed=0)
    d = make_run(tmp_path, "tiny_cnn", 2, 1e-3, 0.5, status="failed")
    (d / "status.json").write_text(json.dumps({"status": "failed", "error": "Traceback | x\nRuntimeError: boom"}))
    return compare(collect_runs([tmp_path]))


def test_incomplete_run_with_multiline_error_in_every_format(tmp_path):
    cmp = _sweep(tmp_path)
    md = to_markdown(cmp)
    row = [line for line in md.splitlines() if "failed" in line][0]
    assert row.count(" | ") == 5 and "| Traceback \\| x |" in row
    assert not any(line.startswith("RuntimeError") for line in md.splitlines())  # the table is not broken
    csv = pd.read_csv(io.StringIO(to_csv(cmp)))
    failed = csv[csv["state"] == "failed"]
    assert len(failed) == 1 and failed.iloc[0]["recipe"] == "tiny_cnn" and failed.iloc[0]["error"] == "Traceback | x"
    assert (csv["state"] == "finished").sum() == 2
    assert "failed & Traceback | x" in to_latex(cmp)


def test_holm():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_html_report_sections_and_numbers(tmp_path):
    cmp = _sweep(tmp_path / "sweep")
    page = render_html(cmp)
    for i in (1, 2, 3, 4, 5, 6, 8, 9, 10):
        assert f"id='s{i}'" in page
    assert "http://" not in page.split("<body>")[1].split("<script>")[0]
    assert f"{cmp.recipes[0].stats['acc'].mean:.3f}" in page
    assert "RuntimeError: boom" in page and "p (Holm)" in page


@pytest.mark.skipif(not shutil.which("chromium"), reason="chromium not installed (launch/setup.sh installs it)")
def test_html_report_in_headless_chromium_offline(tmp_path):
    cmp = _sweep(tmp_path / "sweep")
    (tmp_path / "r.html").write_text(render_html(cmp))
    base = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--proxy-server=127.0.0.1:9",
            "--host-resolver-rules=MAP * ~NOTFOUND", "--enable-logging=stderr", "--v=0"]
    out = subprocess.run(base + ["--virtual-time-budget=5000", "--dump-dom", f"file://{tmp_path}/r.html"],
                         capture_output=True, text=True, timeout=120)
    assert not re.search(r"CONSOLE.*(Error|Uncaught)", out.stderr), out.stderr[-2000:]
    assert out.stdout.count("class=\"main-svg\"") >= 5  # plotly drew its figures
    assert f"{cmp.recipes[0].stats['acc'].mean:.3f}" in out.stdout
    subprocess.run(base + ["--window-size=1200,2400", f"--screenshot={tmp_path}/r.png", f"file://{tmp_path}/r.html"],
                   capture_output=True, timeout=120)
    assert (tmp_path / "r.png").stat().st_size > 10_000


def test_band_section_from_the_engines_flat_summary_keys(tmp_path):
    for seed, acc in ((0, 0.5), (1, 0.7)):
        d = make_run(tmp_path, "baseline_cnn", seed, 1e-3, 0.8, test_acc=0.8)
        summary = json.loads((d / "summary.json").read_text())
        summary.update({"test/band/novel/n": 30, "test/band/novel/acc": acc, "test/band/exact/n": 0})
        (d / "summary.json").write_text(json.dumps(summary))
    page = render_html(compare(collect_runs([tmp_path])))
    section = page.split("id='s7'")[1].split("</section>")[0]
    assert "novel" in section and "exact" not in section  # empty bands are left out
    assert "<td>0.600 ± 0.141</td>" in section and "<td>30</td>" in section  # rounded; the count once, an integer


def test_the_reliability_curve_reports_the_one_ece_of_the_metrics(tmp_path):
    """The HTML report's reliability ECE is brainmri.results.metrics' (15 equal-width bins) on the
    replicates' pooled test predictions, not a definition of its own."""
    import numpy as np

    from run_dirs import CLASSES

    from brainmri.results.metrics import expected_calibration_error

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 60)
    pooled = []
    for seed in (0, 1):
        d = make_run(tmp_path, "baseline_cnn", seed, 1e-3, 0.8, test_acc=0.8, preds=(labels, labels))
        # right at confidence 0.64, wrong at 0.69: one bin of a 10-bin ECE, two of the 15-bin one
        right = rng.random(len(labels)) < 0.5
        pred = np.where(right, labels, (labels + 1) % 4)
        confidence = np.where(right, 0.64, 0.69) + rng.uniform(-0.01, 0.01, len(labels))
        probs = np.repeat(((1 - confidence) / 3)[:, None], 4, axis=1)
        probs[np.arange(len(labels)), pred] = confidence
        frame = pd.read_csv(d / "predictions_test.csv")
        frame["label"], frame["pred"] = [CLASSES[i] for i in labels], [CLASSES[i] for i in probs.argmax(1)]
        for i, c in enumerate(CLASSES):
            frame[f"prob_{c}"] = probs[:, i]
        frame.to_csv(d / "predictions_test.csv", index=False)
        pooled.append(probs)
    ece = expected_calibration_error(np.concatenate([labels, labels]), np.concatenate(pooled))
    page = render_html(compare(collect_runs([tmp_path])))
    assert f"baseline_cnn: reliability, ECE={ece:.3f}" in page
    other = expected_calibration_error(np.concatenate([labels, labels]), np.concatenate(pooled), n_bins=10)
    assert f"{other:.3f}" != f"{ece:.3f}"
