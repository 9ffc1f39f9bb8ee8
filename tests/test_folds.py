"""Grouped, stratified K-fold splits (data.folds / data.fold) on phantoms with planted copies."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest

from conftest import TINY, run_train

from brainmri.config import ConfigError, DataConfig, identity, load_config, run_hash
from brainmri.data.datasets import Split, build_split


@pytest.fixture(scope="module")
def copies_root(phantom_root, tmp_path_factory):
    """The phantoms plus byte copies (exact groups) and re-saved copies (near-identical groups) in Training."""
    from PIL import Image

    root = tmp_path_factory.mktemp("folds") / "data"
    shutil.copytree(phantom_root, root)
    for k, cls in enumerate(("glioma", "meningioma", "pituitary")):
        originals = sorted((root / "Training" / cls).glob("*.jpg"))
        for i in range(1 + k):  # groups of 2, 3 and 4 byte-identical files
            shutil.copy(originals[0], originals[0].with_name(f"copy_{i}.jpg"))
        shutil.copy(originals[1], originals[1].with_name("twin.jpg"))
        Image.open(originals[5]).convert("L").save(originals[5].with_name("resaved.jpg"), quality=60)  # same picture
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One fingerprint cache for the module: each image is fingerprinted once."""
    return tmp_path_factory.mktemp("cache")


def _splits(root, folds, seed, cache, group_by="near"):
    return [build_split(DataConfig(folds=folds, fold=i, split_seed=seed, group_by=group_by, cache_dir=str(cache)), root)
            for i in range(folds)]


@pytest.mark.parametrize("folds, seed", [(2, 0), (3, 1), (5, 2), (4, 7)])
def test_folds_are_disjoint_covering_grouped_and_the_same_for_every_fold(copies_root, cache, folds, seed):
    splits = _splits(copies_root, folds, seed, cache)
    pool = {s.path for s in splits[0].train + splits[0].val}
    assert len(pool) == 4 * 12 + (1 + 2 + 3) + 3 + 3
    fold_of = splits[0].fold_of
    assert set(fold_of) == pool and set(fold_of.values()) == set(range(folds))
    vals = []
    for i, split in enumerate(splits):
        assert (split.folds, split.fold) == (folds, i) and split.fold_of == fold_of  # one assignment
        val, train = {s.path for s in split.val}, {s.path for s in split.train}
        assert val == {p for p, f in fold_of.items() if f == i} and not val & train and val | train == pool
        assert [s.path for s in split.test] == [s.path for s in splits[0].test]  # Testing: the test set of every fold
        vals.append(val)
    assert sum(len(v) for v in vals) == len(pool)  # every training image validated exactly once
    # no near-duplicate group (byte copies, re-saved copies) straddles two folds
    members: dict[int, set[int]] = {}
    for path, group in splits[0].group_of.items():
        members.setdefault(group, set()).add(fold_of[path])
    assert all(len(f) == 1 for f in members.values())
    sizes = Counter(splits[0].group_of.values())
    assert sorted(n for n in sizes.values() if n > 1) == [2, 2, 2, 2, 2, 2, 2, 3, 4]  # every planted group found
    # stratified: per class, fold sizes differ by at most the largest group of that class
    classes = splits[0].classes
    for c, name in enumerate(classes):
        per_fold = Counter(fold_of[s.path] for s in splits[0].train + splits[0].val if s.label == c)
        counts = [per_fold.get(i, 0) for i in range(folds)]
        largest = max(n for g, n in sizes.items()
                      if any(splits[0].group_of[s.path] == g for s in splits[0].train + splits[0].val if s.label == c))
        assert max(counts) - min(counts) <= largest, (name, counts)


@pytest.mark.parametrize("folds, seed", [(2, 3), (3, 0), (5, 1)])
def test_singleton_groups_give_folds_within_one_image_per_class(phantom_root, cache, folds, seed):
    # distinct phantoms grouped by bytes: every group one image, so StratifiedGroupKFold balances each class to ±1
    split = build_split(DataConfig(folds=folds, fold=0, split_seed=seed, group_by="exact", cache_dir=str(cache)),
                        phantom_root)
    assert len(set(split.group_of.values())) == len(split.fold_of) == 4 * 12
    for c in range(4):
        per_fold = Counter(split.fold_of[s.path] for s in split.train + split.val if s.label == c)
        counts = [per_fold.get(i, 0) for i in range(folds)]
        assert max(counts) - min(counts) <= 1 and sum(counts) == 12


