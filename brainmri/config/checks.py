"""Checking a built ``RunConfig``: value ranges, choices and how the keys fit together.

``validate`` runs the checks section by section and raises a ConfigError naming the first key that
is wrong. It holds no model knowledge of its own: it asks the registries that own the names
(``brainmri.models.registry``, ``brainmri.optim``) whether an architecture, optimizer or scheduler
exists, and checks the phases' groups on a weightless skeleton of the model.
"""

from __future__ import annotations

import math
from typing import Any

from brainmri.config.schema import (
    AUGMENTATIONS,
    CHOICES,
    GROUP_BY,
    MONITORS,
    RECIPE_NAME,
    TTA_VIEWS,
    WINDOW,
    ConfigError,
    RunConfig,
)


def validate(cfg: RunConfig) -> None:
    """Check value ranges and choices; raise ConfigError naming the key (the first wrong one, in this order)."""
    _validate_choices(cfg)
    _validate_augmentation(cfg)
    _validate_regularisers(cfg)
    _validate_counts(cfg)
    _validate_folds(cfg.data.folds, cfg.data.fold)
    _validate_data_source(cfg)
    if not 0.0 < cfg.data.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be in (0, 1): the engine selects on a validation split, "
                          f"got {cfg.data.val_fraction}")
    _validate_training(cfg)
    _validate_registries(cfg)
    _validate_model_fit(cfg)


def _get(cfg: RunConfig, dotted: str) -> Any:
    """The value of dotted key ``dotted`` in ``cfg``."""
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def _validate_choices(cfg: RunConfig) -> None:
    """The keys with a closed set of values (``CHOICES``), and ``recipe`` a plain name."""
    for key, choices in CHOICES.items():
        value = _get(cfg, key)
        if value not in choices:
            raise ConfigError(f"invalid value for {key}: {value!r} (choose from {', '.join(map(str, choices))})")
    if not RECIPE_NAME.fullmatch(cfg.recipe):
        raise ConfigError(f"recipe: {cfg.recipe!r} is not a plain name (letters, digits, _ . + -)")


def _validate_counts(cfg: RunConfig) -> None:
    """Sizes and counts that must be at least 1."""
    positive = ["data.batch_size", "data.input_size", "train.grad_accum", "optim.lookahead_k"]
    for key in positive:
        if _get(cfg, key) < 1:
            raise ConfigError(f"{key} must be >= 1, got {_get(cfg, key)}")


def _validate_training(cfg: RunConfig) -> None:
    """The monitored metrics, the progress and checkpoint intervals, the learning rate and the phases' epochs."""
    for key in ("train.monitor", "scheduler.monitor", "train.early_stop.monitor"):
        if _get(cfg, key) not in MONITORS:
            raise ConfigError(f"invalid value for {key}: {_get(cfg, key)!r} (choose from {', '.join(MONITORS)})")
    if not cfg.train.log_interval_s >= 0:
        raise ConfigError(f"train.log_interval_s must be >= 0 seconds (0: no progress lines), "
                          f"got {cfg.train.log_interval_s}")
    if not cfg.train.checkpoint_every_min >= 0:
        raise ConfigError(f"train.checkpoint_every_min must be >= 0 minutes (0 disables mid-epoch checkpoints), "
                          f"got {cfg.train.checkpoint_every_min}")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"optim.lr must be > 0, got {cfg.optim.lr}")
    for i, phase in enumerate(cfg.phases):
        if phase.epochs < 0:
            raise ConfigError(f"train.phases[{i}].epochs must be >= 0, got {phase.epochs}")
    if sum(phase.epochs for phase in cfg.phases) < 1:
        key = "train.phases[*].epochs" if cfg.train.phases else "train.epochs"
        raise ConfigError(f"{key}: nothing to train (0 epochs in total); give at least 1 epoch")


