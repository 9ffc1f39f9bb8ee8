"""Near-duplicate audit and leakage-grouped splits on real (generated) images with planted copies."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance
from scipy import ndimage

from brainmri.config import DataConfig
from brainmri.data import leakage as L
from brainmri.data.audit import audit
from brainmri.data.datasets import build_split

ROOT = Path(__file__).resolve().parents[1]


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue()))


PERTURB = {
    "reencode": lambda im, rng: _jpeg(im, 55),
    "resize": lambda im, rng: im.resize((im.width * 2 // 3,) * 2, Image.BILINEAR).resize(im.size, Image.BILINEAR),
    "shift": lambda im, rng: Image.fromarray(ndimage.shift(np.asarray(im), (2, -3), order=0, mode="nearest")),
    "contrast": lambda im, rng: ImageEnhance.Brightness(ImageEnhance.Contrast(im).enhance(1.3)).enhance(0.85),
    "noise": lambda im, rng: Image.fromarray(np.clip(np.asarray(im, np.float32)
                                                     + rng.normal(0, 8, im.size[::-1]), 0, 255).astype(np.uint8)),
}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Phantoms (96 px, 16 distinct subjects per class) plus one planted copy per perturbation."""
    from brainmri.data.phantoms import generate_phantoms

    root = tmp_path_factory.mktemp("leak") / "data"
    generate_phantoms(root, n_per_class=16, n_test_per_class=4, image_size=96, seed=3)
    rng = np.random.default_rng(0)
    planted = {}
    originals = sorted((root / "Training" / "meningioma").glob("*.jpg"))
    for k, (name, fn) in enumerate(PERTURB.items()):
        src = originals[k]
        dst = root / "Training" / "meningioma" / f"copy_{name}.jpg"
        fn(Image.open(src).convert("L"), rng).convert("L").save(dst, quality=90)
        planted[name] = (str(src), str(dst))
    # the same picture under another label (label noise), and a Testing copy of a Training image
    cross = root / "Training" / "glioma" / "relabelled.jpg"
    _jpeg(Image.open(originals[6]).convert("L"), 70).save(cross)
    planted["cross_label"] = (str(originals[6]), str(cross))
    test_copy = root / "Testing" / "meningioma" / "from_training.jpg"
    PERTURB["resize"](Image.open(originals[7]).convert("L"), rng).save(test_copy)
    planted["test_copy"] = (str(originals[7]), str(test_copy))
    return root, planted


def _pairs_of(root, cache):
    paths = sorted(str(p) for p in (root / "Training").glob("*/*.jpg"))
    import hashlib

    sha = [hashlib.sha1(Path(p).read_bytes()).hexdigest() for p in paths]
    fp = L.fingerprints(paths, cache)
    pairs = L.near_pairs(fp, sha)
    found = {(paths[i], paths[j]): L.BANDS[b] for i, j, b in zip(pairs.i, pairs.j, pairs.band, strict=True)}
    return paths, pairs, found


def test_every_planted_copy_is_found_and_distinct_subjects_never_merge(planted, tmp_path):
    root, plant = planted
    paths, pairs, found = _pairs_of(root, tmp_path)
    for name in [*PERTURB, "cross_label"]:
        a, b = plant[name]
        key = (a, b) if (a, b) in found else (b, a)
        assert found.get(key) == "near_identical", f"{name} copy not found as near-identical: {found.get(key)}"
    # every near-identical pair is a planted one: distinct phantom subjects never merge
    near = {k for k, v in found.items() if v in ("exact", "near_identical")}
    planted_pairs = {tuple(sorted(v)) for k, v in plant.items() if k != "test_copy"}
    assert {tuple(sorted(k)) for k in near} == planted_pairs
    groups = L.groups(len(paths), pairs, L.GROUP_BANDS["near"])
    assert np.bincount(groups).max() == 2


