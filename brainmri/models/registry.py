"""Model registry, pretrained weights and named parameter groups.

``build_model(model_cfg, num_classes, in_channels, image_size)`` returns a ``nn.Module`` for any
architecture of the registry: ``baseline_cnn``, ``torchvision:<name>`` for every torchvision
classification model (``resnet50``/``resnet152`` are aliases of ``torchvision:resnet50``/``152``)
or ``timm:<name>`` for every timm model (``timm.create_model(name, num_classes=…, in_chans=1|3)``;
a pretrained tag may follow the name: ``timm:resnet10t.c3_in1k``; timm is imported only for these).
The classifier's last layer is replaced for the data's classes (``model.head: linear | mlp``),
grey input (``in_channels=1``) gets a first convolution whose weights are the pretrained RGB
filters summed over colour (exactly the 3-channel network fed a replicated grey image).
Which pretrained weights a model config loads is decided in one place, :func:`pretrained_source`
(``brainmri.models.weights`` fetches and caches the file it names). Parameters are addressed by
named groups (``parameter_groups``/``assign_groups``) so phases can train and schedule them
separately. Knows nothing about data or training loops.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Sequence
from typing import cast

import torch
from torch import nn
from torchvision import models as tvm

from brainmri.models.weights import WeightsError, fetch_weights, hub_file, load_state_dict


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


TORCHVISION = "torchvision:"
TIMM = "timm:"
ALIASES = {"resnet50": "torchvision:resnet50", "resnet152": "torchvision:resnet152"}
BUILTIN = ("baseline_cnn",)


def torchvision_models() -> list[str]:
    """Every torchvision classification model name (``resnet50``, ``efficientnet_b0``, ``vit_b_16`` …)."""
    return tvm.list_models(module=tvm)


def architectures() -> list[str]:
    """The registry: every valid ``model.arch``."""
    return [*BUILTIN, *ALIASES, *(TORCHVISION + n for n in torchvision_models())]


def torchvision_name(arch: str) -> str | None:
    """``torchvision:resnet50`` / ``resnet50`` → ``resnet50``; None for a built-in or timm architecture."""
    arch = ALIASES.get(arch, arch)
    return arch[len(TORCHVISION):] if arch.startswith(TORCHVISION) else None


def timm_name(arch: str) -> str | None:
    """``timm:resnet10t`` → ``resnet10t`` (a ``.tag`` kept); None for any other architecture."""
    return arch[len(TIMM):] if arch.startswith(TIMM) else None


def timm_pretrained_cfg(name: str) -> dict:
    """timm's pretrained config of ``name`` (``arch`` or ``arch.tag``): weights URL, hub id, first conv, input size."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    return cfg.to_dict() if cfg is not None else {}


def check_arch(arch: str) -> None:
    """Raise ``ValueError`` naming the valid architectures when ``arch`` is not in the registry."""
    name = torchvision_name(arch)
    if arch in BUILTIN or (name is not None and name in torchvision_models()):
        return
    name = timm_name(arch)
    if name is not None:
        import timm

        if timm.is_model(name.split(".")[0]):
            return
        raise ValueError(f"unknown model.arch {arch!r}: timm has no model {name.split('.')[0]!r} "
                         f"(timm.list_models() lists them, e.g. resnet10t, resnet18, convnext_atto, efficientnet_b0)")
    raise ValueError(f"unknown model.arch {arch!r} (choose from {', '.join(BUILTIN + tuple(ALIASES))}, "
                     f"timm:<any timm model> or torchvision:<name> with <name> one of "
                     f"{', '.join(torchvision_models())})")


def min_image_size(model_cfg) -> tuple[int, bool]:
    """(smallest input side, whether it is the only one) for ``model_cfg.arch``: each baseline
    block halves the image; a torchvision model needs at least its weights' ``min_size`` and 32
    (five stride-2 stages); a vision transformer takes exactly its patch grid's size (timm:
    a model whose pretrained config says ``fixed_input_size`` takes exactly its ``input_size``)."""
    name = timm_name(model_cfg.arch)
    if name is not None:
        cfg = timm_pretrained_cfg(name)
        return (cfg["input_size"][-1], True) if cfg.get("fixed_input_size") else (32, False)
    name = torchvision_name(model_cfg.arch)
    if name is None:
        return 2 ** len(model_cfg.conv_widths), False
    side = max(32, *torchvision_weights(name).meta.get("min_size", (1, 1)))
    return side, name.startswith("vit_")


def torchvision_weights(name: str):
    """The DEFAULT ImageNet weights enum member of torchvision model ``name``."""
    return tvm.get_model_weights(name).DEFAULT


