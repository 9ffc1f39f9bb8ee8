"""Decode-time preprocessing of brainmri: grey-scale decode, head mask, head crop, background zeroing.

Stand-alone on purpose: numpy and PIL only, no brainmri and no torch, so ``launch/export.py`` copies
this very file into an exported model folder as ``preprocess.py`` and a consumer gets exactly the
input the model was trained on::

    import json, preprocess
    card = json.load(open("model/model_card.json"))
    x = preprocess.model_input(["scan.jpg"], card["preprocessing"])   # float32 N x C x H x W

The head mask (``head_mask``): the image is reduced to at most ``WORK_SIDE`` pixels a side and
blurred, thresholded at half its Otsu threshold, closed, its largest 8-connected component kept
and the holes in it filled (ventricles, CSF and the dark skull stay inside), opened (thin lines
and text touching the head drop off), then scaled back to the image's size. ``prepare`` uses it for
``crop="head"`` (crop to the head's bounding box
widened by ``margin`` × its longer side) and ``background="zero"`` (every pixel outside the head
mask dilated by ``margin`` × the box's longer side set to 0), then resizes with PIL's bilinear
filter. ``brainmri.data.transforms.Decoder`` calls ``prepare`` for both settings.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

WORK_SIDE = 128  # the head mask is found at this resolution (longer side), then scaled back
CROPS = ("none", "head")
BACKGROUNDS = ("keep", "zero")


def load_grey(path: str | Path) -> Image.Image:
    """Any PIL-readable image as grey-scale (mode ``L``): transparency composited on black, 16-bit
    images divided by 256, colour reduced to luminance (ITU-R 601-2). Decodes the whole file."""
    img: Image.Image
    with Image.open(path) as img:
        img.load()  # force a full decode here, so truncated files fail now
        if img.mode in ("RGBA", "LA", "P", "PA"):
            img = img.convert("RGBA")
            background = Image.new("RGBA", img.size, (0, 0, 0, 255))
            img = Image.alpha_composite(background, img)
        if img.mode.startswith("I") or img.mode == "F":
            img = img.point(lambda v: v / 256).convert("L") if img.mode.startswith("I;16") else img.convert("L")
        return img.convert("L")


# ------------------------------------------------------------------------------ binary morphology
def otsu_threshold(image: np.ndarray) -> float:
    """Otsu's threshold of a uint8 image (the grey level that best separates two classes)."""
    hist = np.bincount(image.ravel(), minlength=256).astype(np.float64)
    levels = np.arange(256, dtype=np.float64)
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * levels)
    mean0 = m0 / np.maximum(w0, 1)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(np.argmax(between[:-1]))


def _shift_max(mask: np.ndarray, axis: int) -> np.ndarray:
    out = mask.copy()
    if axis == 0:
        out[1:] |= mask[:-1]
        out[:-1] |= mask[1:]
    else:
        out[:, 1:] |= mask[:, :-1]
        out[:, :-1] |= mask[:, 1:]
    return out


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a (2·radius+1)² square."""
    out = mask.astype(bool)
    for _ in range(max(int(radius), 0)):
        out = _shift_max(_shift_max(out, 0), 1)
    return out


def erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary erosion by a (2·radius+1)² square (pixels beyond the border count as background)."""
    radius = max(int(radius), 0)
    padded = np.pad(~mask.astype(bool), radius, constant_values=True)
    grown = dilate(padded, radius)
    return ~grown[radius:radius + mask.shape[0], radius:radius + mask.shape[1]]