def test_search_projection_never_drops_a_pair_that_reaches_a_band(planted, tmp_path):
    """The candidate search runs on PCA-projected fingerprints; its pruning bound must hold for every pair."""
    root, _ = planted
    paths = sorted(str(p) for p in (root / "Training").glob("*/*.jpg"))
    fp = L.fingerprints(paths, tmp_path)
    train, held = fp[::2], fp[1::2]  # basis fitted on one half, bound checked on the other half too
    proj = L._project(fp, L._bases(train))
    i, j = np.triu_indices(len(fp), 1)
    exact = np.einsum("ncd,ncd->nc", fp[i], fp[j])
    assert (L._upper_bounds(proj, i, j) >= exact).all()
    assert len(held) and proj.vec.shape[-1] == L.SEARCH_DIM < fp.shape[-1]


def test_audit_reports_cross_label_and_test_leak_and_hits_cache(planted, tmp_path):
    root, plant = planted
    report, _ = audit(root, cache_dir=tmp_path, progress=False)
    [group] = report["cross_label_groups"]
    assert {m["path"] for m in group} == set(plant["cross_label"])
    assert {m["label"] for m in group} == {"glioma", "meningioma"}
    assert report["testing_nearest_training"]["near_identical"] >= 1
    assert report["pairs"]["across"]["near_identical"] >= 1
    assert report["images"] == {"Training": 4 * 16 + len(PERTURB) + 1, "Testing": 4 * 4 + 1}
    cache_files = list((tmp_path / "fingerprints").glob("*.npz"))
    assert len(cache_files) == 1
    stamp = cache_files[0].stat().st_mtime_ns
    again, _ = audit(root, cache_dir=tmp_path, progress=False)  # warm: nothing recomputed, cache untouched
    assert again == report and cache_files[0].stat().st_mtime_ns == stamp