def timm_weights_source(name: str) -> tuple[str, str | None] | None:
    """(URL, cache file name) of timm model ``name``'s pretrained weights, as timm itself prefers them:
    the Hugging Face hub file when its config names a hub id, else its ``url``; None when it has none."""
    cfg = timm_pretrained_cfg(name)
    if cfg.get("hf_hub_id"):
        return hub_file(cfg["hf_hub_id"], cfg.get("hf_hub_filename") or "model.safetensors")
    if cfg.get("url"):
        return cfg["url"], None
    return None


def pretrained_source(model_cfg) -> tuple[str, str | None] | None:
    """The one answer to "which weights does ``model.pretrained=true`` load": (URL, cache file name or None
    for the URL's own) — ``model.weights_url``, else timm's (``timm_weights_source``), else torchvision's
    DEFAULT weights of the architecture; None when the architecture has none."""
    if model_cfg.weights_url:
        return model_cfg.weights_url, None
    name = timm_name(model_cfg.arch)
    if name is not None:
        return timm_weights_source(name)
    name = torchvision_name(model_cfg.arch)
    return (torchvision_weights(name).url, None) if name else None


def pretrained_url(model_cfg) -> str | None:
    """Where ``model.pretrained=true`` downloads from (:func:`pretrained_source`)."""
    source = pretrained_source(model_cfg)
    return source[0] if source else None


def ensure_weights(cfg):
    """Fetch the pretrained weights a run will load into the local torch cache (once per machine,
    under a lock); None when it trains from scratch or reads ``model.weights``."""
    m = cfg.model
    if not m.pretrained or m.weights:
        return None
    return fetch_pretrained(m)


def fetch_pretrained(m):
    """The local file of :func:`pretrained_source` (fetched once per machine); a WeightsError when none."""
    source = pretrained_source(m)
    if source is None:
        raise WeightsError(f"model.pretrained=true but model.arch={m.arch} has no pretrained weights; "
                           f"set model.weights_url, model.weights, or model.pretrained=false")
    return fetch_weights(*source)


# ------------------------------------------------------------------ the head
def _head_path(model: nn.Module) -> str:
    """Dotted name of the classifier's output layer: the model's last Linear (last Conv2d if none)."""
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    conv = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not (linear or conv):
        raise ValueError(f"{type(model).__name__}: no Linear or Conv2d output layer to replace")
    return (linear or conv)[-1]


def head_name(model: nn.Module) -> str:
    """The top-level module holding the classifier (``fc``, ``classifier``, ``heads``, ``head`` …)."""
    return _head_path(model).split(".")[0]


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def _new_head(model_cfg, old: nn.Module, num_classes: int) -> nn.Module:
    if isinstance(old, nn.Conv2d):  # SqueezeNet: a 1×1 convolution classifies every position
        if model_cfg.head != "linear":
            raise ValueError(f"model.head={model_cfg.head} needs a Linear classifier; "
                             f"model.arch={model_cfg.arch} has a convolutional one (use model.head=linear)")
        # torch types a Conv2d's kernel_size and stride as tuple[int, ...]; they are pairs
        return nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride)  # type: ignore[arg-type]
    features = cast(int, old.in_features)
    if model_cfg.head == "mlp":
        return nn.Sequential(
            nn.Linear(features, model_cfg.head_hidden), nn.ReLU(inplace=True),
            nn.Dropout(model_cfg.dropout), nn.Linear(model_cfg.head_hidden, num_classes),
        )
    return nn.Linear(features, num_classes)


def _grey_first_conv(model: nn.Module) -> None:
    """Replace the first 3-channel convolution by a 1-channel one with the RGB filters summed."""
    for path, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and m.in_channels == 3:
            conv = nn.Conv2d(1, m.out_channels, m.kernel_size, m.stride, m.padding,  # type: ignore[arg-type]
                             m.dilation, m.groups, m.bias is not None, m.padding_mode)  # type: ignore[arg-type]
            with torch.no_grad():
                conv.weight.copy_(m.weight.sum(dim=1, keepdim=True))
                if m.bias is not None and conv.bias is not None:
                    conv.bias.copy_(m.bias)
            _set_module(model, path, conv)
            return
    raise ValueError(f"{type(model).__name__}: no 3-channel input convolution to adapt to grey input")


_AUX = ("AuxLogits.", "aux1.", "aux2.")  # Inception/GoogLeNet auxiliary classifiers (brainmri trains without)


