"""Synthetic MRI-like brain phantoms in the Kaggle "Brain Tumor MRI" folder layout.

Owns: drawing one axial-slice phantom (``render_phantom``) and writing a whole data set
(``generate_phantoms``) as ``<root>/{Training,Testing}/<class>/*.jpg`` plus ``<root>/manifest.json``,
so a fresh clone can train and test with no download. Knows nothing about models, loaders or runs.

The lesion alone decides the class:
  glioma      irregular intra-axial mass in one hemisphere, bright enhancing rim, dark necrotic core
  meningioma  bright, homogeneous, sharply bounded mass pressed against the inner skull (dural tail)
  pituitary   small bright round mass on the midline near the skull base (lower centre)
  notumor     no lesion
Every image also gets head pose jitter, tissue texture with sulci, ventricles, a few tiny bright
vessel dots (so "a bright spot" alone is not the answer), contrast/gamma jitter and Rician noise.

Output is a pure function of the parameters: each image draws from its own
``numpy.random.default_rng([seed, split, class, index])`` and is saved as baseline JPEG at a fixed
quality, so the same seed gives byte-identical files.

Example:
    python -m brainmri.data.phantoms data/phantoms --n-per-class 40 --n-test-per-class 10 --size 224
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from brainmri.atomic import atomic_path

CLASSES = ("glioma", "meningioma", "notumor", "pituitary")
SPLITS = ("Training", "Testing")
MANIFEST = "manifest.json"
FORMAT = "brainmri-phantoms"
VERSION = 2  # bump whenever the drawing changes: a manifest of another version is regenerated
JPEG_QUALITY = 90

_SPLIT_PREFIX = {"Training": "Tr", "Testing": "Te"}  # file names as in the Kaggle set: Tr-gl_0001.jpg
_CLASS_PREFIX = {"glioma": "gl", "meningioma": "me", "notumor": "no", "pituitary": "pi"}

# Head-frame radii (1.0 = outer scalp edge): brain inside _BRAIN, bone between _SKULL_IN and _SKULL_OUT.
_BRAIN, _SKULL_IN, _SKULL_OUT = 0.84, 0.87, 0.93


def _inside(x: np.ndarray, x0: float | np.ndarray, width: float) -> np.ndarray:
    """1 where x < x0 - 2·width, 0 where x > x0 + 2·width, a linear ramp between (anti-aliasing)."""
    return np.clip((x0 - x) * (0.25 / width) + 0.5, 0.0, 1.0)


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    # A Python float, not np.float64: NumPy scalars would silently promote the float32 images to float64.
    return float(rng.uniform(low, high))


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth random field with unit-ish amplitude: a cells × cells grid upsampled bicubically."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    field = Image.fromarray(coarse, mode="F").resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(field, dtype=np.float32)


def render_phantom(label: str, rng: np.random.Generator, image_size: int = 224) -> np.ndarray:
    """Draw one synthetic axial brain slice.

    Args:
        label: one of ``CLASSES``; decides the lesion.
        rng: the only source of randomness (same generator state → same pixels).
        image_size: output height and width in pixels.
    Returns:
        ``uint8`` array of shape ``(image_size, image_size)``.

    Example:
        >>> render_phantom("glioma", np.random.default_rng(0), 64).shape
        (64, 64)
    """
    if label not in CLASSES:
        raise ValueError(f"unknown class {label!r}; expected one of {CLASSES}")
    s = image_size
    px = 2.0 / s  # one pixel in image units (the image spans [-1, 1])
    edge = 1.2 * px

    # Head pose: small shift, scale and in-plane rotation; (u, v) is the head frame, v pointing down.
    cx, cy = _uniform(rng, -0.05, 0.05), _uniform(rng, -0.05, 0.05)
    a = 0.70 * _uniform(rng, 0.92, 1.06)  # half-width of the head
    b = a * _uniform(rng, 1.16, 1.28)  # half-height
    theta = math.radians(_uniform(rng, -12.0, 12.0))
    grid = (np.arange(s, dtype=np.float32) + 0.5) * px - 1.0
    x, y = grid[None, :] - cx, grid[:, None] - cy
    cos, sin = math.cos(theta), math.sin(theta)
    u, v = cos * x + sin * y, -sin * x + cos * y
    rr = np.sqrt((u / a) ** 2 + (v / b) ** 2)

    # Layers from outside in: scalp fat (bright on T1), bone (dark), a thin CSF rim, brain.
    head = _inside(rr, 1.0, edge / a)
    bone = _inside(rr, _SKULL_OUT, edge / a)
    intracranial = _inside(rr, _SKULL_IN, edge / a)
    brain = _inside(rr, _BRAIN, edge / a)
    img = 0.01 + head * (_uniform(rng, 0.62, 0.82) - 0.01)
    img = img + bone * (_uniform(rng, 0.06, 0.12) - img)
    img = img + intracranial * (0.18 - img)

    # Brain: white matter inside, a darker cortical ribbon folded by sulci, smooth texture.
    texture = _smooth_noise(rng, s, 12)
    # Sulci: thin dark lines running roughly radially in from the surface, bent by a smooth field.
    folds = _smooth_noise(rng, s, 14)
    phi = np.arctan2(v / b, u / a)
    sulci = np.exp(-(np.sin(int(rng.integers(14, 20)) * phi + 1.8 * folds + 6.0 * rr) ** 2) / 0.06)
    ribbon = 1.0 - _inside(rr, 0.62 + 0.05 * texture, 0.04)
    tissue = _uniform(rng, 0.44, 0.52) - 0.08 * ribbon - 0.13 * sulci * ribbon + 0.02 * texture
    img = img + brain * (tissue - img)

    # Midline falx, two lateral ventricles (a slightly asymmetric butterfly) and the third ventricle.
    falx = np.exp(-(u / (1.5 * px)) ** 2) * (np.abs(v) < 0.62 * b) * (np.abs(v + 0.1 * b) > 0.28 * b)
    img = img - 0.12 * falx * brain
    vent = _inside((u / (0.02 * a)) ** 2 + ((v - 0.16 * b) / (0.06 * b)) ** 2, 1.0, 0.2)
    for side in (-1.0, 1.0):
        du, dv = u - side * a * _uniform(rng, 0.10, 0.15), v + b * _uniform(rng, 0.04, 0.12)
        tilt = -side * math.radians(_uniform(rng, 8.0, 20.0))  # frontal horns close, occipital horns apart
        pu, pv = math.cos(tilt) * du + math.sin(tilt) * dv, -math.sin(tilt) * du + math.cos(tilt) * dv
        ru, rv = a * _uniform(rng, 0.04, 0.07), b * _uniform(rng, 0.16, 0.23)
        vent = np.maximum(vent, _inside((pu / ru) ** 2 + (pv / rv) ** 2, 1.0, 0.15))
    img = img + vent * brain * (_uniform(rng, 0.10, 0.18) - img)

    # Distractors in every class: a few tiny bright vessel / choroid dots.
    for _ in range(rng.integers(1, 4)):
        ang, rad = _uniform(rng, 0, 2 * math.pi), math.sqrt(_uniform(rng, 0.0, 0.55))
        dist = np.hypot(u - rad * a * math.cos(ang), v - rad * b * math.sin(ang))
        img = img + _inside(dist, _uniform(rng, 0.012, 0.022), edge) * brain * (_uniform(rng, 0.65, 0.85) - img)

    # Scanner settings are drawn before the lesion, so one rng state gives the same head in every class.
    gamma, gain, sigma = _uniform(rng, 0.85, 1.15), _uniform(rng, 0.85, 1.08), _uniform(rng, 0.01, 0.035)
    if label == "glioma":
        img = _draw_glioma(img, rng, u, v, a, b, brain, edge)
    elif label == "meningioma":
        img = _draw_meningioma(img, rng, u, v, rr, a, b, intracranial, edge)
    elif label == "pituitary":
        img = _draw_pituitary(img, rng, u, v, b, edge, texture)

    # Scanner: gamma + gain, then Rician noise (the magnitude of a complex Gaussian signal).
    img = np.clip(img, 0.0, 1.0) ** gamma * gain
    noise = rng.standard_normal((2, s, s), dtype=np.float32) * sigma
    img = np.sqrt((img + noise[0]) ** 2 + noise[1] ** 2)
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _draw_glioma(img, rng, u, v, a, b, brain, edge):
    """Irregular ring-enhancing mass with a necrotic core and a faint oedema halo, in one hemisphere."""
    side = float(rng.choice((-1.0, 1.0)))
    u0, v0 = side * a * _uniform(rng, 0.30, 0.52), b * _uniform(rng, -0.45, 0.30)
    radius = _uniform(rng, 0.12, 0.20)
    du, dv = u - u0, v - v0
    phi = np.arctan2(dv, du)
    wobble = np.ones_like(phi)
    for k in range(2, 6):
        wobble += _uniform(rng, 0.03, 0.12) * np.cos(k * phi + _uniform(rng, 0, 2 * math.pi))
    d = np.sqrt(du * du + dv * dv) / (radius * wobble)
    mass = _inside(d, 1.0, edge / radius)
    core = _inside(d, _uniform(rng, 0.5, 0.66), 2 * edge / radius)
    halo = _inside(d, _uniform(rng, 1.35, 1.6), 0.1) - mass
    img = img - _uniform(rng, 0.04, 0.09) * halo * brain
    img = img + mass * brain * (_uniform(rng, 0.78, 0.95) - img)
    return img + core * brain * (_uniform(rng, 0.12, 0.24) - img)


def _draw_meningioma(img, rng, u, v, rr, a, b, intracranial, edge):
    """Bright homogeneous extra-axial mass, flattened against the inner skull, with a short dural tail."""
    alpha = _uniform(rng, -math.pi - 0.5, 0.5)  # anywhere but the skull base (v > 0 is down)
    radius = _uniform(rng, 0.10, 0.16)
    eu, ev = _SKULL_IN * a * math.cos(alpha), _SKULL_IN * b * math.sin(alpha)  # attachment point on the dura
    norm = math.hypot(eu / a**2, ev / b**2)
    nu, nv = eu / a**2 / norm, ev / b**2 / norm  # outward normal of the skull ellipse there
    push = _uniform(rng, 0.35, 0.65) * radius
    mass = _inside(np.hypot(u - (eu - push * nu), v - (ev - push * nv)), radius, edge) * intracranial
    level = _uniform(rng, 0.80, 0.97)
    tail = np.exp(-((rr - 0.855) / 0.012) ** 2) * _inside(np.hypot(u - eu, v - ev), 2.2 * radius, 0.03)
    img = img + 0.6 * tail * intracranial * (level - img)
    return img + mass * (level - img)


def _draw_pituitary(img, rng, u, v, b, edge, texture):
    """Small bright round mass on the midline, just above the skull base."""
    u0, v0 = _uniform(rng, -0.03, 0.03), b * _uniform(rng, 0.46, 0.58)
    radius = _uniform(rng, 0.055, 0.085)
    mass = _inside(np.hypot((u - u0) / _uniform(rng, 0.9, 1.15), v - v0), radius, edge)
    return img + mass * (_uniform(rng, 0.78, 0.96) + 0.02 * texture - img)


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


def read_manifest(root: str | os.PathLike) -> dict | None:
    """The phantom manifest in ``root``, or None when there is none (or it is not ours)."""
    try:
        manifest = json.loads((Path(root) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == FORMAT else None


def _write_split(folder: Path, params: dict, split_idx: int, n: int) -> dict[str, int]:
    """Render and save ``n`` images per class into ``folder/<class>/``."""
    counts = {}
    for class_idx, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True)
        # Exactly round(fraction * n) greyscale files per folder, at seeded positions.
        gray = np.zeros(n, dtype=bool)
        order = np.random.default_rng([params["seed"], split_idx, class_idx, 1 << 30]).permutation(n)
        gray[order[: int(round(params["grayscale_fraction"] * n))]] = True
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
    root = Path(root)
    params = _params(n_per_class, n_test_per_class, image_size, seed, grayscale_fraction)
    manifest = read_manifest(root)
    if not overwrite and manifest and manifest.get("version") == VERSION and manifest.get("params") == params:
        return root
    if root.exists() and manifest is None and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"{root} exists and is not a phantom set (no {MANIFEST}); refusing to replace it")

    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(root) as tmp:  # the whole set appears at once, or not at all
            shutil.rmtree(tmp, ignore_errors=True)
            counts = {}
            per_split = (params["n_per_class"], params["n_test_per_class"])
            for split_idx, (split, n) in enumerate(zip(SPLITS, per_split, strict=True)):
                if n:
                    counts[split] = _write_split(tmp / split, params, split_idx, n)
            new = {"format": FORMAT, "version": VERSION, "params": params, "classes": list(CLASSES),
                   "counts": counts, "total": sum(sum(c.values()) for c in counts.values())}
            (tmp / MANIFEST).write_text(json.dumps(new, indent=2) + "\n")
            if root.exists():
                shutil.rmtree(root)
    except OSError:
        # Another process put the same set in place between our rmtree and rename: theirs is as good.
        if (read_manifest(root) or {}).get("params") != params:
            raise
    return root


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m brainmri.data.phantoms",
                                     description="Write synthetic MRI-like brain phantoms in the Kaggle layout.")
    parser.add_argument("out_dir", type=Path, help="output folder (Training/, Testing/, manifest.json)")
    parser.add_argument("--n-per-class", type=int, default=40, help="Training images per class")
    parser.add_argument("--n-test-per-class", type=int, default=10, help="Testing images per class (0: none)")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grayscale-fraction", type=float, default=0.5, help='share of mode "L" files')
    parser.add_argument("--overwrite", action="store_true", help="regenerate even if the manifest matches")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        root = generate_phantoms(args.out_dir, n_per_class=args.n_per_class, n_test_per_class=args.n_test_per_class,
                                 image_size=args.size, seed=args.seed, grayscale_fraction=args.grayscale_fraction,
                                 overwrite=args.overwrite)
    except (ValueError, FileExistsError) as err:
        parser.error(str(err))
    manifest = read_manifest(root)
    assert manifest is not None  # just written
    print(f"{manifest['total']} phantom images in {root} ({time.perf_counter() - start:.2f} s)")


if __name__ == "__main__":
    main()
