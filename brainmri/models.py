"""Model registry, pretrained-weight loading and named parameter groups.

``build_model(model_cfg, num_classes, in_channels, image_size)`` returns a ``nn.Module`` whose
parameters are split into named groups (``head``, ``layer4``, ``backbone`` for ResNets;
``features``, ``head`` for the baseline CNN) so phases can train and schedule them separately.
Knows nothing about data or training loops.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tvm


class WeightsError(RuntimeError):
    """Pretrained weights were asked for but cannot be loaded; the message says how to fix it."""


class BaselineCNN(nn.Module):
    """3 × (Conv3×3 → ReLU → MaxPool2) → Flatten → Linear(hidden) → ReLU → Dropout → Linear."""

    def __init__(self, num_classes: int, in_channels: int = 3, image_size: int = 224,
                 channels: tuple[int, ...] = (32, 64, 128), hidden: int = 256, dropout: float = 0.5):
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_channels
        for width in channels:
            layers += [nn.Conv2d(prev, width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            prev = width
        self.features = nn.Sequential(*layers)
        side = image_size // 2 ** len(channels)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(prev * side * side, hidden), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


_RESNETS = {
    "resnet50": (tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V2),
    "resnet152": (tvm.resnet152, tvm.ResNet152_Weights.IMAGENET1K_V2),
}


def imagenet_weights_path(arch: str) -> Path:
    """Where torchvision keeps the ImageNet checkpoint for ``arch`` in the local torch cache."""
    weights = _RESNETS[arch][1]
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def _load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"model.weights: file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"model.weights: cannot read {path}: {e}") from e
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a brainmri checkpoint
    if not isinstance(state, dict):
        raise WeightsError(f"model.weights: {path} does not hold a state_dict")
    return state


def _load_backbone(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load everything but the classifier head; any other mismatch is an error."""
    own = model.state_dict()
    backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing = [k for k in own if not k.startswith("fc.") and k not in backbone]
    unexpected = [k for k in backbone if k not in own]
    bad_shape = [k for k in backbone if k in own and own[k].shape != backbone[k].shape]
    if missing or unexpected or bad_shape:
        raise WeightsError(
            f"{source} does not match the architecture: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}, wrong shape {bad_shape[:3]}"
        )
    model.load_state_dict(backbone, strict=False)


def _resnet(model_cfg, num_classes: int) -> nn.Module:
    ctor, weights_enum = _RESNETS[model_cfg.arch]
    model = ctor(weights=None)
    if model_cfg.weights:
        _load_backbone(model, _load_state_dict(model_cfg.weights), f"model.weights={model_cfg.weights}")
    elif model_cfg.pretrained:
        cached = imagenet_weights_path(model_cfg.arch)
        if not cached.is_file():
            raise WeightsError(
                f"model.pretrained=true but the ImageNet weights for {model_cfg.arch} are not in the "
                f"local torch cache ({cached}). Download {weights_enum.url} on a machine with network "
                f"access and copy it there (or set TORCH_HOME), or pass model.weights=/path/to/file.pth, "
                f"or set model.pretrained=false to train from random initialisation."
            )
        _load_backbone(model, weights_enum.get_state_dict(progress=False, check_hash=False),
                       f"torchvision {weights_enum}")
    features = model.fc.in_features
    if model_cfg.head == "mlp":
        model.fc = nn.Sequential(
            nn.Linear(features, model_cfg.head_hidden), nn.ReLU(inplace=True),
            nn.Dropout(model_cfg.dropout), nn.Linear(model_cfg.head_hidden, num_classes),
        )
    else:
        model.fc = nn.Linear(features, num_classes)
    return model


def build_model(model_cfg, num_classes: int, in_channels: int = 3, image_size: int = 224) -> nn.Module:
    """Build the network for ``model_cfg.arch``.

    Example:
        >>> net = build_model(ModelConfig(arch="baseline_cnn"), num_classes=4, image_size=64)
    """
    if model_cfg.arch == "baseline_cnn":
        return BaselineCNN(num_classes, in_channels, image_size, tuple(model_cfg.channels),
                           model_cfg.hidden, model_cfg.dropout)
    if in_channels != 3:
        raise ValueError(f"model.arch={model_cfg.arch} needs data.channels=3, got {in_channels}")
    return _resnet(model_cfg, num_classes)


def parameter_groups(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Named parameter groups: ``head`` and ``features`` (baseline) or ``head``/``layer4``/``backbone``."""
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {}
    for name, p in model.named_parameters():
        if name.startswith(("fc.", "head.")):
            group = "head"
        elif name.startswith("layer4."):
            group = "layer4"
        elif name.startswith("features."):
            group = "features"
        else:
            group = "backbone"
        groups.setdefault(group, []).append((name, p))
    return groups


def resolve_groups(model: nn.Module, names: list[str]) -> list[str]:
    """Expand ``all`` and check that every named group exists in this model."""
    available = list(parameter_groups(model))
    if "all" in names:
        return available
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"unknown parameter group {unknown[0]!r} (this model has: {', '.join(available)}, all)")
    return list(names)


def set_trainable(model: nn.Module, groups: list[str]) -> None:
    """Freeze every parameter outside ``groups``; frozen BatchNorm layers keep their statistics."""
    chosen = set(resolve_groups(model, groups))
    for group, params in parameter_groups(model).items():
        for _, p in params:
            p.requires_grad_(group in chosen)


def freeze_frozen_norms(model: nn.Module) -> None:
    """Put BatchNorm layers whose parameters are all frozen in eval mode (call after ``model.train()``).

    A frozen backbone is a fixed feature extractor; letting its running statistics drift would
    change the features under the head (and make a feature cache wrong).
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                m.eval()


def cam_target_layer(model: nn.Module) -> nn.Module:
    """The layer Grad-CAM explains: the output of the last conv block (baseline) or ``layer4`` (ResNets)."""
    if isinstance(model, BaselineCNN):
        return model.features[-1]  # Conv → ReLU → MaxPool of the last block
    if hasattr(model, "layer4"):
        return model.layer4[-1]
    raise ValueError(f"no Grad-CAM target layer for {type(model).__name__}")
