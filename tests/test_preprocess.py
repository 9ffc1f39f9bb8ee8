"""data.crop: head and data.background: zero at decode time: the numpy/PIL head mask, the Decoder, the cache key."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from brainmri.config import load_config
from brainmri.data import preprocess as P
from brainmri.data.cache import DecodedCache
from brainmri.data.files import Sample
from brainmri.data.transforms import Decoder


@pytest.mark.parametrize("connectivity", [4, 8])
def test_components_holes_and_morphology_equal_scipy(connectivity):
    rng = np.random.default_rng(connectivity)
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    for density in (0.3, 0.5, 0.6):
        mask = rng.random((37, 53)) < density
        labels, sizes = P.label_components(mask, connectivity)
        want, n = ndimage.label(mask, structure)
        assert labels.max() == n and sizes.sum() == mask.sum() and sizes[0] == 0
        pairs = set(zip(labels[mask].tolist(), want[mask].tolist(), strict=True))  # the same partition, other numbers
        assert len(pairs) == n
        np.testing.assert_array_equal(P.fill_holes(mask), ndimage.binary_fill_holes(mask))
        square = np.ones((5, 5), bool)
        np.testing.assert_array_equal(P.dilate(mask, 2), ndimage.binary_dilation(mask, square))
        np.testing.assert_array_equal(P.erode(mask, 2), ndimage.binary_erosion(mask, square))
        if connectivity == 8:  # largest_component joins diagonal neighbours
            np.testing.assert_array_equal(P.largest_component(mask),
                                          want == np.argmax(np.bincount(want.ravel())[1:]) + 1)


@pytest.fixture(scope="module")
def phantom_files(phantom_root):
    return sorted((phantom_root / "Training").rglob("*.jpg"))[::4]


def test_head_mask_crop_and_zero_background_on_phantoms(phantom_files):
    for path in phantom_files:
        grey = P.load_grey(path)
        a = np.asarray(grey)
        mask = P.head_mask(grey)
        assert 0.4 < mask.mean() < 0.9  # the head, not the frame nor a speck
        assert a[mask].mean() > 4 * a[~mask].mean()  # bright inside, dark noise outside
        assert not mask[0].any() and not mask[:, 0].any()  # a 64 px phantom's head leaves a border
        zeroed = np.asarray(P.prepare(grey, None, background="zero", margin=0.05))
        wide = P.head_mask(grey, 0.05)
        assert (zeroed[~wide] == 0).all() and np.array_equal(zeroed[wide], a[wide]) and (a[~wide] > 0).any()
        x0, y0, x1, y1 = P.head_box(mask, 0.05)
        cropped = P.prepare(grey, None, crop="head", margin=0.05)
        assert cropped.size == (x1 - x0, y1 - y0) and cropped.size[0] * cropped.size[1] < a.size
        np.testing.assert_array_equal(np.asarray(cropped), a[y0:y1, x0:x1])
    blank = P.prepare(P.load_grey(phantom_files[0]).point(lambda v: 0), 16, "head", "zero")
    assert blank.size == (16, 16) and not np.asarray(blank).any()  # nothing found: the image is kept whole


def test_decoder_applies_the_settings_and_the_cache_keys_on_them(phantom_files, tmp_path):
    cfg = load_config(None, ["data.input_size=32", "data.input_channels=3", "data.crop=head",
                             "data.background=zero", "data.head_margin=0.05"])
    plain, prepared = Decoder(32, 3), Decoder.from_config(cfg.data)
    assert plain.key() == "32px-3ch" and prepared.key() != plain.key()
    x = prepared(phantom_files[0])
    want = P.prepare(P.load_grey(phantom_files[0]), 32, "head", "zero", 0.05)
    assert x.shape == (3, 32, 32) and torch.equal(x[0], torch.from_numpy(np.array(want)))
    assert not torch.equal(x, plain(phantom_files[0]))
    samples = [Sample(str(p), 0, f"{i:040x}") for i, p in enumerate(phantom_files)]
    stores = [DecodedCache.build(samples, d, tmp_path) for d in (plain, prepared, Decoder(32, 3, "head"))]
    assert len({s.data_path for s in stores}) == 3  # one store per setting
    for store, decoder in zip(stores, (plain, prepared), strict=False):
        assert all(torch.equal(store(i), decoder(s.path)) for i, s in enumerate(samples))


def test_training_data_decodes_with_the_settings(phantom_root):
    from brainmri.data.datasets import build_training_data

    cfg = load_config(None, [f"data.root={phantom_root}", "data.input_size=32", "data.num_workers=0",
                             "data.crop=head", "data.background=zero"])
    data = build_training_data(cfg)
    for part in ("train", "val", "test"):
        dataset = data.datasets[part]
        assert dataset.decoder.key() == Decoder.from_config(cfg.data).key() != Decoder(32, 3).key()
        assert torch.equal(dataset.raw(0), Decoder.from_config(cfg.data)(dataset.samples[0].path))