def test_audit_cli_writes_json_html_and_refuses_one_class(planted, tmp_path):
    root, _ = planted
    env_cache = ["--cache-dir", str(tmp_path / "c")]
    out = subprocess.run([sys.executable, str(ROOT / "launch/audit.py"), str(root), "--html", str(tmp_path / "a"),
                          "--no-progress", *env_cache], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "| within training |" in out.stdout and "more than one label" in out.stdout
    report = json.loads((tmp_path / "a" / "audit.json").read_text())
    page = (tmp_path / "a" / "index.html").read_text()
    per_band = [sum(report["pairs"][w][b] for w in report["pairs"]) for b in ("exact", "near_identical", "same_scan")]
    assert page.count('class="pair"') == sum(min(40, n) for n in per_band)
    assert 'id="near_identical"' in page and "copy_reencode.jpg" in page and "relabelled.jpg" in page
    one = tmp_path / "one" / "Training" / "glioma"
    one.mkdir(parents=True)
    shutil.copy(next((root / "Training" / "glioma").glob("*.jpg")), one)
    bad = subprocess.run([sys.executable, str(ROOT / "launch/audit.py"), str(tmp_path / "one"), "--no-progress",
                          *env_cache], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "at least two" in bad.stderr


def test_audit_csvs_list_every_testing_image_and_every_cross_split_pair(planted, tmp_path, capsys):
    import csv

    from brainmri.cli import audit as audit_cli

    root, plant = planted
    assert audit_cli.main([str(root), "--json", str(tmp_path / "out" / "audit.json"), "--no-progress",
                           "--cache-dir", str(tmp_path / "c")]) == 0
    report = json.loads((tmp_path / "out" / "audit.json").read_text())
    with open(tmp_path / "out" / "audit_testing_nearest.csv") as f:
        nearest = list(csv.DictReader(f))
    with open(tmp_path / "out" / "audit_cross_pairs.csv") as f:
        pairs = list(csv.DictReader(f))
    assert "audit_testing_nearest.csv" in capsys.readouterr().out
    testing = sorted(str(p.relative_to(root)) for p in (root / "Testing").glob("*/*.jpg"))
    assert sorted(r["testing_path"] for r in nearest) == testing  # every Testing image, once
    assert {b: sum(r["band"] == b for r in nearest) for b in L.BANDS} == report["testing_nearest_training"]
    rel = lambda p: str(Path(p).relative_to(root))  # noqa: E731
    copy = next(r for r in nearest if r["testing_path"] == rel(plant["test_copy"][1]))
    assert (copy["nearest_training"], copy["training_label"], copy["band"]) == \
        (rel(plant["test_copy"][0]), "meningioma", "near_identical") and float(copy["similarity"]) > 0.97
    assert nearest[0]["band"] == "near_identical"  # leaks first
    bands = [L.BANDS.index(r["band"]) for r in nearest]
    assert bands == sorted(bands) and all(r["nearest_training"].startswith("Training/") for r in nearest)
    # every cross-split pair the audit counts, each with its Testing and Training side
    assert len(pairs) == sum(report["pairs"]["across"].values()) >= 1
    assert all(r["testing_path"].startswith("Testing/") and r["training_path"].startswith("Training/") for r in pairs)
    assert any((r["testing_path"], r["training_path"]) == (rel(plant["test_copy"][1]), rel(plant["test_copy"][0]))
               for r in pairs)


@pytest.mark.parametrize("seed", range(6))
def test_near_duplicate_groups_never_straddle_train_val(planted, tmp_path, seed):
    root, plant = planted
    split = build_split(DataConfig(val_fraction=0.3, split_seed=seed, cache_dir=str(tmp_path)), root)
    train = {s.path for s in split.train}
    for name in [*PERTURB, "cross_label"]:
        a, b = plant[name]
        assert (a in train) == (b in train), f"{name} pair straddles train/val with split seed {seed}"
    copy = next(s for s in split.test if s.path == plant["test_copy"][1])
    if plant["test_copy"][0] in train:
        assert copy.band == "near_identical" and copy.nearest_train == plant["test_copy"][0]
    assert all(s.nearest_train in train for s in split.val + split.test)


def test_band_metrics_in_summary_equal_predictions_csv_and_reach_the_table(planted, tmp_path):
    import csv

    from conftest import TINY, run_train

    from brainmri.results.collect import collect_runs, compare
    from brainmri.results.report import RENDERERS

    root, plant = planted
    run_dir = tmp_path / "run"
    run_train("--config", "configs/baseline_cnn.yaml", f"data.root={root}", f"run_dir={run_dir}",
              "train.epochs=1", "wandb.enabled=false", *TINY)
    summary = json.loads((run_dir / "summary.json").read_text())
    # metrics.jsonl closes with the best checkpoint's evaluation: the same val/test (and band) numbers
    *epochs, final = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert final["evaluation"] == "best_checkpoint" and all("epoch" in r for r in epochs)
    expected = {"evaluation": "best_checkpoint", "best_epoch": summary["best_epoch"],
                "epochs_run": summary["epochs_run"],
                **{k: v for k, v in summary.items() if k.startswith(("val/", "test/"))}}
    assert json.dumps(final, sort_keys=True) == json.dumps(expected, sort_keys=True)  # NaN-safe equality
    with open(run_dir / "predictions_test.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 * 4 + 1 and all(r["band"] in L.BANDS and r["nearest_train"] for r in rows)
    copy = next(r for r in rows if r["path"] == plant["test_copy"][1])
    split = json.loads((run_dir / "split.json").read_text())
    assert split["group_by"] == "near" and sum(split["bands"]["test"].values()) == len(rows)
    for band in L.BANDS:
        mine = [r for r in rows if r["band"] == band]
        assert summary[f"test/band/{band}/n"] == len(mine) == split["bands"]["test"].get(band, 0)
        if mine:
            acc = np.mean([r["label"] == r["pred"] for r in mine])
            assert summary[f"test/band/{band}/acc"] == pytest.approx(acc)
    assert copy["band"] in ("near_identical", "novel", "same_scan")
    cmp = compare(collect_runs([run_dir]))
    header = next(line for line in RENDERERS["md"](cmp).splitlines() if line.startswith("| Recipe"))
    assert "| Acc novel |" in header  # the main table: how the recipe does on images unlike its training images
    table = RENDERERS["md"](cmp, table="bands")  # every band in a table of its own, its count once
    present = [b for b in L.BANDS if summary[f"test/band/{b}/n"]]
    for band in present:
        acc = f"{summary[f'test/band/{band}/acc']:.3f}"
        assert f"| baseline_cnn | {band.replace('_', '-')} | {summary[f'test/band/{band}/n']} | {acc} |" in table