def _load_backbone(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load everything but the classifier's output layer; any other mismatch is an error."""
    head = _head_path(model) + "."
    own = model.state_dict()
    backbone = {k: v for k, v in state.items() if not k.startswith(head) and not k.startswith(_AUX)}
    missing = [k for k in own if not k.startswith(head) and k not in backbone]
    unexpected = [k for k in backbone if k not in own]
    bad_shape = [k for k in backbone if k in own and own[k].shape != backbone[k].shape]
    if missing or unexpected or bad_shape:
        raise WeightsError(
            f"{source} does not match the architecture: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}, wrong shape {bad_shape[:3]}"
        )
    model.load_state_dict(backbone, strict=False)


def _torchvision(model_cfg, num_classes: int, in_channels: int) -> nn.Module:
    name = torchvision_name(model_cfg.arch)
    if name is None:
        raise ValueError(f"model.arch={model_cfg.arch} is not a torchvision architecture")
    scratch = {"aux_logits": False} if name in ("googlenet", "inception_v3") else {}
    if model_cfg.weights:
        model = tvm.get_model(name, weights=None, **scratch)
        _load_backbone(model, load_state_dict(model_cfg.weights), f"model.weights={model_cfg.weights}")
    elif model_cfg.pretrained and model_cfg.weights_url:
        model = tvm.get_model(name, weights=None, **scratch)
        path = fetch_pretrained(model_cfg)
        _load_backbone(model, load_state_dict(path, "model.weights_url"), f"model.weights_url={model_cfg.weights_url}")
    elif model_cfg.pretrained:
        fetch_pretrained(model_cfg)  # once per machine, under a lock; then torchvision reads the cache
        # torchvision's own key fix-ups and settings apply
        model = tvm.get_model(name, weights=torchvision_weights(name))
    else:
        model = tvm.get_model(name, weights=None, **scratch)
    head = _head_path(model)
    _set_module(model, head, _new_head(model_cfg, model.get_submodule(head), num_classes))
    if in_channels == 1:
        _grey_first_conv(model)
    return model


def _timm(model_cfg, num_classes: int, in_channels: int) -> nn.Module:
    """``timm.create_model(name, num_classes, in_chans)``; pretrained weights come through
    ``fetch_weights`` (fetch once, offline rules) and load like torchvision's: everything but the
    output layer must match, the first convolution's RGB filters are summed for grey input."""
    import timm
    from timm.models import adapt_input_conv

    name = timm_name(model_cfg.arch)
    if name is None:
        raise ValueError(f"model.arch={model_cfg.arch} is not a timm architecture")
    state, source = None, ""
    if model_cfg.weights:
        state, source = load_state_dict(model_cfg.weights), f"model.weights={model_cfg.weights}"
    elif model_cfg.pretrained:
        path = fetch_pretrained(model_cfg)
        key = "model.weights_url" if model_cfg.weights_url else "model.pretrained"
        state, source = load_state_dict(path, key), f"{key} ({path.name})"
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels)
    if state is not None:
        first = cast(dict, model.pretrained_cfg).get("first_conv")
        for conv in [first] if isinstance(first, str) else list(first or ()):
            weight = state.get(f"{conv}.weight")
            if weight is not None and weight.dim() == 4 and weight.shape[1] != in_channels:
                state[f"{conv}.weight"] = adapt_input_conv(in_channels, weight)  # grey: the RGB filters summed
        _load_backbone(model, state, source)
    if model_cfg.head != "linear":
        path = _head_path(model)
        _set_module(model, path, _new_head(model_cfg, model.get_submodule(path), num_classes))
    return model


def build_model(model_cfg, num_classes: int, in_channels: int = 3, image_size: int = 224) -> nn.Module:
    """Build the network for ``model_cfg.arch`` (see ``architectures()``).

    Example:
        >>> net = build_model(ModelConfig(arch="torchvision:efficientnet_b0"), num_classes=4, in_channels=1)
    """
    check_arch(model_cfg.arch)
    if model_cfg.arch == "baseline_cnn":
        return BaselineCNN(num_classes, in_channels, image_size, tuple(model_cfg.conv_widths),
                           model_cfg.hidden, model_cfg.dropout)
    if timm_name(model_cfg.arch) is not None:
        return _timm(model_cfg, num_classes, in_channels)
    return _torchvision(model_cfg, num_classes, in_channels)


def skeleton(model_cfg, in_channels: int = 3, image_size: int = 224) -> nn.Module:
    """The architecture on the meta device (names and shapes only: no memory, no weights), to check
    a config's parameter groups before any compute; cached per architecture settings."""
    m = model_cfg
    return _skeleton(m.arch, m.head, m.head_hidden, m.dropout, m.hidden, tuple(m.conv_widths), in_channels, image_size)


