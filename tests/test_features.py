"""Frozen-backbone feature cache: same logits as the full backbone, deterministic views, persistence."""

from __future__ import annotations

import pytest
import torch
from torchvision import models as tvm

from conftest import make_samples

from brainmri.config import DataConfig
from brainmri.data.datasets import ImageDataset
from brainmri.data.transforms import Decoder, batch_normalizer, eval_transform, train_transform
from brainmri.models.registry import freeze_frozen_norms, set_trainable
from brainmri.train import features as F

SIZE = 32


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = tvm.resnet50(weights=None)
    net.fc = torch.nn.Linear(net.fc.in_features, 4)
    # non-trivial BatchNorm statistics, so eval-mode and train-mode BN would differ
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


NORM = batch_normalizer(DataConfig(input_channels=3))  # the engine's per-batch uint8 → float step


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    samples = make_samples(tmp_path_factory.mktemp("images"), n=6)
    cfg = DataConfig(input_size=SIZE, input_channels=3, augment=["hflip", "vflip", "rotation"], rotation_degrees=20)
    decoder = Decoder(SIZE, 3)
    return ImageDataset(samples, decoder, train_transform(cfg)), ImageDataset(samples, decoder, eval_transform(cfg))


def test_feature_cache_and_full_backbone_give_the_same_logits(model, datasets):
    train_ds, _ = datasets
    n = len(train_ds)
    feats = F.build_feature_cache(model, train_ds, to_input=NORM, views=2, batch_size=n, seed=7)
    assert feats.shape == (2, n, model.fc.in_features)
    # the engine's full path: head trainable, model.train(), frozen BatchNorm put back in eval mode
    set_trainable(model, ["head"])
    model.train()
    freeze_frozen_norms(model)
    try:
        with torch.no_grad():
            for v in range(2):
                views = []
                for i in range(n):
                    torch.manual_seed(F.view_seed(7, v, i))
                    views.append(train_ds[i][0])
                # same batch as the cache build, so both paths run the same kernels
                torch.testing.assert_close(model.fc(feats[v]), model(NORM(torch.stack(views))), atol=1e-5, rtol=1e-5)
    finally:
        set_trainable(model, ["all"])
        model.eval()
    assert not torch.equal(feats[0], feats[1])  # the two views are different augmentations


def test_backbone_features_is_the_input_of_fc(model):
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(model.fc(F.backbone_features(model, x)), model(x), atol=1e-5, rtol=1e-5)


def test_views_are_deterministic_and_feature_dataset_cycles_them(model, datasets):
    train_ds, eval_ds = datasets
    a = F.build_feature_cache(model, train_ds, to_input=NORM, views=3, batch_size=4, seed=1)
    b = F.build_feature_cache(model, train_ds, to_input=NORM, views=3, batch_size=3, seed=1)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)  # batch size does not change a view
    assert model.training is False

    ds = F.FeatureDataset(a, train_ds.samples)
    for epoch, view in [(1, 0), (2, 1), (3, 2), (4, 0)]:
        ds.set_epoch(epoch)
        feature, label, index = ds[5]
        assert torch.equal(feature, a[view, 5]) and label == train_ds.samples[5].label and index == 5
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch[0].shape == (4, a.shape[2]) and batch[1].dtype == torch.int64

    single = F.build_feature_cache(model, eval_ds, to_input=NORM, views=2, batch_size=4)
    assert torch.equal(single[0], single[1])  # eval transform: every view is the same


def test_cached_features_persist_and_key_on_the_weights(model, datasets, tmp_path, monkeypatch):
    _, eval_ds = datasets
    first = F.cached_features(model, eval_ds, to_input=NORM, views=1, batch_size=4, cache_dir=tmp_path)
    assert len(list((tmp_path / "features").glob("*.pt"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("recomputed features that are on disk")

    monkeypatch.setattr(F, "build_feature_cache", fail)
    assert torch.equal(F.cached_features(model, eval_ds, to_input=NORM, views=1, batch_size=4, cache_dir=tmp_path),
                       first)
    monkeypatch.undo()

    other = tvm.resnet50(weights=None)
    other.fc = torch.nn.Linear(other.fc.in_features, 4)
    other.load_state_dict(model.state_dict())
    assert F.feature_cache_key(other, eval_ds, 1, 0) == F.feature_cache_key(model, eval_ds, 1, 0)
    with torch.no_grad():
        other.fc.weight.add_(1.0)  # the head does not change the features
        assert F.feature_cache_key(other, eval_ds, 1, 0) == F.feature_cache_key(model, eval_ds, 1, 0)
        other.layer4[0].conv1.weight.mul_(0.5)
    assert F.feature_cache_key(other, eval_ds, 1, 0) != F.feature_cache_key(model, eval_ds, 1, 0)
