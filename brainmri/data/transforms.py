"""Image decoding and torchvision.transforms v2 presets.

Three steps: decoding (file → uint8 tensor C×H×W at the recipe's size and colour mode), per-image
augmentation on uint8 tensors, and per-batch float conversion + normalisation on the device. The
decoded-image cache stores exactly what ``Decoder`` returns, so cached and uncached paths give
identical tensors.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms import v2

from brainmri.data.files import load_pil

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Decoder:
    """``path → uint8 tensor (channels, size, size)``: a picklable, deterministic decode step."""

    def __init__(self, image_size: int, channels: int):
        self.image_size = image_size
        self.channels = channels
        self.resize = v2.Resize((image_size, image_size), antialias=True)

    def __call__(self, path: str | Path) -> torch.Tensor:
        return self.from_grey(load_pil(path, 1))

    def from_grey(self, grey: Image.Image) -> torch.Tensor:
        """A grey-scale (mode ``L``) image already decoded (e.g. a DICOM slice) → the same tensor."""
        img = v2.functional.pil_to_tensor(grey if self.channels == 1 else grey.convert("RGB"))
        return self.resize(img).contiguous()

    def key(self) -> str:
        return f"{self.image_size}px-{self.channels}ch"


def _normalize(channels: int, kind: str) -> list[v2.Transform]:
    if kind == "none":
        return []
    if channels == 1:
        return [v2.Normalize([sum(IMAGENET_MEAN) / 3], [sum(IMAGENET_STD) / 3])]
    return [v2.Normalize(list(IMAGENET_MEAN), list(IMAGENET_STD))]


def train_transform(data_cfg) -> v2.Compose:
    """Per-image augmentation for training: uint8 tensor in, uint8 tensor out."""
    ops: list[v2.Transform] = []
    if "hflip" in data_cfg.augment:
        ops.append(v2.RandomHorizontalFlip())
    if "vflip" in data_cfg.augment:
        ops.append(v2.RandomVerticalFlip())
    if "rotation" in data_cfg.augment and data_cfg.rotation_degrees > 0:
        ops.append(v2.RandomRotation(data_cfg.rotation_degrees))
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
