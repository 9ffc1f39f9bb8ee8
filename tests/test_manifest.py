"""Manifests as a data source: the folder layout as one way of building one, bad rows, patients, sites, DICOM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from brainmri.config import DataConfig
from brainmri.data.datasets import build_split

FIXTURE = Path(__file__).parent / "fixtures" / "folder_split_main.json"
REFERENCE_CONFIGS = {"split": DataConfig(val_fraction=0.25), "exact": DataConfig(group_by="exact", split_seed=3),
                     "folds": DataConfig(folds=3, fold=1, split_seed=1)}


@pytest.mark.parametrize("name", sorted(REFERENCE_CONFIGS))
def test_a_folder_root_gives_the_split_it_gave_before_manifests(phantom_root, name):
    """The fixture is the split record of the session's phantoms (generate_phantoms(n_per_class=12,
    n_test_per_class=4, image_size=64, seed=0)) written by brainmri before a folder became one way of
    building a manifest: every part's file list, labels, groups and folds must be identical."""
    want = json.loads(FIXTURE.read_text())[name]
    record = build_split(REFERENCE_CONFIGS[name], phantom_root).record()
    got = {part: [[r["path"], r["label"], r.get("fold"), r.get("group"), r["sha1"]] for r in record["files"][part]]
           for part in ("train", "val", "test")}
    sha = lambda d: sorted(r[4] for part in ("train", "val", "test") for r in d[part])  # noqa: E731
    assert sha(got) == sha(want), "the phantom generator changed its files: rewrite the fixture on the old code"
    for part in ("train", "val", "test"):
        assert got[part] == want[part], part
    assert record["manifest"] == want["manifest"]
