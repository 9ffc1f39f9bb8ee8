"""Data sources: a manifest (a CSV/TSV table of scans) or a folder layout, read into one list of rows.

``open_data(path)`` is the one entry point: a folder (``Training/<class>/*``, optional ``Testing/``,
or the class folders directly) or a manifest file (``.csv``, ``.tsv``, ``.txt``). Both become a
:class:`Source` — classes, readable samples, which part each is fixed to, and the skipped rows — so
training, the audit, evaluation and prediction read every data set through the same code.

A manifest has a header row; ``path`` is required, ``label`` too where labels are needed (training,
audit, evaluation). Optional columns: ``patient``, ``site``, ``split`` (``train``/``val``/``test``,
also ``Training``/``Testing`` and ``validation``; empty = the training pool); every other column is
kept as metadata (``Sample.meta``) and carried into predictions files. Paths are relative to the
manifest's folder, or absolute. ``classes`` fixes the class list and its order (else the sorted labels).

Bad rows are data, not crashes: a missing or unreadable file, an empty or unknown label, an unknown
split value, a duplicate path, a path listed under two labels, a patient in two split values — each
row is skipped and listed (row number, path, reason). No ``path``/``label`` column, an empty
manifest, fewer than two classes, or more than ``max_skipped_fraction`` of the rows failing is a
:class:`~brainmri.data.files.DataError` (one line naming the file). Files are hashed and decoded
once and kept in the file index (keyed by path, size and mtime), as the folder scan does. Torch-free.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brainmri.data.files import DataError, Sample, _index_path, index_files, resolve_splits_root, scan_folder

MANIFEST_SUFFIXES = (".csv", ".tsv", ".txt")
KNOWN_COLUMNS = ("path", "label", "patient", "site", "split")
SPLIT_VALUES = {"": "pool", "train": "train", "training": "train", "val": "val", "valid": "val",
                "validation": "val", "test": "test", "testing": "test"}
MAX_SKIPPED_FRACTION = 0.05


@dataclass
class Source:
    """What a data root or manifest holds: the readable samples and the part each is fixed to.

    ``parts[i]`` is ``pool`` (training pool: train/val drawn from it), ``train``, ``val`` or ``test``.
    ``root`` is the folder the split record's paths are relative to (the data root, or the manifest's
    folder); ``manifest`` the manifest file (None for a folder). ``rows``: data rows read (manifest).
    """

    root: Path
    classes: list[str]
    samples: list[Sample]
    parts: list[str]
    skipped: list[dict] = field(default_factory=list)
    manifest: Path | None = None
    columns: list[str] = field(default_factory=list)  # the manifest's header (None for a folder)
    rows: int = 0
    index_keys: list[Path] = field(default_factory=list)  # what its file index is kept under (files.file_index)

    def has(self, column: str) -> bool:
        return column in self.columns

    def column(self, name: str) -> list[str]:
        """Every sample's value of column ``name`` ('' when empty)."""
        if name == "patient":
            return [s.patient or "" for s in self.samples]
        if name == "site":
            return [s.site or "" for s in self.samples]
        if name == "label":
            return [self.classes[s.label] for s in self.samples]
        return [(s.meta or {}).get(name, "") for s in self.samples]

    @property
    def sites(self) -> list[str]:
        return sorted({s.site for s in self.samples if s.site})


def is_manifest(path: str | Path) -> bool:
    path = Path(path)
    return path.suffix.lower() in MANIFEST_SUFFIXES and not path.is_dir()


def open_data(path: str | Path, classes: list[str] | tuple[str, ...] | None = None,
              max_skipped_fraction: float = MAX_SKIPPED_FRACTION, labels: bool = True) -> Source:
    """The data at ``path``: a folder layout or a manifest file (see the module docstring).

    ``labels=False`` reads a manifest whose ``label`` column may be missing (prediction).
    """
    path = Path(path)
    if is_manifest(path):
        return read_manifest(path, classes, max_skipped_fraction, labels)
    if path.is_file():
        raise DataError(f"{path} is neither a data folder nor a manifest ({', '.join(MANIFEST_SUFFIXES)})")
    return read_folder(path, classes)


def read_folder(root: str | Path, classes: list[str] | tuple[str, ...] | None = None) -> Source:
    """``Training/<class>/*`` is the training pool and ``Testing/<class>/*`` the test part (the folder scan's rules)."""
    train_dir, test_dir = resolve_splits_root(root)
    found, samples, skipped = scan_folder(train_dir, list(classes) if classes else None)
    if not samples:
        raise DataError(f"no readable images under {train_dir}")
    parts = ["pool"] * len(samples)
    if test_dir is not None:
        _, test, test_skipped = scan_folder(test_dir, found)
        samples, parts, skipped = samples + test, parts + ["test"] * len(test), skipped + test_skipped
    return Source(Path(root), found, samples, parts, skipped,
                  index_keys=[d for d in (train_dir, test_dir) if d is not None])


def _dialect(path: Path, first: str) -> str:
    if path.suffix.lower() == ".tsv":
        return "\t"
    if path.suffix.lower() == ".csv":
        return ","
    return "\t" if "\t" in first else ","


