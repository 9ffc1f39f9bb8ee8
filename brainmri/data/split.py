"""The split: which images a run trains, validates and tests on, and the run's record of it.

Owns ``build_split``: the test part (a folder's ``Testing/``, a manifest's ``split`` column, or a
held-out site), the groups a split never cuts (near-duplicates from ``brainmri.data.leakage``, a
manifest column such as ``patient``, or both), one grouped stratified train/val split or K grouped
stratified folds (scikit-learn, imported only when its answer is not remembered under the cache
folder), and each held-out image's nearest training image. :class:`Split` is the result and the
run's ``split.json`` record: every file of every part with its manifest hashes, read back without
scanning the data root. Data is read through ``brainmri.data.manifest.open_data``. Torch-free;
knows nothing about datasets, loaders or models (``brainmri.data.datasets``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brainmri.config import group_by_parts
from brainmri.data.files import DataError, Sample, file_index
from brainmri.data.leakage import BANDS, describe_thresholds, fingerprints, group_keys, nearest
from brainmri.data.manifest import Source, open_data

PARTS = ("train", "val", "test")


@dataclass
class Split:
    """The train/val/test samples of one run, and what the run's split record holds of them.

    ``record()`` lists every file (path relative to ``root``, content hash, label, group; val and
    test also their nearest training image and band; with folds, every training-pool file its
    fold) with a manifest hash per part;
    ``Split.from_record`` rebuilds the split from that record without scanning the data root, and
    ``check_unchanged`` says in one line when files listed there are gone or differ.
    """

    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    group_by: str = "near"
    groups: int = 0  # groups the train/val split was drawn over
    root: str | None = None  # the data root the paths are relative to
    group_of: dict[str, int] = field(default_factory=dict)  # training-image path → group number
    folds: int | None = None  # K of a K-fold split (None: one train/val split)
    fold: int | None = None  # the fold that is the validation part
    fold_of: dict[str, int] = field(default_factory=dict)  # training-pool path → its fold (K-fold only)
    source: str | None = None  # the manifest file (None: a folder layout)
    test_site: str | None = None  # the site held out as the test part (data.test_site)

    @property
    def sites(self) -> list[str]:
        return sorted({s.site for part in PARTS for s in getattr(self, part) if s.site})

    def _rel(self, path: str) -> str:
        return os.path.relpath(path, self.root) if self.root else path

    def _rows(self, part: str) -> list[dict]:
        rows = []
        for s in getattr(self, part):
            row = {"path": self._rel(s.path), "sha1": s.sha1, "label": self.classes[s.label]}
            row.update({k: v for k, v in (("row", s.row), ("patient", s.patient), ("site", s.site)) if v is not None})
            if s.path in self.group_of:
                row["group"] = self.group_of[s.path]
            if s.path in self.fold_of:
                row["fold"] = self.fold_of[s.path]
            if part != "train":
                row.update(nearest_train=self._rel(s.nearest_train) if s.nearest_train else None,
                           similarity=s.similarity, band=s.band)
            rows.append(row)
        return rows

    def record(self) -> dict:
        """The run's split record (``RunDir.write_split``): counts, bands, the manifest and every file of every part."""
        files = {part: self._rows(part) for part in PARTS}
        return {
            "data_root": str(self.root), "classes": self.classes,
            **{part: len(getattr(self, part)) for part in PARTS},
            "group_by": self.group_by, "groups": self.groups, "folds": self.folds, "fold": self.fold,
            "bands": {part: dict(Counter(s.band for s in getattr(self, part))) for part in ("val", "test")},
            "manifest": manifest(files), "files": files,
            **({"source": self.source} if self.source else {}),
            **({"test_site": self.test_site} if self.test_site is not None else {}),
            **({"sites": self.sites} if self.sites else {}),
        }

    @classmethod
    def from_record(cls, record: dict, root: str | Path | None = None) -> Split:
        """The split a split record describes, with paths under ``root`` (default: its own root)."""
        if "files" not in record:
            raise DataError("the run's split record lists no files (written by an older brainmri); retrain it")
        root = Path(root or record["data_root"])
        classes = list(record["classes"])
        index = {c: i for i, c in enumerate(classes)}
        parts, group_of, fold_of = {}, {}, {}
        for part in PARTS:
            samples = []
            for row in record["files"].get(part, []):
                s = Sample(str(root / row["path"]), index[row["label"]], row["sha1"], row=row.get("row"),
                           patient=row.get("patient"), site=row.get("site"))
                if part != "train":
                    s.nearest_train = str(root / row["nearest_train"]) if row.get("nearest_train") else None
                    s.similarity, s.band = row.get("similarity"), row.get("band")
                if "group" in row:
                    group_of[s.path] = row["group"]
                if "fold" in row:
                    fold_of[s.path] = row["fold"]
                samples.append(s)
            parts[part] = samples
        return cls(classes, parts["train"], parts["val"], parts["test"], [], record.get("group_by", "near"),
                   record.get("groups", 0), str(root), group_of, record.get("folds"), record.get("fold"), fold_of,
                   record.get("source"), record.get("test_site"))

    def changed_files(self, parts=PARTS) -> tuple[list[str], list[str]]:
        """(missing, different) files of ``parts``: sizes and mtimes checked against the scan's index,
        content hashed where the index cannot vouch for a file."""
        missing, different = [], []
        indices: dict[Path, dict] = {}
        for part in parts:
            for s in getattr(self, part):
                path = Path(s.path)
                try:
                    st = path.stat()
                except OSError:
                    missing.append(s.path)
                    continue
                folder = Path(self.source) if self.source else path.parent.parent  # a manifest's index, or the folder's
                if folder not in indices:
                    indices[folder] = file_index(folder)
                entry = indices[folder].get(s.path)
                if entry and entry.get("size") == st.st_size and entry.get("mtime") == st.st_mtime_ns:
                    digest = entry.get("sha1")
                else:
                    digest = hashlib.sha1(path.read_bytes()).hexdigest()
                if digest != s.sha1:
                    different.append(s.path)
        return missing, different

    def check_unchanged(self, parts=PARTS) -> None:
        """A ``DataError`` (one line) when files the record lists are missing or differ."""
        missing, different = self.changed_files(parts)
        if missing or different:
            example = (missing or different)[0]
            raise DataError(f"the data under {self.root} changed since training: {len(missing)} file(s) missing, "
                            f"{len(different)} differ (e.g. {example})")