def test_assignment_depends_on_the_data_and_split_keys_never_on_the_recipe(copies_root, cache):
    common = [f"data.root={copies_root}", "data.folds=5", f"data.cache_dir={cache}"]
    cnn = load_config("configs/baseline_cnn.yaml", [*common, "data.fold=2", "data.input_size=64"])
    resnet = load_config("configs/resnet50_finetune.yaml", [*common, "data.fold=4", "optim.lr=1e-2", "seed=3"])
    assert cnn.data != resnet.data  # the recipes' data sections differ (size, channels, augmentation, batch)
    a, b = build_split(cnn.data, copies_root).record(), build_split(resnet.data, copies_root).record()
    folds = lambda rec: {r["path"]: r["fold"] for part in ("train", "val") for r in rec["files"][part]}  # noqa: E731
    assert folds(a) == folds(b) and len(folds(a)) == len(a["files"]["train"]) + len(a["files"]["val"])
    assert (a["folds"], a["fold"], b["fold"]) == (5, 2, 4)
    assert all(r["fold"] == 2 for r in a["files"]["val"]) and all(r["fold"] != 2 for r in a["files"]["train"])
    assert a["manifest"]["data"] == b["manifest"]["data"] and a["manifest"]["val"] != b["manifest"]["val"]
    other = load_config("configs/baseline_cnn.yaml", [*common, "data.fold=2", "data.split_seed=1"])
    assert folds(build_split(other.data, copies_root).record()) != folds(a)  # the split seed draws the folds
    again = Split.from_record(a)
    assert (again.folds, again.fold) == (5, 2) and again.record()["files"] == a["files"]


def test_unset_fold_keys_leave_a_runs_identity_and_directory_as_they_were():
    plain = load_config("configs/baseline_cnn.yaml")
    assert not {"data.folds", "data.fold"} & set(identity(plain.to_dict()))  # runs named before folds existed
    fold0, fold1 = (load_config("configs/baseline_cnn.yaml", ["data.folds=5", f"data.fold={i}"]) for i in (0, 1))
    assert len({run_hash(plain), run_hash(fold0), run_hash(fold1)}) == 3 and identity(fold1.to_dict())["data.fold"] == 1


@pytest.mark.parametrize("overrides, named", [
    (["data.folds=1", "data.fold=0"], "data.folds must be >= 2"),
    (["data.folds=5"], "data.fold: give the validation fold (0..4)"),
    (["data.folds=5", "data.fold=5"], "data.fold must be in 0..4"),
    (["data.folds=3", "data.fold=-1"], "data.fold must be in 0..2"),
    (["data.fold=1"], "data.fold=1 needs data.folds"),
    (["data.folds=2.5", "data.fold=0"], "data.folds: expected an integer"),
    (["data.folds=true", "data.fold=0"], "data.folds: expected an integer"),
])
def test_bad_fold_keys_are_one_line_naming_the_key(overrides, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.").replace("(", r"\(").replace(")", r"\)")):
        load_config("configs/baseline_cnn.yaml", overrides)
    assert load_config("configs/baseline_cnn.yaml", ["data.folds=null", "data.fold=null"]).data.folds is None


def test_a_fold_run_records_its_folds_in_split_json_and_bad_keys_exit_2(phantom_root, tmp_path):
    bad = run_train("--config", "configs/baseline_cnn.yaml", "data.folds=4", "data.fold=7", check=False, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "data.fold must be in 0..3" in bad.stderr
    run = tmp_path / "run"
    run_train("--config", "configs/baseline_cnn.yaml", *TINY, f"data.root={phantom_root}", f"run_dir={run}",
              "train.epochs=1", "train.max_steps_per_epoch=1", "wandb.enabled=false", "data.folds=3", "data.fold=1")
    record = json.loads((run / "split.json").read_text())
    assert (record["folds"], record["fold"]) == (3, 1)
    assert {r["fold"] for r in record["files"]["val"]} == {1}
    assert {r["fold"] for r in record["files"]["train"]} == {0, 2}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val/n"] == record["val"] and summary["config"]["data"]["fold"] == 1
