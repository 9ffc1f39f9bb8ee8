"""Image decoding and torchvision.transforms v2 presets.

Three steps: decoding (file → uint8 tensor C×H×W at the recipe's size and colour mode, with the
head crop and background setting of ``brainmri.data.preprocess``), per-image augmentation on uint8
tensors, and per-batch float conversion + normalisation on the device. The decoded-image cache
stores exactly what ``Decoder`` returns, so cached and uncached paths give identical tensors.

``train_transform`` builds ``data.augment`` (``brainmri.config.AUGMENTATIONS``, always applied in
that order whatever the list's order): ``hflip``, ``vflip``, ``rotation`` (``data.rotation_degrees``),
``rrc`` (random-resized crop), ``affine`` (rotate, translate, scale, shear), ``trivialaugment``
(TrivialAugmentWide), ``randaugment``, ``intensity`` (``MRIntensity``: brightness, contrast, gamma,
optional Rician-like noise) and ``erasing`` (random erasing), with the parameters of ``data.aug``.
Every random draw comes from torch's global generator, so ``brainmri.data.datasets.EpochSeeded``
fixes each image's augmentation by (seed, epoch, image).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from brainmri.data import preprocess
from brainmri.data.dicom import dicom_values
from brainmri.data.files import is_dicom_file, load_pil

DEEP_MAX = 65535  # a deep decoder's full scale: uint16 (an 8-bit value v becomes v · 257)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Decoder:
    """``path → uint8 tensor (channels, size, size)``: a picklable, deterministic decode step.

    With ``crop="head"`` or ``background="zero"`` the grey image goes through
    ``brainmri.data.preprocess.prepare`` (numpy/PIL, resize included), the very code an exported
    model folder carries as ``preprocess.py``; otherwise it is resized by torchvision as before.

    ``deep=True`` (data holding DICOM slices): every image decodes to a uint16 tensor on the full
    0–65535 scale, so 12- and 16-bit DICOM intensities keep their precision through resizing,
    augmentation and the decoded cache until the batch's float conversion (8-bit files are scaled
    by 257: the same float input as before). DICOM slices are windowed as ``window`` says
    (``brainmri.data.dicom``).
    """

    def __init__(self, image_size: int, channels: int, crop: str = "none", background: str = "keep",
                 margin: float = 0.0, window: str = "file", deep: bool = False):
        self.image_size = image_size
        self.channels = channels
        self.crop, self.background, self.margin = crop, background, margin
        self.window, self.deep = window, deep
        self.resize = v2.Resize((image_size, image_size), antialias=True)

    @classmethod
    def from_config(cls, data_cfg, deep: bool = False) -> Decoder:
        """The decoder of a config's ``data`` section (size, channels, crop, background, margin, DICOM window)."""
        dicom = getattr(data_cfg, "dicom", None)
        return cls(data_cfg.input_size, data_cfg.input_channels, data_cfg.crop, data_cfg.background,
                   data_cfg.head_margin, dicom.window if dicom is not None else "file", deep)

    @property
    def prepares(self) -> bool:
        return self.crop != "none" or self.background != "keep"

    def __call__(self, path: str | Path) -> torch.Tensor:
        if is_dicom_file(path):
            values = dicom_values(path, self.window)
            if self.deep:
                return self.from_values(values)
            return self.from_grey(Image.fromarray(np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8), "L"))
        grey = load_pil(path, 1)
        return self.from_values(np.asarray(grey, np.float64) / 255.0) if self.deep else self.from_grey(grey)

    def from_values(self, values: np.ndarray) -> torch.Tensor:
        """Intensities in [0, 1] (H × W) → a uint16 tensor (channels, size, size): the deep decode."""
        if self.prepares:  # the head is found on the 8-bit picture; the mask and box apply to the full values
            grey = Image.fromarray(np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8), "L")
            mask = preprocess.head_mask(grey, self.margin)
            if mask.any():
                if self.background == "zero":
                    values = np.where(mask, values, 0.0)
                box = preprocess.head_box(mask) if self.crop == "head" else None
                if box is not None:
                    x0, y0, x1, y1 = box
                    values = values[y0:y1, x0:x1]
        x = self.resize(torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))[None])
        img = (x.clamp(0.0, 1.0) * DEEP_MAX).round().to(torch.uint16)
        return (img.expand(self.channels, -1, -1) if self.channels > 1 else img).contiguous()

    def from_grey(self, grey: Image.Image) -> torch.Tensor:
        """A grey-scale (mode ``L``) image already decoded (e.g. a DICOM slice) → the same tensor."""
        if self.prepares:
            grey = preprocess.prepare(grey, self.image_size, self.crop, self.background, self.margin)
        img = v2.functional.pil_to_tensor(grey if self.channels == 1 else grey.convert("RGB"))
        return (img if self.prepares else self.resize(img)).contiguous()

    def key(self) -> str:
        """Names what the decoder produces (the decoded-image and feature caches are keyed on it)."""
        base = f"{self.image_size}px-{self.channels}ch"
        base += "-16bit" if self.deep else ""
        base += f"-window{self.window}" if self.window != "file" else ""
        return f"{base}-crop{self.crop}-bg{self.background}-m{self.margin:g}" if self.prepares else base