def read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    """(header, data rows) of a manifest; a missing or empty file is a DataError."""
    if not path.is_file():
        raise DataError(f"manifest not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"manifest {path} cannot be read: {e}") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise DataError(f"manifest {path} is empty (expected a header row with path,label and one row per scan)")
    reader = csv.reader(lines, delimiter=_dialect(path, lines[0]))
    header = [h.strip().lower() for h in next(reader)]
    return header, list(reader)


def read_manifest(path: str | Path, classes: list[str] | tuple[str, ...] | None = None,
                  max_skipped_fraction: float = MAX_SKIPPED_FRACTION, labels: bool = True,
                  workers: int = 4) -> Source:
    """The rows of a manifest file that can be used, and the ones that cannot (see the module docstring)."""
    path = Path(path)
    header, rows = read_rows(path)
    _check_header(path, header, rows, labels)
    fixed = list(classes) if classes else None
    skipped: list[dict] = []

    def skip(row: int, p: str, reason: str) -> None:
        skipped.append({"row": row, "path": p, "error": reason})

    listed = _distinct_paths(_parse_rows(path, header, rows, fixed, labels, skip), skip)
    usable = _readable_files(path, _one_part_per_patient(listed, skip), workers, skip)
    total = sum(1 for values in rows if any(v.strip() for v in values))
    skipped.sort(key=lambda s: s["row"])
    if skipped and len(skipped) > max_skipped_fraction * total:
        first = skipped[0]
        raise DataError(f"manifest {path}: {len(skipped)} of {total} rows cannot be used ({len(skipped) / total:.1%}, "
                        f"more than data.max_skipped_fraction={max_skipped_fraction:g}); first: row {first['row']} "
                        f"{first['path'] or '(no path)'}: {first['error']}")
    names = _class_names(path, usable, fixed, labels)
    index_of = {c: i for i, c in enumerate(names)}
    samples = [Sample(r["path"], index_of.get(r["label"], -1), r["sha1"], row=r["row"], patient=r["patient"],
                      site=r["site"], meta=r["meta"] or None) for r in usable]
    return Source(path.parent, names, samples, [r["part"] for r in usable], skipped, path, header, total, [path])


Skip = Callable[[int, str, str], None]  # skip(row number, path as written, reason): the row is listed as skipped


def _check_header(path: Path, header: list[str], rows: list[list[str]], labels: bool) -> None:
    """A ``DataError`` when the manifest cannot be read at all: a required column missing, a column
    named twice, or no data rows."""
    required = ("path", "label") if labels else ("path",)
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"manifest {path} has no {' or '.join(missing)} column (header: {', '.join(header)}); "
                        f"required: {', '.join(required)}")
    if len(set(header)) != len(header):
        twice = next(c for c, n in Counter(header).items() if n > 1)
        raise DataError(f"manifest {path}: column {twice!r} appears twice in the header")
    if not rows:
        raise DataError(f"manifest {path} has a header but no rows")


def _parse_rows(path: Path, header: list[str], rows: list[list[str]], fixed: list[str] | None, labels: bool,
                skip: Skip) -> list[dict[str, Any]]:
    """Every data row as a dict (row number, path as written and resolved, label, part, patient, site,
    other columns as ``meta``); blank lines are passed over and rows with an empty path, an empty
    label or one outside ``fixed``, or an unknown split value are skipped. No file is touched."""
    col = {c: i for i, c in enumerate(header)}
    meta_cols = [c for c in header if c not in KNOWN_COLUMNS]
    base = path.parent
    width = len(header)
    at = {name: col.get(name, width) for name in KNOWN_COLUMNS}  # a missing column reads as the empty padding
    i_path, i_label, i_patient, i_site, i_split = (at[c] for c in KNOWN_COLUMNS)
    meta_at = [(c, col[c]) for c in meta_cols]
    parsed: list[dict[str, Any]] = []
    for n, values in enumerate(rows, start=2):  # line 1 is the header
        if len(values) <= width:
            values = values + [""] * (width + 1 - len(values))
        if not any(v.strip() for v in values):
            continue  # a blank line
        raw = values[i_path].strip()
        if not raw:
            skip(n, "", "empty path")
            continue
        full = os.path.normpath(raw if os.path.isabs(raw) else os.path.join(base, raw))
        label = values[i_label].strip()
        if labels and not label:
            skip(n, raw, "empty label")
            continue
        if labels and fixed is not None and label not in fixed:
            skip(n, raw, f"unknown label {label!r} (data.classes: {', '.join(fixed)})")
            continue
        split_value = values[i_split].strip()
        part = SPLIT_VALUES.get(split_value.lower())
        if part is None:
            skip(n, raw, f"unknown split value {split_value!r} (train, val, test, Training, Testing or empty)")
            continue
        parsed.append({"row": n, "raw": raw, "path": full, "label": label, "part": part,
                       "patient": values[i_patient].strip() or None, "site": values[i_site].strip() or None,
                       "meta": {c: values[i].strip() for c, i in meta_at}})
    return parsed


