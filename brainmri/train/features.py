"""Frozen-backbone feature cache for feature extraction (``resnet50_feature``).

While the backbone is frozen and in eval mode, its pooled features (the input of ``model.fc``) are
a pure function of the image view, so they are computed once per view and the head trains on
them. Training images get ``views`` augmented views each (view v of image i draws its augmentation
from a seed fixed by (seed, v, i)); epoch e trains on view (e - 1) % views. Val/test get 1 view
with the eval transform. Stores persist under ``<cache>/features``, keyed by backbone weights,
sample hashes, decode + transform config, views and seed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from torch import nn

from brainmri.atomic import atomic_write
from brainmri.data.cachedir import cache_base, cache_unwritable


def backbone_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pooled features of a torchvision ResNet: its forward up to ``avgpool`` + ``flatten``."""
    m: Any = model  # a torchvision ResNet
    x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    x = m.layer4(m.layer3(m.layer2(m.layer1(x))))
    return torch.flatten(m.avgpool(x), 1)


def view_seed(seed: int, view: int, index: int) -> int:
    return (seed * 1_000_003 + view * 100_019 + index) % (2**63)


class _SeededViews(torch.utils.data.Dataset):
    """Item i of view v of ``dataset``, its random augmentation drawn from ``view_seed(seed, v, i)``."""

    def __init__(self, dataset, view: int, seed: int):
        self.dataset, self.view, self.seed = dataset, view, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        torch.manual_seed(view_seed(self.seed, self.view, i))  # v2 transforms draw from torch's global RNG
        x, _, _ = self.dataset[i]
        return x


@torch.inference_mode()
def build_feature_cache(model: nn.Module, dataset, views: int = 1, batch_size: int = 64,
                        device: torch.device | str = "cpu", seed: int = 0, num_workers: int = 0,
                        to_input=None) -> torch.Tensor:
    """Features of every item of ``dataset`` (an ImageDataset), ``views`` passes: float32 (views, N, D) on CPU.

    ``to_input`` turns a loader batch into the model's input (the engine's uint8 → float normaliser).
    """
    to_input = to_input or (lambda x: x)
    was_training = model.training
    model.eval()
    out = []
    try:
        for v in range(views):
            loader = torch.utils.data.DataLoader(_SeededViews(dataset, v, seed), batch_size=batch_size,
                                                 num_workers=num_workers)
            out.append(torch.cat([backbone_features(model, to_input(x.to(device))).float().cpu() for x in loader]))
    finally:
        model.train(was_training)
    return torch.stack(out)


def backbone_digest(model: nn.Module) -> str:
    """Hash of every parameter and buffer outside ``fc``: the features depend on nothing else."""
    h = hashlib.sha1()
    for name, t in sorted(model.state_dict().items()):
        if not name.startswith("fc."):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def feature_cache_key(model: nn.Module, dataset, views: int, seed: int, to_input=None) -> str:
    h = hashlib.sha1(f"{backbone_digest(model)}|{dataset.decoder.key()}|{dataset.transform!r}|{to_input!r}|{views}|"
                     f"{seed}".encode())
    for s in dataset.samples:
        h.update(s.sha1.encode())
    return h.hexdigest()[:24]


def cached_features(model: nn.Module, dataset, views: int = 1, batch_size: int = 64, device="cpu", seed: int = 0,
                    cache_dir: str | Path | None = None, num_workers: int = 0, to_input=None) -> torch.Tensor:
    """``build_feature_cache`` persisted on disk: computed once under a file lock, then loaded."""
    root = cache_base(cache_dir) / "features"
    path = root / f"{feature_cache_key(model, dataset, views, seed, to_input)}.pt"
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path) + ".lock")
        lock.acquire()
    except OSError as e:  # read-only or full: compute them here, keep nothing
        cache_unwritable("feature", root, e)
        return build_feature_cache(model, dataset, views, batch_size, device, seed, num_workers, to_input)
    try:
        if path.is_file():
            return torch.load(path, map_location="cpu", weights_only=True)
        feats = build_feature_cache(model, dataset, views, batch_size, device, seed, num_workers, to_input)
        try:
            atomic_write(path, feats, kind="torch")
        except OSError as e:
            cache_unwritable("feature", root, e)
    finally:
        lock.release()
    return feats


class FeatureDataset(torch.utils.data.Dataset):
    """(feature, label, index) over cached features (views, N, D); ``set_epoch(e)`` picks view (e - 1) % views."""

    def __init__(self, features: torch.Tensor, samples):
        if features.dim() != 3 or features.shape[1] != len(samples):
            raise ValueError(f"features {tuple(features.shape)} do not match {len(samples)} samples")
        self.features, self.samples = features, samples
        self.labels = torch.tensor([s.label for s in samples])
        self.view = 0

    def set_epoch(self, epoch: int) -> None:
        self.view = (epoch - 1) % self.features.shape[0]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        return self.features[self.view, i], self.labels[i], i


def feature_loaders(model: nn.Module, data, cfg, device, first):
    """Loaders over cached backbone features of ``data``'s train (``cfg.model.feature_cache_views``
    augmented views) and val images, computed once per image view, then read from disk.

    ``data`` is a ``brainmri.data.datasets.TrainingData``; ``first()`` lets one process compute and
    save while the others wait and load its file. Returns ``(train FeatureDataset, train loader, val loader)``.
    """
    from brainmri.data.datasets import make_loader

    ebs = cfg.data.eval_batch_size or cfg.data.batch_size
    kw = {"batch_size": ebs, "device": device, "seed": cfg.seed, "cache_dir": cfg.data.cache_dir,
          "num_workers": cfg.data.num_workers, "to_input": data.normalize}
    with first():
        train = cached_features(model, data.datasets["train"], cfg.model.feature_cache_views, **kw)
        val = cached_features(model, data.datasets["val"], 1, **kw)
    features = FeatureDataset(train, data.split.train)
    return (features, make_loader(features, cfg.data.batch_size, 0, data.sampler),
            make_loader(FeatureDataset(val, data.split.val), ebs, 0))