def manifest(files: dict[str, list[dict]]) -> dict[str, str]:
    """SHA-256 digests of the listed files: per part (relative path + content hash), ``all`` (the
    parts together, so it changes with the split) and ``data`` (every file whatever its part: the
    same for every split, fold and recipe over the same data)."""
    out, total = {}, hashlib.sha256()
    for part in PARTS:
        h = hashlib.sha256()
        for row in sorted(files.get(part, []), key=lambda r: r["path"]):
            line = f"{part}\t{row['path']}\t{row['sha1']}\n".encode()
            h.update(line)
            total.update(line)
        out[part] = h.hexdigest()
    out["all"] = total.hexdigest()
    data = hashlib.sha256()
    for row in sorted((r for rows in files.values() for r in rows), key=lambda r: r["path"]):
        data.update(f"{row['path']}\t{row['sha1']}\n".encode())
    out["data"] = data.hexdigest()
    return out


def _remembered(kind: str, inputs: list, cache_dir, compute: Callable[[], list],
                library: str = "scikit-learn") -> list:
    """``compute()``, remembered on disk under the cache folder by a digest of ``inputs`` (and the
    version of the ``library`` that computes it): every run on the same data and settings (a sweep's
    tasks, a resume) reads the same answer back instead of importing scikit-learn or SciPy (about a
    second) to recompute it."""
    from importlib.metadata import version

    from brainmri.atomic import atomic_write
    from brainmri.data.cachedir import cache_base, cache_unwritable

    digest = hashlib.sha256(json.dumps([kind, version(library), *inputs]).encode()).hexdigest()[:32]
    path = cache_base(cache_dir) / "splits" / f"{kind}-{digest}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    result = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(result))
    except OSError as exc:
        cache_unwritable("split", path.parent, exc)
    return result


