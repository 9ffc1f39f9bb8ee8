"""Grad-CAM explanations (the ``grad-cam`` package) and an HTML contact sheet of them.

The target layer per architecture is ``brainmri.models.registry.cam_target_layer`` (last conv block of the
baseline CNN, ``layer4`` of the ResNets). ``cam_maps`` returns one map per image in [0, 1] at the
model's input size; ``CamWriter`` saves an overlay PNG per input, one ``index.html`` with every
overlay inlined (base64), so the sheet opens anywhere, and ``cams.csv``. Each map's share of energy
inside the brain (``brain_energy``: the head mask of the input without its scalp-and-skull rim,
``brainmri.data.preprocess.brain_mask``) is shown under it, averaged in the sheet's header and
listed in ``cams.csv``: a model looking at the frame, the background or the skull scores low.
``energy_in_mask`` / ``points_in_mask`` score a map against a known lesion mask (energy inside the
mask; the pointing game).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from brainmri.atomic import atomic_write
from brainmri.data.preprocess import brain_mask
from brainmri.models.registry import cam_target_layer

BRAIN_RIM = 0.08  # the scalp and skull: this share of the head box's shorter side, eroded off the head mask


def cam_maps(model: torch.nn.Module, inputs: torch.Tensor, targets: list[int]) -> np.ndarray:
    """(B, H, W) Grad-CAM maps in [0, 1] for class ``targets[b]`` of each normalised input."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    was_training = model.training
    model.eval()
    try:
        with GradCAM(model=model, target_layers=[cam_target_layer(model)]) as cam:
            maps = cam(input_tensor=inputs.float(), targets=[ClassifierOutputTarget(int(t)) for t in targets])
    finally:
        model.train(was_training)
    return np.nan_to_num(np.asarray(maps, dtype=np.float32))


def overlay(image: torch.Tensor, cam: np.ndarray) -> np.ndarray:
    """uint8 (C, H, W) image + (H, W) map → uint8 (H, W, 3) heat-map overlay."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    rgb = image.float().div(255).permute(1, 2, 0).numpy()
    if rgb.shape[2] == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    return show_cam_on_image(rgb.astype(np.float32), cam, use_rgb=True, image_weight=0.6)


def energy_in_mask(cam: np.ndarray, mask: np.ndarray) -> float:
    """Share of the map's mass inside ``mask`` (the map resized to the mask first)."""
    cam = _resize(cam, mask.shape)
    total = float(cam.sum())
    return float(cam[mask].sum() / total) if total > 0 else 0.0


def brain_energy(cam: np.ndarray, grey: np.ndarray) -> float:
    """Share of the map's energy inside the brain of the (uint8, H×W) input ``grey``: its head mask
    eroded by ``BRAIN_RIM``; NaN when no head is found."""
    brain = brain_mask(grey, BRAIN_RIM)
    return energy_in_mask(cam, brain) if brain.any() else math.nan


def points_in_mask(cam: np.ndarray, mask: np.ndarray) -> bool:
    """Pointing game: is the map's maximum inside ``mask``?"""
    cam = _resize(cam, mask.shape)
    return bool(mask.flat[int(cam.argmax())])


def _resize(cam: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if cam.shape == shape:
        return cam
    return np.asarray(Image.fromarray(cam.astype(np.float32), mode="F").resize(shape[::-1], Image.Resampling.BILINEAR))


def _png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


class CamWriter:
    """Collects overlays batch by batch (``add``) and writes PNGs plus ``index.html`` (``finish``)."""

    def __init__(self, model: torch.nn.Module, classes: list[str], out_dir: str | Path, title: str = ""):
        self.model, self.classes, self.out = model, classes, Path(out_dir)
        self.title = title
        self.out.mkdir(parents=True, exist_ok=True)
        self.rows: list[tuple[str, str, float, str, str, float]] = []
        self.used: set[str] = set()

    def _name(self, path: str) -> str:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(path).stem)[:80] or "image"
        name, k = f"{stem}.png", 1
        while name in self.used:
            k += 1
            name = f"{stem}-{k}.png"
        self.used.add(name)
        return name

    def add(self, inputs: torch.Tensor, images: torch.Tensor, probs: np.ndarray, paths: list[str]) -> None:
        targets = probs.argmax(1).tolist()  # explain the predicted class
        maps = cam_maps(self.model, inputs, targets)
        for img, cam, p, t, path in zip(images, maps, probs, targets, paths, strict=True):
            png = _png_bytes(overlay(img, cam))
            name = self._name(path)
            atomic_write(self.out / name, png)
            grey = img[0].numpy()  # channels are equal copies of the grey image
            self.rows.append((path, self.classes[t], float(p[t]), base64.b64encode(png).decode(),
                              base64.b64encode(_png_bytes(grey)).decode(), brain_energy(cam, grey)))

    def mean_brain_energy(self) -> float:
        """Mean share of the maps' energy inside the brain (images with a head found)."""
        values = [r[5] for r in self.rows if not math.isnan(r[5])]
        return float(np.mean(values)) if values else math.nan

    def finish(self) -> Path:
        cards = "\n".join(
            f'<figure><img src="data:image/png;base64,{src}" alt="input"><img src="data:image/png;base64,{cam}" '
            f'alt="Grad-CAM"><figcaption><b>{html.escape(label)}</b> {prob:.3f} · in brain {_share(brain)}<br>'
            f"<span>{html.escape(path)}</span></figcaption></figure>"
            for path, label, prob, cam, src, brain in self.rows)
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["path", "pred", "probability", "brain_energy"])
        for path, label, prob, _, _, brain in self.rows:
            writer.writerow([path, label, f"{prob:.6f}", "" if math.isnan(brain) else f"{brain:.4f}"])
        atomic_write(self.out / "cams.csv", buf.getvalue())
        page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Grad-CAM {html.escape(self.title)}</title>
<style>body{{font-family:sans-serif;margin:1em}}figure{{display:inline-block;margin:.4em;width:260px;vertical-align:top}}
img{{width:128px;height:128px;image-rendering:pixelated}}figcaption{{font-size:12px}}span{{color:#666;word-break:break-all}}</style>
</head><body><h1>Grad-CAM: {html.escape(self.title)}</h1>
<p>{len(self.rows)} image(s); each: the input and the Grad-CAM of its predicted class (probability shown), and the
share of the map's energy inside the brain (the head mask without the scalp and skull rim; per image in cams.csv).
Mean share inside the brain: <b>{_share(self.mean_brain_energy())}</b>; low values mean the model looks at the frame,
the background or the skull.</p>
{cards}
</body></html>"""
        index = self.out / "index.html"
        atomic_write(index, page)
        return index


def _share(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.2f}"
