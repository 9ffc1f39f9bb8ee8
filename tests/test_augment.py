"""Augmentation as data: every data.augment name is seeded per (seed, epoch, image) and changes across epochs."""

from __future__ import annotations

import pytest
import torch

from brainmri.config import AUGMENTATIONS, AugConfig, ConfigError, DataConfig, load_config
from brainmri.data.datasets import EpochSeeded, ImageDataset
from brainmri.data.files import Sample
from brainmri.data.transforms import Decoder, MRIntensity, train_transform

# parameters that make every transform act on every image (so a change across epochs is certain)
STRONG = AugConfig(noise=0.05, erasing_p=1.0, rrc_scale=(0.3, 0.9))


@pytest.fixture(scope="module")
def images(phantom_root):
    files = sorted((phantom_root / "Training").rglob("*.jpg"))[::6][:6]
    return [Sample(str(p), 0, "") for p in files]


def _seeded(samples, names, seed=0, channels=3, aug=STRONG):
    cfg = DataConfig(input_size=32, input_channels=channels, augment=tuple(names), aug=aug, rotation_degrees=15)
    return EpochSeeded(ImageDataset(samples, Decoder(32, channels), train_transform(cfg)), seed)


@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_each_augmentation_is_fixed_by_seed_epoch_and_image_and_changes_across_epochs(images, name):
    data = _seeded(images, [name])
    data.set_epoch(3)
    first = [data[i][0] for i in range(len(images))]
    torch.manual_seed(1234)  # whatever the caller's RNG did meanwhile
    torch.rand(17)
    again = [data[i][0] for i in range(len(images))]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert all(x.dtype == torch.uint8 and x.shape == (3, 32, 32) for x in first)
    assert all(torch.equal(x[0], x[1]) and torch.equal(x[0], x[2]) for x in first)  # grey stays grey
    fresh = _seeded(images, [name])  # a new process (or a resumed run) draws the same
    fresh.set_epoch(3)
    assert all(torch.equal(a, fresh[i][0]) for i, a in enumerate(first))
    changed = set()
    for epoch in (4, 5, 6):  # a flip is a coin: over three more epochs most images see another draw
        data.set_epoch(epoch)
        changed |= {i for i, a in enumerate(first) if not torch.equal(a, data[i][0])}
    assert len(changed) >= len(images) // 2
    plain = [Decoder(32, 3)(s.path) for s in images]
    assert any(not torch.equal(a, p) for a, p in zip(first, plain, strict=True))  # it does something
    other_seed = _seeded(images, [name], seed=1)
    other_seed.set_epoch(3)
    assert any(not torch.equal(a, other_seed[i][0]) for i, a in enumerate(first))


def test_all_together_in_a_fixed_order_whatever_the_list_order(images):
    names = list(AUGMENTATIONS)
    a, b = _seeded(images, names, channels=1), _seeded(images, names[::-1], channels=1)
    for d in (a, b):
        d.set_epoch(1)
    assert all(torch.equal(a[i][0], b[i][0]) and a[i][0].shape == (1, 32, 32) for i in range(len(images)))


def test_mr_intensity_keeps_zero_pixels_and_moves_the_rest():
    torch.manual_seed(0)
    img = torch.randint(1, 256, (3, 16, 16), dtype=torch.uint8)
    img[:, :4] = 0
    img[1:] = img[0]
    out = MRIntensity(brightness=0.3, contrast=0.3, gamma=(0.7, 1.4), noise=0.05)(img)
    assert out.dtype == torch.uint8 and torch.equal(out[0], out[2])
    assert torch.all(out[:, :4] == 0) and not torch.equal(out[:, 4:], img[:, 4:])


def test_augmentation_keys_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="data.augment.*'mixup'.*rrc"):
        load_config(None, ["data.augment=[hflip,mixup]"])
    with pytest.raises(ConfigError, match=r"data.aug.rrc_scale must be a \[low, high\] pair"):
        load_config(None, ["data.aug.rrc_scale=[0.9,0.2]"])
    with pytest.raises(ConfigError, match="data.aug.erasing_p must be in"):
        load_config(None, ["data.aug.erasing_p=1.5"])
    old = load_config(None, ["data.augment=[hflip,rotation]", "data.rotation_degrees=20"])  # the old keys still work
    assert old.data.augment == ("hflip", "rotation") and old.data.rotation_degrees == 20.0
