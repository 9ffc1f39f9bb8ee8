"""One phantom head: its anatomy drawn from a generator (``draw_anatomy``), slices of it rendered as
a site's scanner records them (``render_slice``; ``render_phantom`` is both at once, one central
slice at a neutral site), and the lesion each class paints. A pure function of the generator's
state: the same draws give the same pixels. See the package's docstring (``brainmri.data.phantoms``)
for what the images show; ``draw`` and ``cohort`` write them to disk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

CLASSES = ("glioma", "meningioma", "notumor", "pituitary")

# Head-frame radii (1.0 = outer scalp edge): brain inside _BRAIN, bone between _SKULL_IN and _SKULL_OUT.
_BRAIN, _SKULL_IN, _SKULL_OUT = 0.84, 0.87, 0.93


@dataclass(frozen=True)
class Site:
    """How one scanner / site records a head: field of view, intensity, noise, and its DICOM encoding.

    Attributes:
        zoom: field of view; above 1 the head fills more of the image (and is cut by its edge), below 1 less.
        shift: head centre offset (x, y) in image units (the image spans [-1, 1]).
        gain, gamma, noise: multiply each patient's own gain, gamma and Rician noise sigma.
        bias: a linear intensity ramp from left to right (coil inhomogeneity): ``1 + bias * x``.
        bits_stored, slope, intercept: the DICOM encoding; stored = (value - intercept) / slope.
        scale: the DICOM (rescaled) value of phantom signal 1.0; the window spans 0 .. scale.
    """

    zoom: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)
    gain: float = 1.0
    gamma: float = 1.0
    noise: float = 1.0
    bias: float = 0.0
    bits_stored: int = 12
    slope: float = 1.0
    intercept: float = 0.0
    scale: float = 3000.0


@dataclass(frozen=True)
class Anatomy:
    """One head with its lesion: every random draw of a slice except the noise (see ``draw_anatomy``).

    Drawn once per patient and rendered per slice by ``render_slice``, so the slices of one patient
    share pose, tissue texture, ventricles, lesion position and size, and differ only by the slice
    position and the noise, as neighbouring slices of an MRI volume do.
    """

    label: str
    pose: tuple[float, float, float, float, float]  # cx, cy, a (half-width), b (half-height), theta (rad)
    levels: tuple[float, float, float, float]  # scalp, bone, tissue, ventricle signal
    texture: np.ndarray  # 12 × 12 coarse grid of the tissue texture
    folds: np.ndarray  # 14 × 14 coarse grid bending the sulci
    n_sulci: int
    ventricles: tuple[tuple[float, float, float, float, float], ...]  # per side: du, dv, tilt, ru, rv draws
    dots: tuple[tuple[float, float, float, float], ...]  # vessel dots: angle, radius², size, signal
    scanner: tuple[float, float, float]  # gamma, gain, Rician sigma
    lesion: tuple[float, ...]  # the lesion's draws, in the order its painter reads them (empty: notumor)


def _inside(x: np.ndarray, x0: float | np.ndarray, width: float) -> np.ndarray:
    """1 where x < x0 - 2·width, 0 where x > x0 + 2·width, a linear ramp between (anti-aliasing)."""
    return np.clip((x0 - x) * (0.25 / width) + 0.5, 0.0, 1.0)


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    # A Python float, not np.float64: NumPy scalars would silently promote the float32 images to float64.
    return float(rng.uniform(low, high))


def _coarse(rng: np.random.Generator, cells: int) -> np.ndarray:
    return rng.standard_normal((cells, cells)).astype(np.float32)


def _upsample(coarse: np.ndarray, size: int) -> np.ndarray:
    """Smooth random field with unit-ish amplitude: a coarse grid upsampled bicubically."""
    field = Image.fromarray(coarse, mode="F").resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(field, dtype=np.float32)


def _drift(coarse: np.ndarray, z: float) -> np.ndarray:
    """The coarse grid of slice ``z``: turns smoothly into an independent-looking grid (its mirror image)."""
    if z == 0.0:
        return coarse
    t = 0.35 * z
    return (math.cos(t) * coarse + math.sin(t) * coarse[::-1, ::-1].T).astype(np.float32)


def draw_anatomy(label: str, rng: np.random.Generator) -> Anatomy:
    """Draw one head and its ``label`` lesion from ``rng``.

    The draws come in a fixed order (pose, tissue, ventricles, dots, scanner, lesion), so one
    generator state gives the same head in every class; ``render_phantom`` is this followed by
    ``render_slice`` with the same generator.
    """
    if label not in CLASSES:
        raise ValueError(f"unknown class {label!r}; expected one of {CLASSES}")
    cx, cy = _uniform(rng, -0.05, 0.05), _uniform(rng, -0.05, 0.05)
    a = 0.70 * _uniform(rng, 0.92, 1.06)
    b = a * _uniform(rng, 1.16, 1.28)
    theta = math.radians(_uniform(rng, -12.0, 12.0))
    scalp, bone = _uniform(rng, 0.62, 0.82), _uniform(rng, 0.06, 0.12)
    texture, folds = _coarse(rng, 12), _coarse(rng, 14)
    n_sulci = int(rng.integers(14, 20))
    tissue = _uniform(rng, 0.44, 0.52)
    ventricles = tuple(tuple(_uniform(rng, lo, hi) for lo, hi in ((0.10, 0.15), (0.04, 0.12), (8.0, 20.0),
                                                                  (0.04, 0.07), (0.16, 0.23)))
                       for _side in (-1.0, 1.0))
    ventricle = _uniform(rng, 0.10, 0.18)
    dots = tuple(tuple(_uniform(rng, lo, hi) for lo, hi in ((0, 2 * math.pi), (0.0, 0.55), (0.012, 0.022),
                                                            (0.65, 0.85)))
                 for _ in range(rng.integers(1, 4)))
    scanner = _uniform(rng, 0.85, 1.15), _uniform(rng, 0.85, 1.08), _uniform(rng, 0.01, 0.035)
    lesion: tuple[float, ...] = ()
    if label == "glioma":
        side = float(rng.choice((-1.0, 1.0)))
        lesion = (side, *(_uniform(rng, lo, hi) for lo, hi in ((0.30, 0.52), (-0.45, 0.30), (0.12, 0.20))),
                  *(_uniform(rng, lo, hi) for _ in range(2, 6) for lo, hi in ((0.03, 0.12), (0, 2 * math.pi))),
                  *(_uniform(rng, lo, hi) for lo, hi in ((0.5, 0.66), (1.35, 1.6), (0.04, 0.09), (0.78, 0.95),
                                                         (0.12, 0.24))))
    elif label == "meningioma":
        lesion = tuple(_uniform(rng, lo, hi) for lo, hi in ((-math.pi - 0.5, 0.5), (0.10, 0.16), (0.35, 0.65),
                                                            (0.80, 0.97)))
    elif label == "pituitary":
        lesion = tuple(_uniform(rng, lo, hi) for lo, hi in ((-0.03, 0.03), (0.46, 0.58), (0.055, 0.085),
                                                            (0.9, 1.15), (0.78, 0.96)))
    return Anatomy(label, (cx, cy, a, b, theta), (scalp, bone, tissue, ventricle), texture, folds, n_sulci,
                   ventricles, dots, scanner, lesion)  # type: ignore[arg-type]


# How far apart neighbouring slices are, in image units: it sets how fast a lesion shrinks off its centre.
SLICE_SPACING = 0.03


def render_slice(anatomy: Anatomy, rng: np.random.Generator, image_size: int = 224, *, z: float = 0.0,
                 site: Site | None = None) -> np.ndarray:
    """Render one slice of ``anatomy``: the scanner's signal as float32, before any quantisation.

    Args:
        anatomy: from ``draw_anatomy``.
        rng: draws the Rician noise (only that).
        image_size: output height and width in pixels.
        z: slice position in slices from the patient's central slice: the head narrows and the lesion
            shrinks as a sphere's cross-section, ventricles, texture and sulci drift slowly.
        site: field of view, intensity and noise of the recording site (None: a neutral one).
    Returns:
        float32 array ``(image_size, image_size)``, signal mostly in [0, 1] (8-bit pixels are ``value·255``).
    """
    f = _slice_frame(anatomy, image_size, z, site)
    u, v, rr, a, b, edge = f.u, f.v, f.rr, f.a, f.b, f.edge
    scalp, bone_level, tissue_level, ventricle_level = anatomy.levels

    # Layers from outside in: scalp fat (bright on T1), bone (dark), a thin CSF rim, brain.
    head = _inside(rr, 1.0, edge / a)
    bone = _inside(rr, _SKULL_OUT, edge / a)
    intracranial = _inside(rr, _SKULL_IN, edge / a)
    brain = _inside(rr, _BRAIN, edge / a)
    img = 0.01 + head * (scalp - 0.01)
    img = img + bone * (bone_level - img)
    img = img + intracranial * (0.18 - img)

    # Brain: white matter inside, a darker cortical ribbon folded by sulci, smooth texture.
    texture = _upsample(_drift(anatomy.texture, z), image_size)
    # Sulci: thin dark lines running roughly radially in from the surface, bent by a smooth field.
    folds = _upsample(_drift(anatomy.folds, z), image_size)
    phi = np.arctan2(v / b, u / a)
    sulci = np.exp(-(np.sin(anatomy.n_sulci * phi + 1.8 * folds + 6.0 * rr) ** 2) / 0.06)
    ribbon = 1.0 - _inside(rr, 0.62 + 0.05 * texture, 0.04)
    tissue = tissue_level - 0.08 * ribbon - 0.13 * sulci * ribbon + 0.02 * texture
    img = img + brain * (tissue - img)

    img = _paint_midline(img, anatomy, f, z, brain, ventricle_level)
    img = _paint_dots(img, anatomy, f, brain)
    img = _paint_lesion(img, anatomy, f, z, brain, intracranial, texture)
    return _scanner_signal(img, anatomy, site, f.image_grid, rng)


@dataclass(frozen=True)
class _SliceFrame:
    """Where each pixel of one slice lies on the head.

    ``u, v``: the pixel in the head's rotated frame (image units, origin at the head's centre);
    ``rr``: its elliptical radius (1.0 at the outer scalp); ``a, b``: the head's half-width and
    half-height in this slice; ``px_head``: one pixel in head units; ``edge``: the anti-aliasing
    width; ``image_grid``: the pixel centres' coordinates in image units (the site's coil ramp runs along x).
    """

    u: np.ndarray
    v: np.ndarray
    rr: np.ndarray
    a: float
    b: float
    px_head: float
    edge: float
    image_grid: np.ndarray


def _slice_frame(anatomy: Anatomy, image_size: int, z: float, site: Site | None) -> _SliceFrame:
    """The pixels of slice ``z`` in ``anatomy``'s head frame, seen with the site's field of view and centre shift
    (an ellipsoidal head: narrower away from the central slice)."""
    s = image_size
    zoom = 1.0 if site is None else site.zoom
    px = 2.0 / s  # one pixel in image units (the image spans [-1, 1])
    if zoom != 1.0:
        px_head = px / zoom  # one pixel in head units
    else:
        px_head = px
    edge = 1.2 * px_head
    cx, cy, a, b, theta = anatomy.pose
    if site is not None:
        cx, cy = cx + site.shift[0], cy + site.shift[1]
    if z != 0.0:  # an ellipsoidal head: narrower away from the central slice
        narrow = math.sqrt(max(0.5, 1.0 - (z * SLICE_SPACING / b) ** 2))
        a, b = a * narrow, b * narrow
    grid = image_grid = (np.arange(s, dtype=np.float32) + 0.5) * px - 1.0
    if zoom != 1.0:
        grid = image_grid / np.float32(zoom)
    x, y = grid[None, :] - cx, grid[:, None] - cy
    cos, sin = math.cos(theta), math.sin(theta)
    u, v = cos * x + sin * y, -sin * x + cos * y
    rr = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    return _SliceFrame(u, v, rr, a, b, px_head, edge, image_grid)


def _paint_midline(img: np.ndarray, anatomy: Anatomy, f: _SliceFrame, z: float, brain: np.ndarray,
                   level: float) -> np.ndarray:
    """The midline falx, two lateral ventricles (a slightly asymmetric butterfly, narrowing towards the
    vertex) and the third ventricle, the ventricles at signal ``level``."""
    u, v, a, b = f.u, f.v, f.a, f.b
    falx = np.exp(-(u / (1.5 * f.px_head)) ** 2) * (np.abs(v) < 0.62 * b) * (np.abs(v + 0.1 * b) > 0.28 * b)
    img = img - 0.12 * falx * brain
    vent = _inside((u / (0.02 * a)) ** 2 + ((v - 0.16 * b) / (0.06 * b)) ** 2, 1.0, 0.2)
    grow = 1.0 if z == 0.0 else max(0.6, 1.0 - 0.06 * z)  # the ventricles narrow towards the vertex
    for side, (fu, fv, tilt_deg, fr, fl) in zip((-1.0, 1.0), anatomy.ventricles, strict=True):
        du, dv = u - side * a * fu, v + b * fv
        tilt = -side * math.radians(tilt_deg)  # frontal horns close, occipital horns apart
        pu, pv = math.cos(tilt) * du + math.sin(tilt) * dv, -math.sin(tilt) * du + math.cos(tilt) * dv
        ru, rv = a * fr, b * fl
        if grow != 1.0:
            ru, rv = ru * grow, rv * grow
        vent = np.maximum(vent, _inside((pu / ru) ** 2 + (pv / rv) ** 2, 1.0, 0.15))
    return img + vent * brain * (level - img)


def _paint_dots(img: np.ndarray, anatomy: Anatomy, f: _SliceFrame, brain: np.ndarray) -> np.ndarray:
    """The distractors every class has: a few tiny bright vessel / choroid dots in the brain."""
    for ang, rad2, size, level in anatomy.dots:
        rad = math.sqrt(rad2)
        dist = np.hypot(f.u - rad * f.a * math.cos(ang), f.v - rad * f.b * math.sin(ang))
        img = img + _inside(dist, size, f.edge) * brain * (level - img)
    return img


def _paint_lesion(img: np.ndarray, anatomy: Anatomy, f: _SliceFrame, z: float, brain: np.ndarray,
                  intracranial: np.ndarray, texture: np.ndarray) -> np.ndarray:
    """The lesion of ``anatomy.label`` painted in slice ``z`` (none for notumor): the class's only sign."""
    if anatomy.label == "glioma":
        return _paint_glioma(img, anatomy.lesion, z, f.u, f.v, f.a, f.b, brain, f.edge)
    if anatomy.label == "meningioma":
        return _paint_meningioma(img, anatomy.lesion, z, f.u, f.v, f.rr, f.a, f.b, intracranial, f.edge)
    if anatomy.label == "pituitary":
        return _paint_pituitary(img, anatomy.lesion, z, f.u, f.v, f.b, f.edge, texture)
    return img