def _validate_registries(cfg: RunConfig) -> None:
    """``optim.name``, ``scheduler.name`` and ``model.arch`` are names their registries know."""
    from brainmri import optim
    from brainmri.models import registry as models  # the registries own the architectures, optimizers and schedulers

    for key, registry in (("optim.name", optim.OPTIMIZERS), ("scheduler.name", optim.SCHEDULERS)):
        if _get(cfg, key) not in registry:
            raise ConfigError(f"invalid value for {key}: {_get(cfg, key)!r} (choose from {', '.join(registry)})")
    try:
        models.check_arch(cfg.model.arch)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _validate_model_fit(cfg: RunConfig) -> None:
    """The input size fits the architecture, and each phase trains groups the model has (on a weightless skeleton)."""
    from brainmri.models import registry as models

    smallest, exact = models.min_image_size(cfg.model)
    if cfg.data.input_size < smallest or (exact and cfg.data.input_size != smallest):
        need = f"data.input_size={smallest}" if exact else f"data.input_size >= {smallest}"
        raise ConfigError(f"data.input_size={cfg.data.input_size} is too small for model.arch={cfg.model.arch} "
                          f"(smallest input {smallest} px); use {need}" if not exact else
                          f"data.input_size={cfg.data.input_size} does not fit model.arch={cfg.model.arch} "
                          f"(it takes exactly {smallest} px); use {need}")
    try:
        net = models.skeleton(cfg.model, cfg.data.input_channels, cfg.data.input_size)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for i, phase in enumerate(cfg.phases):
        key = f"train.phases[{i}]" if cfg.train.phases else "train"
        try:
            trained = models.assign_groups(net, phase.train)
        except ValueError as e:
            raise ConfigError(f"{key}.{'train' if cfg.train.phases else 'trainable'}: {e}") from None
        extra = sorted(set(phase.lr_mult) - set(trained))
        if extra:
            raise ConfigError(f"{key}.lr_mult: {extra[0]!r} is not a group the phase trains "
                              f"(it trains {', '.join(trained)})")


def _range(cfg: RunConfig, key: str, low: float, high: float, closed: str = "[]") -> None:
    """``key``'s value (or each of its values) within low..high; ``closed`` says which ends are allowed."""
    value = _get(cfg, key)
    for v in value if isinstance(value, tuple) else (value,):
        ok = (v >= low if closed[0] == "[" else v > low) and (v <= high if closed[1] == "]" else v < high)
        if not ok:
            raise ConfigError(f"{key} must be in {closed[0]}{low}, {high}{closed[1]}, got {value}")


def _pair(cfg: RunConfig, key: str) -> None:
    """``key`` is a [low, high] pair with low <= high."""
    value = _get(cfg, key)
    if len(value) != 2 or value[0] > value[1]:
        raise ConfigError(f"{key} must be a [low, high] pair with low <= high, got {list(value)}")


def _validate_augmentation(cfg: RunConfig) -> None:
    """``data.augment`` names known transforms, and their parameters (``data.aug.*``) are in range."""
    unknown_aug = [a for a in cfg.data.augment if a not in AUGMENTATIONS]
    if unknown_aug:
        raise ConfigError(f"invalid value in data.augment: {unknown_aug[0]!r} (choose from {', '.join(AUGMENTATIONS)})")
    for key in ("data.aug.rrc_scale", "data.aug.rrc_ratio", "data.aug.affine_scale", "data.aug.gamma",
                "data.aug.erasing_scale"):
        _pair(cfg, key)
    _range(cfg, "data.aug.rrc_scale", 0.0, 1.0, "(]")
    _range(cfg, "data.aug.erasing_scale", 0.0, 1.0, "(]")
    for key in ("data.aug.rrc_ratio", "data.aug.affine_scale", "data.aug.gamma"):
        _range(cfg, key, 0.0, math.inf, "()")
    _range(cfg, "data.aug.affine_translate", 0.0, 1.0)
    for key in ("data.aug.affine_degrees", "data.aug.affine_shear", "data.aug.noise"):
        _range(cfg, key, 0.0, math.inf, "[)")
    for key in ("data.aug.brightness", "data.aug.contrast", "data.aug.erasing_p"):
        _range(cfg, key, 0.0, 1.0)
    _range(cfg, "data.aug.randaugment_ops", 1, 16)
    _range(cfg, "data.aug.randaugment_magnitude", 0, 30)
    _range(cfg, "data.head_margin", 0.0, 1.0)


