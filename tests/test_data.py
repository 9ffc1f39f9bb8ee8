"""Folder scan, colour-mode conversion, duplicate-aware split, class weights."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from brainmri.config import DataConfig
from brainmri.data.datasets import build_split, class_weights, split_groups
from brainmri.data.files import Sample
from brainmri.data.transforms import Decoder


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "CMYK", "P", "I;16"])
def test_every_colour_mode_decodes_to_the_recipe_channels(tmp_path, mode):
    rng = np.random.default_rng(0)
    gray = Image.fromarray(rng.integers(0, 255, (40, 50), dtype=np.uint8))
    img = gray.convert(mode) if mode != "I;16" else Image.fromarray(np.asarray(gray).astype(np.uint16) * 256)
    path = tmp_path / ("x.tif" if mode == "I;16" else "x.png" if mode in ("RGBA", "P") else "x.jpg")
    img.save(path)
    for channels in (1, 3):
        out = Decoder(32, channels)(path)
        assert out.dtype == torch.uint8 and out.shape == (channels, 32, 32)
        if channels == 3:  # grey-scale replicated, whatever the input mode
            assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])


def test_split_is_stratified_and_keeps_duplicates_together():
    samples = []
    for label in range(4):
        for i in range(50):
            sha = f"{label}-{i // 2}"  # every file has one byte-identical twin
            samples.append(Sample(f"c{label}/{i}.jpg", label, sha))
    train, val = split_groups(samples, 0.2, seed=0)
    assert len(train) + len(val) == 200
    assert not {s.sha1 for s in train} & {s.sha1 for s in val}
    counts = np.bincount([s.label for s in val], minlength=4)
    assert counts.tolist() == [10, 10, 10, 10]
    again, _ = split_groups(samples, 0.2, seed=0)
    other, _ = split_groups(samples, 0.2, seed=1)
    assert [s.path for s in again] == [s.path for s in train] and [s.path for s in other] != [s.path for s in train]


def test_build_split_groups_copies_and_marks_test_leaks(phantom_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(phantom_root, root)
    glioma = sorted((root / "Training" / "glioma").glob("*.jpg"))
    for i, src in enumerate(glioma[:3]):  # the same bytes under other names, as in the public set
        shutil.copy(src, src.with_name(f"copy_{i}.jpg"))
    test_leak = root / "Testing" / "glioma" / "leak.jpg"
    shutil.copy(glioma[4], test_leak)
    split = build_split(DataConfig(val_fraction=0.25), root)
    train_sha = {s.sha1 for s in split.train}
    assert not train_sha & {s.sha1 for s in split.val}
    # the copy stays in the test split, marked with its training twin (nothing silently dropped)
    leak = next(s for s in split.test if s.path == str(test_leak))
    assert leak.band == "exact" and leak.nearest_train == str(glioma[4]) and leak.similarity >= 0.999
    assert len(split.test) == 4 * 4 + 1 and all(s.band in ("exact", "near_identical", "same_scan", "novel")
                                                 for s in split.test + split.val)
    assert len(split.train) + len(split.val) == 4 * 12 + 3


def test_class_weights_are_inverse_frequency():
    samples = [Sample("a", 0, "a")] * 6 + [Sample("b", 1, "b")] * 2
    w = class_weights(samples, 2)
    assert torch.allclose(w, torch.tensor([8 / (2 * 6), 8 / (2 * 2)]))