def _normalize(channels: int, kind: str) -> list[v2.Transform]:
    if kind == "none":
        return []
    if channels == 1:
        return [v2.Normalize([sum(IMAGENET_MEAN) / 3], [sum(IMAGENET_STD) / 3])]
    return [v2.Normalize(list(IMAGENET_MEAN), list(IMAGENET_STD))]


class MRIntensity(v2.Transform):
    """MR intensity augmentation on uint8 images: brightness, contrast, gamma, optional Rician-like noise.

    Per image: multiply by U(1-b, 1+b); stretch about the mean of the non-zero pixels by
    U(1-c, 1+c); apply a gamma drawn log-uniformly from ``gamma``; with ``noise`` > 0 take the
    magnitude of the image plus complex Gaussian noise of sigma U(0, noise)·255 (Rician, as MR
    magnitude images are). Pixels that are exactly 0 stay 0 (a zeroed background, rotation fill),
    and every channel gets the same change (grey replicated to 3 channels stays grey).
    """

    def __init__(self, brightness: float = 0.2, contrast: float = 0.2, gamma=(0.8, 1.25), noise: float = 0.0):
        super().__init__()
        self.brightness, self.contrast, self.gamma, self.noise = brightness, contrast, tuple(gamma), noise

    def make_params(self, flat_inputs):
        u = torch.rand(4).tolist()
        lo, hi = math.log(self.gamma[0]), math.log(self.gamma[1])
        return {"brightness": 1 + self.brightness * (2 * u[0] - 1), "contrast": 1 + self.contrast * (2 * u[1] - 1),
                "gamma": math.exp(lo + (hi - lo) * u[2]), "sigma": self.noise * u[3] * 255}

    def transform(self, inpt, params):
        if not isinstance(inpt, torch.Tensor) or inpt.dtype not in (torch.uint8, torch.uint16):
            return inpt
        top = 255 if inpt.dtype == torch.uint8 else DEEP_MAX  # uint16: the deep decoder's full scale
        zero = inpt[:1] == 0
        x = inpt[:1].float() * params["brightness"]
        keep = ~zero
        mean = x[keep].mean() if keep.any() else x.new_zeros(())
        x = ((x - mean) * params["contrast"] + mean).clamp(0, top)
        x = top * (x / top) ** params["gamma"]
        if params["sigma"] > 0:
            real, imag = torch.randn(2, *x.shape) * params["sigma"] * (top / 255)
            x = torch.sqrt((x + real) ** 2 + imag ** 2)
        x = torch.where(zero, 0.0, x).round().clamp(0, top).to(inpt.dtype)
        return x.expand_as(inpt).clone() if inpt.shape[0] > 1 else x


def train_transform(data_cfg) -> v2.Compose:
    """Per-image augmentation for training: uint8 tensor in, uint8 tensor out (see the module docstring)."""
    aug, size, names = data_cfg.aug, data_cfg.input_size, set(data_cfg.augment)
    ops: list[v2.Transform] = []
    if "hflip" in names:
        ops.append(v2.RandomHorizontalFlip())
    if "vflip" in names:
        ops.append(v2.RandomVerticalFlip())
    if "rotation" in names and data_cfg.rotation_degrees > 0:
        ops.append(v2.RandomRotation(data_cfg.rotation_degrees))
    if "rrc" in names:
        ops.append(v2.RandomResizedCrop(size, scale=tuple(aug.rrc_scale), ratio=tuple(aug.rrc_ratio), antialias=True))
    if "affine" in names:
        ops.append(v2.RandomAffine(aug.affine_degrees, translate=(aug.affine_translate, aug.affine_translate),
                                   scale=tuple(aug.affine_scale), shear=aug.affine_shear))
    if "trivialaugment" in names:
        ops.append(v2.TrivialAugmentWide())
    if "randaugment" in names:
        ops.append(v2.RandAugment(aug.randaugment_ops, aug.randaugment_magnitude))
    if "intensity" in names:
        ops.append(MRIntensity(aug.brightness, aug.contrast, aug.gamma, aug.noise))
    if "erasing" in names:
        ops.append(v2.RandomErasing(aug.erasing_p, scale=tuple(aug.erasing_scale), value=0))
    return v2.Compose(ops) if ops else v2.Identity()


def eval_transform(data_cfg) -> v2.Transform:
    """Validation and test images need no per-image work: they are decoded at the recipe's size."""
    return v2.Identity()


def batch_normalizer(data_cfg) -> v2.Compose:
    """uint8 batch (B, C, H, W) → normalised float batch, once per batch on the device.

    Loaders ship uint8 (4× less to collate and copy to the GPU); converting per batch rather than
    per image is what lets the decoded-image cache pay off.
    """
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), *_normalize(data_cfg.input_channels, data_cfg.normalize)])