@functools.lru_cache(maxsize=16)
def _skeleton(arch, head, head_hidden, dropout, hidden, channels, in_channels, image_size) -> nn.Module:
    cfg = types.SimpleNamespace(arch=arch, head=head, head_hidden=head_hidden, dropout=dropout, hidden=hidden,
                                conv_widths=list(channels), pretrained=False, weights=None, weights_url=None)
    with torch.device("meta"):
        return build_model(cfg, 4, in_channels, image_size)


def supports_feature_cache(model: nn.Module) -> bool:
    """Whether ``brainmri.train.features`` can cache this model's backbone output (torchvision ResNets)."""
    return isinstance(model, tvm.ResNet)


# ------------------------------------------------------------ parameter groups
def _has_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def parameter_groups(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Every named parameter group of ``model`` (a phase's ``train`` and ``lr_mult`` name them):

    - ``head``: the classifier (``fc``, ``classifier``, ``heads`` …); ``backbone``: everything else;
    - each top-level module (``layer4`` of a ResNet, ``features`` of an EfficientNet/ConvNeXt/DenseNet,
      ``encoder`` of a ViT) and each stage in a top-level or second-level Sequential/ModuleList
      (``features.6``, ``features.denseblock4``, ``layer4.2``, ``encoder.layers.encoder_layer_11``).

    Groups nest (``layer4`` is part of ``backbone``); ``assign_groups`` gives each parameter to the
    most specific group a phase names.
    """
    head = head_name(model)
    named = list(model.named_parameters())
    groups = {"head": [(n, p) for n, p in named if _in_group(n, head)],
              "backbone": [(n, p) for n, p in named if not _in_group(n, head)]}
    for path, module in model.named_modules():
        depth = path.count(".") + 1
        if not path or path == head or _in_group(path, head) or depth > 3 or not _has_params(module):
            continue
        parent = model.get_submodule(path.rpartition(".")[0]) if depth > 1 else None
        if depth == 1 or isinstance(parent, (nn.Sequential, nn.ModuleList)):
            groups[path] = [(n, p) for n, p in named if _in_group(n, path)]
    return groups


def _in_group(param: str, path: str) -> bool:
    return param.startswith(path + ".")


def _specificity(group: str) -> int:
    return 0 if group == "backbone" else 1 if group == "head" else group.count(".") + 1


def assign_groups(model: nn.Module, names: Sequence[str]) -> dict[str, list[nn.Parameter]]:
    """Split the parameters of ``names`` (``all`` = backbone + head) into disjoint groups, in the
    order given: a parameter goes to the most specific named group holding it, so
    ``[backbone, layer4, head]`` gives layer4 its own LR and the rest of the backbone another.
    Groups left with no parameter are dropped. Raises ``ValueError`` for a name the model lacks."""
    available = parameter_groups(model)
    wanted = [g for n in names for g in (["backbone", "head"] if n == "all" else [n])]
    wanted = list(dict.fromkeys(wanted))
    unknown = [n for n in wanted if n not in available]
    if unknown:
        top = [g for g in available if "." not in g]
        raise ValueError(f"unknown parameter group {unknown[0]!r} (this model has: {', '.join(top)}, all, "
                         f"and stages such as {', '.join([g for g in available if '.' in g][-3:]) or '-'})")
    owner: dict[str, str] = {}
    for group in sorted(wanted, key=_specificity):  # later (more specific) groups win
        for n, _ in available[group]:
            owner[n] = group
    params = dict(model.named_parameters())
    out = {g: [params[n] for n, o in owner.items() if o == g] for g in wanted}
    return {g: ps for g, ps in out.items() if ps}


def resolve_groups(model: nn.Module, names: list[str]) -> list[str]:
    """The groups a phase naming ``names`` trains (``all`` expanded, empty ones dropped)."""
    return list(assign_groups(model, names))


def set_trainable(model: nn.Module, groups: list[str]) -> None:
    """Freeze every parameter outside ``groups``; frozen BatchNorm layers keep their statistics."""
    chosen = {id(p) for ps in assign_groups(model, groups).values() for p in ps}
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)


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
    """The layer Grad-CAM explains: the output of the last conv block (baseline), ``layer4`` (ResNets)
    or a timm model's last feature stage."""
    if isinstance(model, BaselineCNN):
        return model.features[-1]  # Conv → ReLU → MaxPool of the last block
    if hasattr(model, "layer4"):
        return cast(nn.Sequential, model.layer4)[-1]
    info = getattr(model, "feature_info", None)  # timm: the last feature stage
    if info:
        return model.get_submodule(info[-1]["module"])
    raise ValueError(f"no Grad-CAM target layer for {type(model).__name__}")