def _distinct_paths(parsed: list[dict[str, Any]], skip: Skip) -> list[dict[str, Any]]:
    """The first row of every file: a later row of the same file and label is skipped as a duplicate,
    and a file listed under two labels is skipped in every row (which label is right cannot be told)."""
    kept: list[dict[str, Any]] = []
    first_of: dict[str, dict[str, Any]] = {}  # resolved path → its first row
    for row in parsed:
        n, raw, label = row["row"], row["raw"], row["label"]
        first = first_of.get(row["path"])
        if first is None:
            first_of[row["path"]] = row
            kept.append(row)
        elif first["label"] != label:
            first["conflict"] = True
            skip(n, raw, f"listed under two labels: {first['label']!r} (row {first['row']}) and {label!r}")
        else:
            skip(n, raw, f"duplicate path (also row {first['row']})")
    for row in kept:
        if row.get("conflict"):
            skip(row["row"], row["raw"], f"listed under two labels (row {row['row']}: {row['label']!r}); "
                 "which is right cannot be told")
    return [r for r in kept if not r.get("conflict")]


def _one_part_per_patient(rows: list[dict[str, Any]], skip: Skip) -> list[dict[str, Any]]:
    """``rows`` less those of a patient in a split value other than the patient's first row's (skipped)."""
    part_of: dict[str, dict[str, Any]] = {}
    consistent: list[dict[str, Any]] = []
    for row in rows:
        if row["patient"] is not None:
            first = part_of.setdefault(row["patient"], row)
            if first["part"] != row["part"]:
                skip(row["row"], row["raw"], f"patient {row['patient']!r} is in split {_shown(first['part'])} "
                     f"(row {first['row']}) and {_shown(row['part'])}")
                continue
        consistent.append(row)
    return consistent


def _readable_files(path: Path, rows: list[dict[str, Any]], workers: int, skip: Skip) -> list[dict[str, Any]]:
    """``rows`` whose file is present and readable, each with its ``sha1``: files are hashed and decoded
    once and kept in the manifest's file index; a missing, unreadable or undecodable file is skipped."""
    present: list[dict[str, Any]] = []
    stats: list[os.stat_result] = []
    for row in rows:
        try:
            stats.append(os.stat(row["path"]))
            present.append(row)
        except OSError:
            skip(row["row"], row["raw"], "file not found" if not os.path.lexists(row["path"]) else "file unreadable")
    index = index_files([r["path"] for r in present], _index_path(path), workers, stats)
    usable: list[dict[str, Any]] = []
    for row in present:
        entry = index[row["path"]]
        if entry["error"]:
            skip(row["row"], row["raw"], f"unreadable: {entry['error']}")
        else:
            row["sha1"] = entry["sha1"]
            usable.append(row)
    return usable


def _class_names(path: Path, usable: list[dict[str, Any]], fixed: list[str] | None, labels: bool) -> list[str]:
    """The class list: ``fixed`` (``data.classes``) or the usable rows' sorted labels, at least two of
    them (a ``DataError`` otherwise); without labels, ``fixed`` or none."""
    if not labels:
        return list(fixed or [])
    names = fixed or sorted({r["label"] for r in usable})
    if len(names) < 2:
        raise DataError(f"manifest {path}: the usable rows hold {len(names)} label(s) ({', '.join(names)}); "
                        "a classifier needs at least two")
    return names


def _shown(part: str) -> str:
    return "(empty)" if part == "pool" else repr(part)


def manifest_sites(path: str | Path) -> list[str]:
    """The sites a manifest names (its ``site`` column, sorted), read without touching its files."""
    header, rows = read_rows(Path(path))
    if "site" not in header:
        raise DataError(f"manifest {path} has no site column (header: {', '.join(header)})")
    i = header.index("site")
    return sorted({r[i].strip() for r in rows if i < len(r) and r[i].strip()})


def manifest_inputs(path: str | Path) -> tuple[list[tuple[str, dict[str, str]]], list[dict]]:
    """(files with their row's other columns, skipped rows) of a manifest read for prediction: labels
    are optional and the files are not opened here (the predictor decodes and reports them)."""
    path = Path(path)
    header, rows = read_rows(path)
    if "path" not in header:
        raise DataError(f"manifest {path} has no path column (header: {', '.join(header)})")
    i = header.index("path")
    files, skipped, seen = [], [], set()
    for n, values in enumerate(rows, start=2):
        values = values + [""] * (len(header) - len(values))
        raw = values[i].strip()
        if not raw:
            if any(v.strip() for v in values):
                skipped.append({"row": n, "path": "", "error": "empty path"})
            continue
        full = os.path.normpath(raw if os.path.isabs(raw) else os.path.join(path.parent, raw))
        if full in seen:
            skipped.append({"row": n, "path": raw, "error": "duplicate path"})
            continue
        seen.add(full)
        files.append((full, {"row": str(n), **{c: values[k].strip() for k, c in enumerate(header) if k != i}}))
    if not files:
        raise DataError(f"manifest {path} lists no files")
    return files, skipped
