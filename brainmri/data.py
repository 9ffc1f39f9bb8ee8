"""Datasets: folder scan, bad-file report, near-duplicate-grouped stratified split, loaders.

Layout: ``<root>/Training/<class>/*.jpg`` and optionally ``<root>/Testing/<class>/*.jpg``
(a root that holds the class folders directly is also accepted). Every file is fully decoded once
at scan time so unreadable or truncated images are reported before training starts, never
mid-epoch; the result is kept in a small index keyed by path, size and mtime.
Knows nothing about models or training.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from brainmri.cache import cache_base
from brainmri.leakage import BANDS, fingerprints, group_keys, nearest
from brainmri.transforms import Decoder, load_pil

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


class DataError(ValueError):
    """The data directory is missing or malformed; the message names the path."""


@dataclass
class Sample:
    path: str
    label: int
    sha1: str
    # val/test samples: the most similar training image, its coarse similarity and the band
    # (brainmri.leakage.BANDS); None for training samples
    nearest_train: str | None = None
    similarity: float | None = None
    band: str | None = None


@dataclass
class Split:
    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    group_by: str = "near"
    groups: int = 0  # groups the train/val split was drawn over


def _index_path(root: Path) -> Path:
    cache = cache_base()
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
    return cache / "index" / f"{digest}.json"


def _check_file(path: Path) -> dict:
    """Hash the bytes and fully decode the image; return its index entry."""
    stat = path.stat()
    entry = {"size": stat.st_size, "mtime": stat.st_mtime_ns}
    entry["sha1"] = hashlib.sha1(path.read_bytes()).hexdigest()
    try:
        load_pil(path, 1)
        entry["error"] = None
    except Exception as e:  # PIL raises many types for broken files
        entry["error"] = f"{type(e).__name__}: {e}"
    return entry


def _scan_split_dir(split_dir: Path, classes: list[str] | None, workers: int = 4):
    if not split_dir.is_dir():
        raise DataError(f"data directory not found: {split_dir}")
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is None:
        classes = found
    if not classes:
        raise DataError(f"no class folders in {split_dir} (expected {split_dir}/<class>/*.jpg)")
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        class_dir = split_dir / name
        images = []
        if class_dir.is_dir():
            images = sorted(
                p for p in class_dir.iterdir()
                if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
            )
        if not images:
            raise DataError(f"class folder has no images: {class_dir}")
        files += [(p, label) for p in images]

    index_file = _index_path(split_dir)
    try:
        index = json.loads(index_file.read_text())
    except (OSError, ValueError):
        index = {}
    todo = []
    for path, _ in files:
        entry = index.get(str(path))
        stat = path.stat()
        if not entry or entry["size"] != stat.st_size or entry["mtime"] != stat.st_mtime_ns:
            todo.append(path)
    if todo:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for path, entry in zip(todo, pool.map(_check_file, todo)):
                index[str(path)] = entry
        index_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = index_file.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(index))
        os.replace(tmp, index_file)

    samples, skipped = [], []
    for path, label in files:
        entry = index[str(path)]
        if entry["error"]:
            skipped.append({"path": str(path), "error": entry["error"]})
        else:
            samples.append(Sample(str(path), label, entry["sha1"]))
    return classes, samples, skipped


def resolve_splits_root(root: str | Path) -> tuple[Path, Path | None]:
    """Return (training dir, testing dir or None) for a data root."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data directory not found: {root}")
    train_dir = root / "Training"
    if not train_dir.is_dir():
        return root, None
    test_dir = root / "Testing"
    return train_dir, test_dir if test_dir.is_dir() else None


def split_groups(samples: list[Sample], val_fraction: float, seed: int,
                 keys: list[str] | None = None) -> tuple[list[Sample], list[Sample]]:
    """Stratified train/val split in which the samples of one group always land on the same side.

    ``keys`` names each sample's group (default: its content hash, so byte-identical files stay
    together; ``brainmri.leakage.group_keys`` gives near-duplicate groups). A group's label for
    stratification is its most common label.
    """
    if val_fraction <= 0:
        return list(samples), []
    groups: dict[str, list[Sample]] = {}
    for s, k in zip(samples, keys or [s.sha1 for s in samples]):
        groups.setdefault(k, []).append(s)
    keys = sorted(groups)
    labels = [int(np.bincount([s.label for s in groups[k]]).argmax()) for k in keys]
    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 2 else None
    train_keys, val_keys = train_test_split(keys, test_size=val_fraction, random_state=seed, stratify=stratify)
    pick = lambda ks: sorted((s for k in ks for s in groups[k]), key=lambda s: s.path)  # noqa: E731
    return pick(train_keys), pick(val_keys)


def build_split(data_cfg, root: str | Path) -> Split:
    """Scan ``root`` and split Training into train/val; Testing (if present) is the test split."""
    train_dir, test_dir = resolve_splits_root(root)
    classes, samples, skipped = _scan_split_dir(train_dir, None)
    if not samples:
        raise DataError(f"no readable images under {train_dir}")
    test: list[Sample] = []
    if test_dir is not None:
        _, test, test_skipped = _scan_split_dir(test_dir, classes)
        skipped += test_skipped
    # one fingerprint per image, used both for the groups and for the nearest-training search
    fp = fingerprints([s.path for s in samples + test], data_cfg.cache_dir)
    row = {s.path: i for i, s in enumerate(samples + test)}
    group_by = getattr(data_cfg, "group_by", "near")
    keys = group_keys(fp[:len(samples)], [s.sha1 for s in samples], group_by)
    train, val = split_groups(samples, data_cfg.val_fraction, data_cfg.split_seed, keys)
    # Every held-out image carries its nearest training image: metrics by band say how a model
    # does on images unlike anything it trained on (nothing is dropped).
    annotate_nearest(train, val + test, lambda part: fp[[row[s.path] for s in part]])
    return Split(classes, train, val, test, skipped, group_by, len(set(keys)))


def annotate_nearest(train: list[Sample], held_out: list[Sample], fingerprints_of) -> None:
    """Set ``nearest_train``, ``similarity`` and ``band`` on each held-out sample.

    ``fingerprints_of(samples)`` returns their ``brainmri.leakage`` fingerprints, row-aligned.
    """
    if not held_out:
        return
    near = nearest(fingerprints_of(train), [s.sha1 for s in train], fingerprints_of(held_out),
                   [s.sha1 for s in held_out])
    for s, idx, sim, band in zip(held_out, near.index, near.coarse, near.band):
        s.nearest_train = train[idx].path if idx >= 0 else None
        s.similarity = round(float(sim), 4) if idx >= 0 else None
        s.band = BANDS[band]


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


def scan_folder(split_dir: str | Path, classes: list[str] | None = None) -> tuple[list[str], list[Sample], list[dict]]:
    """``(classes, samples, skipped)`` of one ``<dir>/<class>/*`` folder, with the loader's rules.

    With ``classes`` the labels follow that order (a missing or empty class folder is a ``DataError``).
    """
    return _scan_split_dir(Path(split_dir), classes)
