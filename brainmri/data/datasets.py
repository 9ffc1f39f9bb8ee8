"""Datasets and loaders: a run's split turned into the batches the engine reads.

The split itself (which files are train, val and test, and the run's ``split.json`` record) is
``brainmri.data.split``; its names are re-exported here. This module adds the class weights, the
dataset that decodes a sample (``brainmri.data.transforms``, or the decoded cache), the per-epoch
seeded augmentation and shuffle that make a resumed epoch see the same batches, the loaders, and
``build_training_data``, which puts them together for the engine (the embedded phantoms when no
data root is configured). Knows nothing about models or training.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from brainmri.data.files import DataError, Sample, is_dicom_file
from brainmri.data.split import PARTS, Split, build_split, manifest, nearest_training, split_groups, union_keys
from brainmri.data.transforms import Decoder

__all__ = [
    "PARTS", "EpochSampler", "EpochSeeded", "ImageDataset", "Split", "TrainingData", "build_split",
    "build_training_data", "class_weights", "make_loader", "manifest", "nearest_training", "resolve_data_root",
    "split_groups", "union_keys",
]


def class_weights(samples: list[Sample], num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights ``N / (K · n_c)`` from training counts."""
    counts = np.bincount([s.label for s in samples], minlength=num_classes).astype(np.float64)
    weights = counts.sum() / (num_classes * np.maximum(counts, 1))
    return torch.tensor(weights, dtype=torch.float32)


class ImageDataset(torch.utils.data.Dataset):
    """Samples → (image tensor, label, index). ``source`` turns a sample index into a uint8 tensor."""

    def __init__(self, samples: list[Sample], decoder: Decoder, transform, source=None):
        self.samples = samples
        self.decoder = decoder
        self.transform = transform
        self.source = source

    def __len__(self) -> int:
        return len(self.samples)

    def raw(self, i: int) -> torch.Tensor:
        return self.source(i) if self.source is not None else self.decoder(self.samples[i].path)

    def __getitem__(self, i: int):
        return self.transform(self.raw(i)), self.samples[i].label, i


class EpochSeeded(torch.utils.data.Dataset):
    """``dataset`` whose item i in epoch e draws its random augmentation from a seed fixed by (seed, e, i).

    The augmentation of an image then depends on nothing else (not on the loader's worker count, nor
    on what the main process drew before), so an epoch resumed half-way sees the same images.
    """

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    @property
    def samples(self):
        return self.dataset.samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        with torch.random.fork_rng(devices=[]):  # the caller's RNG stream is left as it was
            torch.manual_seed((self.seed * 1_000_003 + self.epoch * 100_019 + i * 7919 + 1) % (2**63))
            return self.dataset[i]


class EpochSampler(torch.utils.data.Sampler[int]):
    """Shuffle seeded by (seed, epoch): the order of any epoch is reproducible after a resume."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def make_loader(dataset, batch_size: int, num_workers: int, sampler=None, drop_last: bool = False):
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
    )


def resolve_data_root(cfg) -> Path:
    """The configured data root or manifest, or the embedded synthetic phantoms (generated once, under a lock)."""
    if cfg.data.manifest or cfg.data.root:
        return Path(cfg.data.manifest or cfg.data.root)
    from brainmri.data.phantoms import generate_phantoms

    s = cfg.data.synthetic
    root = Path(cfg.data.synthetic_dir) / f"n{s.n_per_class}-t{s.n_test_per_class}-px{s.render_size}-seed{s.seed}"
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root) + ".lock"):  # parallel sweep tasks share one copy
        generate_phantoms(root, n_per_class=s.n_per_class, n_test_per_class=s.n_test_per_class,
                          image_size=s.render_size, seed=s.seed)
    return root


@dataclass
class TrainingData:
    """Everything the engine reads data through: the split, datasets, seeded sampler and loaders."""

    root: Path
    split: Split
    datasets: dict[str, ImageDataset]
    sampler: EpochSampler
    train_seeded: EpochSeeded  # augmentation seeded per (seed, epoch, image)
    loaders: dict[str, torch.utils.data.DataLoader]  # train, val and (with a test split) test
    normalize: Callable[[torch.Tensor], torch.Tensor]  # uint8 batch → model input

    @property
    def classes(self) -> list[str]:
        return self.split.classes

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        self.train_seeded.set_epoch(epoch)


def build_training_data(cfg, first=contextlib.nullcontext) -> TrainingData:
    """Scan and split the data root, build the datasets (through the decoded cache if configured) and loaders.

    ``first()`` is a context manager under which one process builds what the others then read
    (``Accelerator.main_process_first``): the phantoms, the scan's index and the caches.
    """
    from brainmri.data.transforms import batch_normalizer, eval_transform, train_transform

    with first():  # rank 0 generates/indexes; the others then read its cache
        root = resolve_data_root(cfg)
        split = build_split(cfg.data, root)
    if not split.val:
        raise ValueError("data.val_fraction=0 leaves no validation split; the engine needs one")
    deep = any(is_dicom_file(s.path) for part in PARTS for s in getattr(split, part))
    if deep and {"trivialaugment", "randaugment"} & set(cfg.data.augment):
        raise DataError(f"data.augment={list(cfg.data.augment)}: trivialaugment and randaugment work on 8-bit images; "
                        "the data holds DICOM slices decoded at full precision: choose other augmentations")
    # size, channels, head crop, background, DICOM window; with DICOM every image decodes to uint16
    decoder = Decoder.from_config(cfg.data, deep)
    sources = {}
    if cfg.data.cache == "decoded":
        from brainmri.data.cache import DecodedCache

        with first():
            sources = {part: DecodedCache.build_or_none(getattr(split, part), decoder, cfg.data.cache_dir)
                       for part in PARTS if getattr(split, part)}
    datasets = {part: ImageDataset(getattr(split, part), decoder,
                                   train_transform(cfg.data) if part == "train" else eval_transform(cfg.data),
                                   sources.get(part)) for part in PARTS}
    sampler = EpochSampler(len(split.train), cfg.seed)
    seeded = EpochSeeded(datasets["train"], cfg.seed)
    bs, ebs = cfg.data.batch_size, cfg.data.eval_batch_size or cfg.data.batch_size
    loaders = {"train": make_loader(seeded, bs, cfg.data.num_workers, sampler),
               "val": make_loader(datasets["val"], ebs, cfg.data.num_workers)}
    if split.test:
        loaders["test"] = make_loader(datasets["test"], ebs, cfg.data.num_workers)
    return TrainingData(Path(root), split, datasets, sampler, seeded, loaders, batch_normalizer(cfg.data))