def _scanner_signal(img: np.ndarray, anatomy: Anatomy, site: Site | None, image_grid: np.ndarray,
                    rng: np.random.Generator) -> np.ndarray:
    """What the scanner records of the tissue signal ``img``: the patient's gamma and gain (times the site's),
    the site's coil ramp, then Rician noise (the magnitude of a complex Gaussian signal) drawn from ``rng``."""
    gamma, gain, sigma = anatomy.scanner
    if site is not None:
        gamma, gain, sigma = gamma * site.gamma, gain * site.gain, sigma * site.noise
    img = np.clip(img, 0.0, 1.0) ** gamma * gain
    if site is not None and site.bias:
        img = img * (1.0 + site.bias * image_grid[None, :])
    noise = rng.standard_normal((2, *img.shape), dtype=np.float32) * sigma
    return np.sqrt((img + noise[0]) ** 2 + noise[1] ** 2).astype(np.float32, copy=False)


def _to_uint8(signal: np.ndarray) -> np.ndarray:
    return np.clip(signal * 255.0 + 0.5, 0, 255).astype(np.uint8)


def render_phantom(label: str, rng: np.random.Generator, image_size: int = 224) -> np.ndarray:
    """Draw one synthetic axial brain slice (one head, its central slice, a neutral site).

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
    return _to_uint8(render_slice(draw_anatomy(label, rng), rng, image_size))


def _shrink(radius: float, z: float) -> float:
    """The radius of a sphere's cross-section ``z`` slices off its centre (never below 60 %: still visible)."""
    if z == 0.0:
        return radius
    return radius * math.sqrt(max(0.36, 1.0 - (z * SLICE_SPACING / radius) ** 2))


