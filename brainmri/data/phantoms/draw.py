"""The Kaggle-layout phantom set: writing a whole data set in the Kaggle "Brain Tumor MRI" folder
layout (``generate_phantoms``: ``<root>/{Training,Testing}/<class>/*.jpg`` plus ``<root>/manifest.json``),
built atomically and reused when its parameters match (``_build``, shared with ``cohort``), and the
lesion mask of a written phantom (``lesion_mask``). The heads are drawn and rendered by
``brainmri.data.phantoms.head``.
See the package's docstring (``brainmri.data.phantoms``) for what the images show.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from brainmri.atomic import atomic_path
from brainmri.data.phantoms.head import CLASSES, render_phantom

SPLITS = ("Training", "Testing")
MANIFEST = "manifest.json"
FORMAT = "brainmri-phantoms"
VERSION = 2  # bump whenever the drawing (``head``) changes: a manifest of another version is regenerated
JPEG_QUALITY = 90

_SPLIT_PREFIX = {"Training": "Tr", "Testing": "Te"}  # file names as in the Kaggle set: Tr-gl_0001.jpg
_CLASS_PREFIX = {"glioma": "gl", "meningioma": "me", "notumor": "no", "pituitary": "pi"}


def _params(n_per_class, n_test_per_class, image_size, seed, grayscale_fraction) -> dict:
    """Validated generation parameters, JSON-exact (this is what the manifest compares)."""
    params = {"n_per_class": int(n_per_class), "n_test_per_class": int(n_test_per_class),
              "image_size": int(image_size), "seed": int(seed), "grayscale_fraction": float(grayscale_fraction),
              "jpeg_quality": JPEG_QUALITY}
    if params["n_per_class"] < 1 or params["n_test_per_class"] < 0:
        raise ValueError(f"need n_per_class >= 1 and n_test_per_class >= 0, got {n_per_class}, {n_test_per_class}")
    if not 32 <= params["image_size"] <= 4096:
        raise ValueError(f"image_size must be in [32, 4096], got {image_size}")
    if params["seed"] < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not 0.0 <= params["grayscale_fraction"] <= 1.0:
        raise ValueError(f"grayscale_fraction must be in [0, 1], got {grayscale_fraction}")
    return params


def _read_marker(root: str | os.PathLike, name: str, fmt: str) -> dict | None:
    try:
        marker = json.loads((Path(root) / name).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("format") == fmt else None


def read_manifest(root: str | os.PathLike) -> dict | None:
    """The phantom manifest in ``root``, or None when there is none (or it is not ours)."""
    return _read_marker(root, MANIFEST, FORMAT)


def _build(root: Path, marker: str, fmt: str, version: int, params: dict, overwrite: bool,
           write: Callable[[Path], dict]) -> Path:
    """Write a generated set to ``root`` with ``write(folder) -> extra marker keys``, or reuse the same one.

    The set is built in a sibling temporary folder (``marker`` file last) and renamed into place, so a
    crash never leaves a partial ``root`` or a marker claiming a complete set. An existing ``root`` is
    replaced only if it is empty or an earlier set of the same format.
    """
    current = _read_marker(root, marker, fmt)
    if not overwrite and current and current.get("version") == version and current.get("params") == params:
        return root
    if root.exists() and current is None and (not root.is_dir() or any(root.iterdir())):
        what = "a phantom set" if marker == MANIFEST else "a phantom cohort"
        raise FileExistsError(f"{root} exists and is not {what} (no {marker}); refusing to replace it")

    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(root) as tmp:  # the whole set appears at once, or not at all
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            new = {"format": fmt, "version": version, "params": params, **write(tmp)}
            (tmp / marker).write_text(json.dumps(new, indent=2) + "\n")
            if root.exists():
                shutil.rmtree(root)
    except OSError:
        # Another process put the same set in place between our rmtree and rename: theirs is as good.
        if (_read_marker(root, marker, fmt) or {}).get("params") != params:
            raise
    return root


def _write_split(folder: Path, params: dict, split_idx: int, n: int) -> dict[str, int]:
    """Render and save ``n`` images per class into ``folder/<class>/``."""
    counts = {}
    for class_idx, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True)
        # Exactly round(fraction * n) greyscale files per folder, at seeded positions.
        gray = np.zeros(n, dtype=bool)
        order = np.random.default_rng([params["seed"], split_idx, class_idx, 1 << 30]).permutation(n)
        gray[order[: round(params["grayscale_fraction"] * n)]] = True
        for i in range(n):
            pixels = render_phantom(name, np.random.default_rng([params["seed"], split_idx, class_idx, i]),
                                    params["image_size"])
            image = Image.fromarray(pixels, mode="L")
            if not gray[i]:
                image = image.convert("RGB")  # the real set stores most scans as 3 equal channels
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=JPEG_QUALITY)
            stem = f"{_SPLIT_PREFIX[folder.name]}-{_CLASS_PREFIX[name]}_{i + 1:04d}"
            (folder / name / f"{stem}.jpg").write_bytes(buf.getvalue())
        counts[name] = n
    return counts


def generate_phantoms(root: str | os.PathLike, n_per_class: int = 40, n_test_per_class: int = 10,
                      image_size: int = 224, seed: int = 0, grayscale_fraction: float = 0.5,
                      overwrite: bool = False) -> Path:
    """Write a phantom data set to ``root``, or reuse the identical one already there.

    The set is built in a sibling temporary folder (manifest last) and renamed into place, so a crash
    never leaves a partial ``root`` or a manifest claiming a complete set.

    Args:
        root: output folder; gets ``Training/<class>/``, ``Testing/<class>/`` (when n_test_per_class > 0)
            and ``manifest.json``. An existing ``root`` is replaced only if it is empty or an earlier phantom set.
        n_per_class, n_test_per_class: images per class in Training and Testing.
        image_size: square image side in pixels.
        seed: makes the whole set reproducible, byte for byte.
        grayscale_fraction: share of images saved as mode "L"; the rest are RGB with equal channels
            (the real set mixes both).
        overwrite: regenerate even if a manifest with the same parameters is present.
    Returns:
        ``Path(root)``.
    Raises:
        ValueError: a parameter is out of range.
        FileExistsError: ``root`` is a non-empty folder that is not a phantom set.

    Example:
        >>> root = generate_phantoms("/tmp/phantoms", n_per_class=8, n_test_per_class=2, image_size=64)
        >>> sorted(p.name for p in (root / "Training").iterdir())
        ['glioma', 'meningioma', 'notumor', 'pituitary']
    """
    params = _params(n_per_class, n_test_per_class, image_size, seed, grayscale_fraction)

    def write(tmp: Path) -> dict:
        counts = {}
        per_split = (params["n_per_class"], params["n_test_per_class"])
        for split_idx, (split, n) in enumerate(zip(SPLITS, per_split, strict=True)):
            if n:
                counts[split] = _write_split(tmp / split, params, split_idx, n)
        return {"classes": list(CLASSES), "counts": counts,
                "total": sum(sum(c.values()) for c in counts.values())}

    return _build(Path(root), MANIFEST, FORMAT, VERSION, params, overwrite, write)


def lesion_mask(path: str | os.PathLike, threshold: float = 24.0) -> np.ndarray:
    """Where the lesion of a generated phantom file lies: a bool array at the set's image size.

    The file name and the set's manifest give the image's generator state; rendering that state once
    with its label and once as ``notumor`` gives the same head with and without the lesion, and the
    lesion is where the two differ (by more than ``threshold`` grey levels after a light blur that
    evens out the two renders' noise). All False for ``notumor``.
    """
    from scipy import ndimage

    path = Path(path)
    root, split, label = path.parents[2], path.parent.parent.name, path.parent.name
    manifest = read_manifest(root)
    if manifest is None or split not in SPLITS or label not in CLASSES:
        raise ValueError(f"{path} is not a file of a generated phantom set")
    params = manifest["params"]
    index = int(path.stem.rsplit("_", 1)[1]) - 1
    state = [params["seed"], SPLITS.index(split), CLASSES.index(label), index]
    size = params["image_size"]
    if label == "notumor":
        return np.zeros((size, size), dtype=bool)
    with_lesion = render_phantom(label, np.random.default_rng(state), size).astype(np.float32)
    without = render_phantom("notumor", np.random.default_rng(state), size).astype(np.float32)
    diff = ndimage.gaussian_filter(np.abs(with_lesion - without), 1.0)
    mask = ndimage.binary_fill_holes(ndimage.binary_closing(diff > threshold, iterations=2))
    labels, n = ndimage.label(mask)
    if n > 1:  # keep the lesion, not specks where the two noise draws happened to differ
        sizes = ndimage.sum(mask, labels, range(1, n + 1))
        mask = labels == (1 + int(np.argmax(sizes)))
    return mask