def _validate_regularisers(cfg: RunConfig) -> None:
    """MixUp/CutMix, label smoothing, EMA, test-time views and the LR warm-up."""
    for key in ("train.mixup", "train.cutmix"):
        _range(cfg, key, 0.0, math.inf, "[)")
    for key in ("train.mixup_prob", "train.mixup_switch_prob"):
        _range(cfg, key, 0.0, 1.0)
    _range(cfg, "train.label_smoothing", 0.0, 1.0, "[)")
    if cfg.train.ema is not None:
        _range(cfg, "train.ema", 0.0, 1.0, "()")
    unknown = [v for v in cfg.eval.tta if v not in TTA_VIEWS]
    if unknown:
        raise ConfigError(f"invalid value in eval.tta: {unknown[0]!r} (choose from {', '.join(TTA_VIEWS)})")
    if len(set(cfg.eval.tta)) != len(cfg.eval.tta):
        raise ConfigError(f"eval.tta names a view twice: {list(cfg.eval.tta)}")
    if cfg.scheduler.warmup_epochs < 0:
        raise ConfigError(f"scheduler.warmup_epochs must be >= 0, got {cfg.scheduler.warmup_epochs}")
    if cfg.scheduler.warmup_epochs and cfg.scheduler.name not in ("cosine", "none"):
        raise ConfigError(f"scheduler.warmup_epochs={cfg.scheduler.warmup_epochs} needs scheduler.name cosine or none "
                          f"(got {cfg.scheduler.name})")


def _validate_data_source(cfg: RunConfig) -> None:
    """data.root / data.manifest, data.group_by, data.dicom.window, data.max_skipped_fraction."""
    data = cfg.data
    if data.root and data.manifest:
        raise ConfigError(f"data.root={data.root} and data.manifest={data.manifest}: give one (data.root may also "
                          "name a manifest file)")
    match = GROUP_BY.fullmatch(data.group_by)
    if not match:
        raise ConfigError(f"invalid value for data.group_by: {data.group_by!r} (choose from exact, near, scan, a "
                          "manifest column such as patient, or <column>+near)")
    if not WINDOW.fullmatch(data.dicom.window) or (data.dicom.window not in ("file", "auto")
                                                   and float(data.dicom.window.split(",")[1]) <= 0):
        raise ConfigError(f"invalid value for data.dicom.window: {data.dicom.window!r} (file, auto or "
                          "<center>,<width> with width > 0, e.g. 600,1200)")
    if not 0.0 <= data.max_skipped_fraction <= 1.0:
        raise ConfigError(f"data.max_skipped_fraction must be in [0, 1], got {data.max_skipped_fraction}")
    if len(set(data.classes)) != len(data.classes) or (data.classes and len(data.classes) < 2):
        raise ConfigError(f"data.classes must name at least two different classes, got {list(data.classes)}")


def _validate_folds(folds: int | None, fold: int | None) -> None:
    """``data.folds`` is K >= 2 or unset; ``data.fold`` names one of its folds, and only with it."""
    if folds is None:
        if fold is not None:
            raise ConfigError(f"data.fold={fold} needs data.folds (the number of folds K, >= 2)")
        return
    if folds < 2:
        raise ConfigError(f"data.folds must be >= 2 (or null for one train/val split), got {folds}")
    if fold is None:
        raise ConfigError(f"data.fold: give the validation fold (0..{folds - 1}) with data.folds={folds}")
    if not 0 <= fold < folds:
        raise ConfigError(f"data.fold must be in 0..{folds - 1} with data.folds={folds}, got {fold}")
