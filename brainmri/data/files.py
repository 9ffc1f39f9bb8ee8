"""Image files: which files a data folder holds, the loader's rules for them, and decoding to PIL.

The rules every reader of a data root shares (training's loader, the audit, prediction): image
extensions, hidden files and non-image junk ignored, class folders sorted by name, every file fully
decoded once so unreadable or truncated images are listed instead of failing later, the result kept
in a small index keyed by path, size and mtime. Torch-free, so tools that only look at files (the
audit) start quickly.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from brainmri.atomic import atomic_write
from brainmri.data.cachedir import cache_base, cache_unwritable
from brainmri.data.dicom import DICOM_EXTENSIONS, DicomError, dicom_values, is_dicom, read_dicom
from brainmri.data.preprocess import load_grey

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
SCANNED_EXTENSIONS = IMAGE_EXTENSIONS | DICOM_EXTENSIONS  # what a class folder's scan picks up


class DataError(ValueError):
    """The data directory is missing or malformed; the message names the path."""


@dataclass
class Sample:
    path: str
    label: int
    sha1: str
    # val/test samples: the most similar training image, its coarse similarity and the band
    # (brainmri.data.leakage.BANDS); None for training samples
    nearest_train: str | None = None
    similarity: float | None = None
    band: str | None = None
    # manifest rows (brainmri.data.manifest): the row number, patient, site and the other columns
    row: int | None = None
    patient: str | None = None
    site: str | None = None
    meta: dict[str, str] | None = None


def is_dicom_file(path: str | Path) -> bool:
    """A DICOM slice (by extension or by its marker; an image extension is never DICOM)."""
    return Path(path).suffix.lower() not in IMAGE_EXTENSIONS and is_dicom(path)


def load_pil(path: str | Path, channels: int) -> Image.Image:
    """Open any PIL-readable image (L, RGB, RGBA, CMYK, P, I;16 …) as L (channels=1) or RGB.

    MRI slices are grey-scale, so RGB/CMYK inputs are reduced to luminance first and then
    repeated to 3 channels: every file reaches the model in the same colour space.
    """
    gray = read_dicom(path) if is_dicom_file(path) else load_grey(path)  # as an exported model's preprocess.py
    return gray if channels == 1 else gray.convert("RGB")


def thumbnail(path: str | Path, px: int) -> Image.Image | None:
    """A grey-scale image no larger than ``px`` on its longest side; None if the file is unreadable."""
    try:
        img = load_grey(path)
        img.thumbnail((px, px))
        return img
    except (OSError, ValueError):
        return None


def thumbnail_uri(path: str | Path, px: int, fmt: str = "PNG") -> str:
    """:func:`thumbnail` as a ``data:`` URI (PNG, or JPEG at quality 85), for pages that must open
    anywhere; '' when the file is unreadable."""
    img = thumbnail(path, px)
    if img is None:
        return ""
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def _index_path(root: Path) -> Path:
    cache = cache_base()
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
    return cache / "index" / f"{digest}.json"


def _check_file(path: Path) -> dict:
    """Hash the bytes and fully decode the image; return its index entry."""
    stat = path.stat()
    entry: dict[str, Any] = {"size": stat.st_size, "mtime": stat.st_mtime_ns}
    entry["sha1"] = hashlib.sha1(path.read_bytes()).hexdigest()
    try:
        if is_dicom_file(path):
            values = dicom_values(path)  # full decode: multi-frame, no pixels, unreadable → error
            entry["dims"], entry["mode"], entry["error"] = [values.shape[1], values.shape[0]], "DICOM", None
            return entry
        with Image.open(path) as img:
            entry["dims"], entry["mode"] = list(img.size), img.mode
        load_pil(path, 1)
        entry["error"] = None
    except DicomError as e:  # its message says what is wrong in one line
        entry["error"] = str(e)
    except Exception as e:  # PIL raises many types for broken files
        entry["error"] = f"{type(e).__name__}: {e}"
    return entry


def scan_folder(split_dir: str | Path, classes: list[str] | None = None,
                workers: int = 4) -> tuple[list[str], list[Sample], list[dict]]:
    """``(classes, samples, skipped)`` of one ``<dir>/<class>/*`` folder, with the loader's rules.

    With ``classes`` the labels follow that order (a missing or empty class folder is a ``DataError``).
    Every file is decoded once and indexed (size, mtime, sha1, dims, mode, error) in the cache, so a
    rescan only reads files that changed.
    """
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DataError(f"data directory not found: {split_dir}")
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is None:
        classes = found
    if not classes:
        raise DataError(f"no class folders in {split_dir} (expected {split_dir}/<class>/*.jpg)")
    if len(classes) < 2:
        raise DataError(f"{split_dir} holds one class folder ({classes[0]}); a classifier needs at least two "
                        f"(expected {split_dir}/<class>/*.jpg for each class)")
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        class_dir = split_dir / name
        images = []
        if class_dir.is_dir():
            images = sorted(
                p for p in class_dir.iterdir()
                if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in SCANNED_EXTENSIONS
            )
        if not images:
            raise DataError(f"class folder has no images: {class_dir}")
        files += [(p, label) for p in images]

    index = index_files([p for p, _ in files], _index_path(split_dir), workers)
    samples, skipped = [], []
    for path, label in files:
        entry = index[str(path)]
        if entry["error"]:
            skipped.append({"path": str(path), "error": entry["error"]})
        else:
            samples.append(Sample(str(path), label, entry["sha1"]))
    return classes, samples, skipped


def index_files(paths: Sequence[Path | str], index_file: Path, workers: int = 4,
                stats: list | None = None) -> dict[str, dict]:
    """Index entries (size, mtime, sha1, dims, mode, error) of ``paths``, kept in ``index_file``: a file
    whose size and mtime are unchanged is not read again. ``stats`` (``os.stat`` results, row-aligned)
    saves stating the files a second time."""
    try:
        index = json.loads(index_file.read_text())
    except (OSError, ValueError):
        index = {}
    todo: list[Path | str] = []
    for k, path in enumerate(paths):
        entry = index.get(path if isinstance(path, str) else str(path))
        stat = stats[k] if stats is not None else os.stat(path)
        if (not entry or entry["size"] != stat.st_size or entry["mtime"] != stat.st_mtime_ns
                or ("mode" not in entry and not entry["error"])):
            todo.append(path)
    if todo:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for path, entry in zip(todo, pool.map(_check_file, [Path(p) for p in todo]), strict=True):
                index[str(path)] = entry
        try:
            index_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(index_file, json.dumps(index))
        except OSError as e:  # full, read-only: the next scan decodes again
            cache_unwritable("file index", index_file.parent, e)
    return index


def file_index(split_dir: str | Path) -> dict[str, dict]:
    """The scan's index of ``split_dir`` (after a scan): path → size, mtime, sha1, dims, mode, error."""
    try:
        return json.loads(_index_path(Path(split_dir)).read_text())
    except (OSError, ValueError):
        return {}


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