def split_groups(samples: list[Sample], val_fraction: float, seed: int,
                 keys: list[str] | None = None, cache_dir=None) -> tuple[list[Sample], list[Sample]]:
    """Stratified train/val split in which the samples of one group always land on the same side.

    ``keys`` names each sample's group (default: its content hash, so byte-identical files stay
    together; ``brainmri.data.leakage.group_keys`` gives near-duplicate groups). A group's label for
    stratification is its most common label. scikit-learn's ``train_test_split`` over the groups.
    """
    if val_fraction <= 0:
        return list(samples), []
    groups: dict[str, list[Sample]] = {}
    for s, k in zip(samples, keys or [s.sha1 for s in samples], strict=True):
        groups.setdefault(k, []).append(s)
    keys = sorted(groups)
    labels = [int(np.bincount([s.label for s in groups[k]]).argmax()) for k in keys]
    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 2 else None

    def val_groups() -> list:
        from sklearn.model_selection import train_test_split

        return list(train_test_split(keys, test_size=val_fraction, random_state=seed, stratify=stratify)[1])

    val_keys = set(_remembered("val-groups", [keys, labels, stratify is not None, val_fraction, seed], cache_dir,
                               val_groups))
    pick = lambda ks: sorted((s for k in ks for s in groups[k]), key=lambda s: s.path)  # noqa: E731
    return pick([k for k in keys if k not in val_keys]), pick(sorted(val_keys))


def fold_numbers(samples: list[Sample], folds: int, seed: int, keys: list[str] | None = None,
                 cache_dir=None) -> list[int]:
    """The fold (0..folds-1) of every sample: scikit-learn's ``StratifiedGroupKFold`` (shuffled, seeded)
    over the groups ``keys`` name (default: content hashes), so one group lies in one fold.

    The assignment depends on the samples (their order, labels and groups), ``folds`` and ``seed``
    only: every recipe trained on the same data gets the same folds. Fewer groups than folds is a
    ``DataError``.
    """
    keys = keys or [s.sha1 for s in samples]
    n_groups = len(set(keys))
    if n_groups < folds:
        raise DataError(f"data.folds={folds}: the training images form only {n_groups} group(s) "
                        f"(data.group_by); use fewer folds")
    labels = [s.label for s in samples]

    def assign() -> list:
        from sklearn.model_selection import StratifiedGroupKFold

        cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        out = np.full(len(samples), -1)
        for i, (_, val_idx) in enumerate(cv.split(np.zeros(len(samples)), labels, keys)):
            out[val_idx] = i
        return out.tolist()

    return _remembered("folds", [keys, labels, folds, seed], cache_dir, assign)


def open_source(data_cfg, root: str | Path, labels: bool = True) -> Source:
    """The data at ``root`` (a folder or a manifest file) with the config's class list and bad-row limit."""
    return open_data(root, getattr(data_cfg, "classes", None) or None,
                     getattr(data_cfg, "max_skipped_fraction", 0.05), labels)


def column_keys(source: Source, picked: list[int], column: str) -> list[str]:
    """Group keys from a manifest column (a row with it empty is a group of its own, by content hash)."""
    if column != "label" and not source.has(column):
        where = f"manifest {source.manifest}" if source.manifest else f"the folder {source.root} (no manifest)"
        raise DataError(f"data.group_by={column}: {where} has no column {column!r}"
                        + (f" (columns: {', '.join(source.columns)})" if source.columns else ""))
    values = source.column(column)
    return [f"{column}={values[i]}" if values[i] else f"sha1={source.samples[i].sha1}" for i in picked]