def _paint_glioma(img, lesion, z, u, v, a, b, brain, edge):
    """Irregular ring-enhancing mass with a necrotic core and a faint oedema halo, in one hemisphere."""
    side, fu, fv, radius = lesion[:4]
    wobbles, (core_r, halo_r, halo_dark, mass_level, core_level) = lesion[4:12], lesion[12:]
    u0, v0 = side * a * fu, b * fv
    radius = _shrink(radius, z)
    du, dv = u - u0, v - v0
    phi = np.arctan2(dv, du)
    wobble = np.ones_like(phi)
    for k in range(2, 6):
        amp, phase = wobbles[2 * (k - 2): 2 * (k - 2) + 2]
        wobble += amp * np.cos(k * phi + phase)
    d = np.sqrt(du * du + dv * dv) / (radius * wobble)
    mass = _inside(d, 1.0, edge / radius)
    core = _inside(d, core_r, 2 * edge / radius)
    halo = _inside(d, halo_r, 0.1) - mass
    img = img - halo_dark * halo * brain
    img = img + mass * brain * (mass_level - img)
    return img + core * brain * (core_level - img)


def _paint_meningioma(img, lesion, z, u, v, rr, a, b, intracranial, edge):
    """Bright homogeneous extra-axial mass, flattened against the inner skull, with a short dural tail."""
    alpha, radius, push, level = lesion  # alpha: anywhere but the skull base (v > 0 is down)
    radius = _shrink(radius, z)
    eu, ev = _SKULL_IN * a * math.cos(alpha), _SKULL_IN * b * math.sin(alpha)  # attachment point on the dura
    norm = math.hypot(eu / a**2, ev / b**2)
    nu, nv = eu / a**2 / norm, ev / b**2 / norm  # outward normal of the skull ellipse there
    push = push * radius
    mass = _inside(np.hypot(u - (eu - push * nu), v - (ev - push * nv)), radius, edge) * intracranial
    tail = np.exp(-((rr - 0.855) / 0.012) ** 2) * _inside(np.hypot(u - eu, v - ev), 2.2 * radius, 0.03)
    img = img + 0.6 * tail * intracranial * (level - img)
    return img + mass * (level - img)


def _paint_pituitary(img, lesion, z, u, v, b, edge, texture):
    """Small bright round mass on the midline, just above the skull base."""
    u0, fv, radius, stretch, level = lesion
    v0 = b * fv
    radius = _shrink(radius, z)
    mass = _inside(np.hypot((u - u0) / stretch, v - v0), radius, edge)
    return img + mass * (level + 0.02 * texture - img)