def label_components(mask: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(labels, sizes): connected components of a boolean image by runs and union-find.

    ``labels`` is 0 on the background and 1..n on the components; ``sizes[k]`` is the pixel count of
    component k (``sizes[0]`` = 0). ``connectivity`` 8 joins diagonal neighbours, 4 does not.
    """
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    parent: list[int] = []

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    reach = 1 if connectivity == 8 else 0
    runs: list[tuple[int, int, int, int]] = []  # (row, start, end exclusive, run id)
    prev: list[tuple[int, int, int]] = []
    padded = np.zeros(w + 2, dtype=np.int8)
    for y in range(h):
        padded[1:-1] = mask[y]
        edges = np.diff(padded)
        starts, ends = np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()
        cur = []
        j = 0
        for s, e in zip(starts, ends, strict=True):
            rid = len(parent)
            parent.append(rid)
            while j < len(prev) and prev[j][1] + reach <= s:  # previous-row runs entirely left of this one
                j += 1
            k = j
            while k < len(prev) and prev[k][0] < e + reach:
                ra, rb = find(rid), find(prev[k][2])
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
                k += 1
            cur.append((s, e, rid))
            runs.append((y, s, e, rid))
        prev = cur
    labels = np.zeros((h, w), dtype=np.int32)
    if not runs:
        return labels, np.zeros(1, dtype=np.int64)
    roots = [find(r) for r in range(len(parent))]
    numbers = {r: i + 1 for i, r in enumerate(sorted(set(roots)))}
    for y, s, e, rid in runs:
        labels[y, s:e] = numbers[roots[rid]]
    sizes = np.bincount(labels.ravel(), minlength=len(numbers) + 1).astype(np.int64)
    sizes[0] = 0
    return labels, sizes


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of ``mask`` (all False when the mask is empty)."""
    labels, sizes = label_components(mask, 8)
    if sizes.max(initial=0) == 0:
        return np.zeros_like(mask, dtype=bool)
    return labels == int(np.argmax(sizes))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` plus every background region that does not touch the image border (4-connected)."""
    labels, _ = label_components(~mask, 4)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    outside = np.isin(labels, border[border > 0])
    return ~outside


# ------------------------------------------------------------------------------------ the head
def _work_image(grey: Image.Image) -> Image.Image:
    w, h = grey.size
    scale = min(1.0, WORK_SIDE / max(w, h))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = grey.resize(size, Image.Resampling.BILINEAR) if size != grey.size else grey
    return small.filter(ImageFilter.GaussianBlur(1))


def _work_mask(grey: Image.Image) -> np.ndarray:
    """The filled head mask at the working resolution."""
    small = np.asarray(_work_image(grey))
    threshold = otsu_threshold(small) / 2
    fg = small > threshold
    if not fg.any():
        return fg
    fg = erode(dilate(fg, 2), 2)  # closing: bridges the dark skull and thin gaps in the scalp
    head = fill_holes(largest_component(fg))
    opened = dilate(erode(head, 2), 2)  # opening: drops thin attachments (rulers, lines, text)
    return largest_component(opened) if opened.any() else head


def _to_size(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A working-resolution mask scaled back to ``size`` (w, h): bilinear, then halfway threshold."""
    if (mask.shape[1], mask.shape[0]) == tuple(size):
        return mask
    img = Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.BILINEAR)
    return np.asarray(img) >= 128


def _box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1), x1/y1 exclusive, of the True pixels; None when there are none."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def head_masks(grey: Image.Image | np.ndarray, *margins: float) -> list[np.ndarray]:
    """Boolean head masks at the image's size, one per margin, each dilated by that margin × the head
    box's longer side (the head is found once). All False for an image with no foreground."""
    grey = grey if isinstance(grey, Image.Image) else Image.fromarray(np.asarray(grey, dtype=np.uint8))
    work = _work_mask(grey)
    box = _box(work)
    if box is None:
        return [np.zeros((grey.size[1], grey.size[0]), dtype=bool) for _ in margins]
    side = max(box[2] - box[0], box[3] - box[1])
    return [_to_size(dilate(work, math.ceil(m * side)) if m > 0 else work, grey.size) for m in margins]


def head_mask(grey: Image.Image | np.ndarray, margin: float = 0.0) -> np.ndarray:
    """Boolean head mask at the image's size, dilated by ``margin`` × the head box's longer side."""
    return head_masks(grey, margin)[0]


def head_box(mask: np.ndarray, margin: float = 0.0) -> tuple[int, int, int, int] | None:
    """The mask's bounding box widened by ``margin`` × its longer side on every side, clipped to the image."""
    box = _box(mask)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    pad = round(margin * max(x1 - x0, y1 - y0))
    h, w = mask.shape
    return max(0, x0 - pad), max(0, y0 - pad), min(w, x1 + pad), min(h, y1 + pad)


def brain_mask(grey: Image.Image | np.ndarray, rim: float = 0.08) -> np.ndarray:
    """The head mask without its outer rim (scalp and skull): eroded by ``rim`` × the head box's shorter side."""
    mask = head_mask(grey)
    box = _box(mask)
    if box is None:
        return mask
    return erode(mask, round(rim * min(box[2] - box[0], box[3] - box[1])))


def apply_settings(image: np.ndarray, widened: np.ndarray, crop: str = "none",
                   background: str = "keep") -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """(image, box): ``background="zero"`` zeroes the pixels outside ``widened`` (the head mask with
    its margin), ``crop="head"`` crops to ``widened``'s bounding box; box = where the result lies in
    the input (x0, y0, x1, y1). An empty mask leaves the image whole."""
    if crop not in CROPS or background not in BACKGROUNDS:
        raise ValueError(f"crop must be one of {CROPS} and background one of {BACKGROUNDS}, "
                         f"got {crop!r}, {background!r}")
    h, w = image.shape
    box = (0, 0, w, h)
    if not widened.any():
        return image, box
    if background == "zero":
        image = np.where(widened, image, 0).astype(np.uint8)
    if crop == "head":
        box = head_box(widened) or box  # never None: widened has a pixel
        image = image[box[1]:box[3], box[0]:box[2]]
    return image, box


def prepare(grey: Image.Image, size: int | None = None, crop: str = "none", background: str = "keep",
            margin: float = 0.0) -> Image.Image:
    """A grey image with the head crop and background setting applied (``apply_settings``), then
    resized to size × size (PIL bilinear; ``None`` keeps the size). An image with no head found is left whole."""
    grey = grey.convert("L")
    if crop != "none" or background != "keep":
        image, _ = apply_settings(np.asarray(grey), head_mask(grey, margin), crop, background)
        grey = Image.fromarray(np.ascontiguousarray(image))
    if size is not None and grey.size != (size, size):
        grey = grey.resize((size, size), Image.Resampling.BILINEAR)
    return grey


# ---------------------------------------------------------------------- the model's input
def model_input(paths, pre: dict) -> np.ndarray:
    """Image files → the model's float32 input (N × C × H × W) as a model card's ``preprocessing``
    describes it (``crop``, ``background``, ``margin``, ``resize``, ``channels``, ``scale``, ``mean``, ``std``)."""
    batch = []
    for path in paths:
        grey = prepare(load_grey(path), pre["resize"]["height"], pre.get("crop", "none"),
                       pre.get("background", "keep"), pre.get("margin", 0.0))
        x = np.asarray(grey, dtype=np.float32) * np.float32(pre["scale"])
        x = np.repeat(x[None], pre["channels"], axis=0)
        mean = np.asarray(pre["mean"], np.float32)[:, None, None]
        std = np.asarray(pre["std"], np.float32)[:, None, None]
        batch.append((x - mean) / std)
    return np.stack(batch).astype(np.float32)