def union_keys(a: list[str], b: list[str]) -> list[str]:
    """Keys whose groups are the connected components of two groupings (a pair sharing either key is joined);
    a component is named after its first row."""
    import numpy as np
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rows: list[int] = []
    cols: list[int] = []
    for keys in (a, b):
        first: dict[str, int] = {}
        for i, k in enumerate(keys):
            rows.append(i)
            cols.append(first.setdefault(k, i))
    n = len(a)
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    first_row: dict[int, int] = {}
    for i, c in enumerate(component.tolist()):
        first_row.setdefault(c, i)
    return [f"g{first_row[c]}" for c in component.tolist()]


def build_split(data_cfg, root: str | Path) -> Split:
    """Read the data at ``root`` (folder or manifest, ``brainmri.data.manifest``) and split it.

    The test part: the ``split`` column's test rows (a folder's ``Testing/``), or with
    ``data.test_site`` every row of that site. The validation part: the ``split`` column's val rows
    if any; else, with ``data_cfg.folds = K``, fold ``data_cfg.fold`` of K grouped, stratified folds
    of the training pool (``fold_numbers``); else one grouped, stratified split of ``val_fraction``.
    Groups (``data.group_by``): near-duplicates, a manifest column such as ``patient``, or both.
    """
    source = open_source(data_cfg, root)
    samples, classes, skipped = source.samples, source.classes, list(source.skipped)
    test_site = getattr(data_cfg, "test_site", None)
    parts = list(source.parts) if test_site is None else _hold_out_site(source, test_site, skipped)
    folds = getattr(data_cfg, "folds", None)
    if folds:  # the folds cut the whole training pool, fixed val rows included
        parts = ["pool" if p == "val" else p for p in parts]
    pool_at = [i for i, p in enumerate(parts) if p in ("pool", "train")]
    if not pool_at:
        raise DataError(f"no training rows in {source.manifest or source.root} (every usable row is val or test)")
    pool = [samples[i] for i in pool_at]
    fixed_val = [s for s, p in zip(samples, parts, strict=True) if p == "val"]
    test = [s for s, p in zip(samples, parts, strict=True) if p == "test"]
    # one fingerprint per image, used both for the groups and for the nearest-training search
    listed = pool + fixed_val + test
    fp = fingerprints([s.path for s in listed], data_cfg.cache_dir)
    row = {s.path: i for i, s in enumerate(listed)}
    group_by = getattr(data_cfg, "group_by", "near")
    keys = _pool_group_keys(source, pool_at, fp[:len(pool)], group_by, data_cfg.cache_dir)
    train, val, fold_of = _train_and_val(data_cfg, pool, fixed_val, keys)
    # Every held-out image carries its nearest training image: metrics by band say how a model
    # does on images unlike anything it trained on (nothing is dropped).
    annotate_nearest(train, val + test, lambda part: fp[[row[s.path] for s in part]])
    numbers = {k: i for i, k in enumerate(sorted(set(keys)))}
    group_of = {s.path: numbers[k] for s, k in zip(pool, keys, strict=True)}
    split = Split(classes, train, val, test, skipped, group_by, len(numbers), str(source.root), group_of,
                  folds or None, data_cfg.fold if folds else None, fold_of)
    split.source = str(source.manifest) if source.manifest else None
    split.test_site = test_site
    return split


def _hold_out_site(source: Source, test_site: str, skipped: list[dict]) -> list[str]:
    """Every sample's part with the site ``test_site`` held out (``data.test_site``).

    That site's rows are the test part, the other sites' ``val`` rows stay val and the rest is the
    training pool. A patient also seen at the held-out site is never trained on: its other rows are
    ``skip`` and listed in ``skipped``. A manifest without sites, or without that site, is a ``DataError``.
    """
    samples = source.samples
    sites = source.sites
    if not sites:
        raise DataError(f"data.test_site={test_site}: {source.manifest or source.root} has no site column")
    if test_site not in sites:
        raise DataError(f"data.test_site={test_site}: no such site in {source.manifest} "
                        f"(sites: {', '.join(sites)})")
    parts = ["test" if s.site == test_site else ("val" if p == "val" else "pool")
             for s, p in zip(samples, source.parts, strict=True)]
    held = {s.patient for s, p in zip(samples, parts, strict=True) if p == "test" and s.patient}
    for i, s in enumerate(samples):  # a patient of the held-out site is never trained on
        if parts[i] != "test" and s.patient in held:
            skipped.append({"row": s.row, "path": s.path, "error": f"patient {s.patient!r} is also at the "
                            f"held-out site {test_site!r}: left out of train/val"})
            parts[i] = "skip"
    return parts


def _pool_group_keys(source: Source, pool_at: list[int], pool_fp: np.ndarray, group_by: str,
                     cache_dir=None) -> list[str]:
    """The group of every training-pool sample (``source.samples[i]`` for ``i`` in ``pool_at``), by ``data.group_by``.

    Near-duplicate groups of the band it names (``brainmri.data.leakage.group_keys`` over the pool's
    fingerprints ``pool_fp``), groups of the manifest column it names (``column_keys``), or, when it
    names both, the two joined (``union_keys``). The near-duplicate groups of images grouped before (by
    their content hashes, the band and the fingerprint's thresholds) are read back from the cache.
    """
    column, band = group_by_parts(group_by)
    keys = None
    if band:
        sha1 = [source.samples[i].sha1 for i in pool_at]
        keys = _remembered("near-groups", [sha1, band, describe_thresholds()], cache_dir,
                           lambda: group_keys(pool_fp, sha1, band), library="scipy")
    if column is not None:
        by_column = column_keys(source, pool_at, column)
        keys = union_keys(by_column, keys) if keys is not None else by_column
    assert keys is not None
    return keys


def _train_and_val(data_cfg, pool: list[Sample], fixed_val: list[Sample],
                   keys: list[str]) -> tuple[list[Sample], list[Sample], dict[str, int]]:
    """(train, val, fold of every pool image's path) of a run, drawn over the groups ``keys`` name.

    With ``data.folds = K``: fold ``data.fold`` of the pool's K folds is val (``fold_numbers``). Else the
    manifest's fixed val rows ``fixed_val`` if there are any, the whole pool training; else one
    split of ``data.val_fraction`` (``split_groups``). The fold map is empty without folds.
    """
    folds = getattr(data_cfg, "folds", None)
    if folds:
        assigned = fold_numbers(pool, folds, data_cfg.split_seed, keys, data_cfg.cache_dir)
        fold_of = {s.path: f for s, f in zip(pool, assigned, strict=True)}
        return ([s for s in pool if fold_of[s.path] != data_cfg.fold],
                [s for s in pool if fold_of[s.path] == data_cfg.fold], fold_of)
    if fixed_val:
        return pool, fixed_val, {}
    train, val = split_groups(pool, data_cfg.val_fraction, data_cfg.split_seed, keys, data_cfg.cache_dir)
    return train, val, {}


def annotate_nearest(train: list[Sample], held_out: list[Sample], fingerprints_of) -> None:
    """Set ``nearest_train``, ``similarity`` and ``band`` on each held-out sample.

    ``fingerprints_of(samples)`` returns their ``brainmri.data.leakage`` fingerprints, row-aligned.
    """
    if held_out:
        nearest_training([s.path for s in train], [s.sha1 for s in train], fingerprints_of(train),
                         held_out, fingerprints_of(held_out))


def nearest_training(train_paths: list[str], train_sha1: list[str], train_fp: np.ndarray,
                     samples: list[Sample], sample_fp: np.ndarray) -> None:
    """The one nearest-training annotation: each sample's most similar training image, its coarse
    similarity and its band (``brainmri.data.leakage.BANDS``), set on the sample."""
    if not samples:
        return
    near = nearest(train_fp, train_sha1, sample_fp, [s.sha1 for s in samples])
    for s, idx, sim, band in zip(samples, near.index, near.coarse, near.band, strict=True):
        s.nearest_train = train_paths[idx] if idx >= 0 else None
        s.similarity = round(float(sim), 4) if idx >= 0 else None
        s.band = BANDS[band]
