"""Run configuration: one schema for every recipe.

Owns the ``RunConfig`` dataclasses, loading a recipe YAML (``yaml.safe_load``), applying dotted
``key=value`` overrides with type checks, and saving the resolved config into a run directory.
Knows nothing about data or training. It holds no model knowledge of its own: ``validate`` asks the
registries that own the names (``brainmri.models.registry``, ``brainmri.optim``) whether an
architecture, optimizer or scheduler exists, and checks the phases' groups on a weightless
skeleton of the model.

Example:
    >>> cfg = load_config("configs/baseline_cnn.yaml", ["optim.lr=3e-4", "seed=1"])
    >>> cfg.optim.lr
    0.0003
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import functools
import hashlib
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

RECIPE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")  # it names run directories and W&B job types


class ConfigError(ValueError):
    """A config file, key or value is invalid; the message names it."""


class FrozenDict(dict):
    """A dict that refuses changes: a loaded ``RunConfig`` is read-only all the way down."""

    def _refuse(self, *args, **kwargs):
        raise TypeError("a loaded RunConfig is read-only; build a new one (load_config / from_dict with overrides)")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _refuse


# ------------------------------------------------------------------ run identity
# A run is defined by every config key except these, which only change how it runs (where it
# writes, what it reports to, how it feeds the data, test hooks). The run-directory hash, the
# check that a run directory holds the same run, sweep task ids and the collector's compared keys
# all ignore them (dotted prefixes, as in ``flatten``).
RUNTIME_KEYS = ("run_dir", "wandb.", "train.fail_at_epoch", "train.checkpoint_every_min", "train.log_interval_s",
                "data.num_workers", "data.eval_batch_size", "data.cache", "data.cache_dir", "data.synthetic_dir",
                "data.max_skipped_fraction", "train.compile", "train.channels_last")
# What a resume may change besides: how long it trains.
EXTENDABLE_KEYS = ("train.epochs", "train.phases", "train.max_steps_per_epoch")


def is_runtime_key(key: str) -> bool:
    """Whether dotted ``key`` only changes how a run runs, not what it computes."""
    return key.startswith(RUNTIME_KEYS)


# Keys added after runs were named by their hash: unset, they leave a run's identity (and directory) as it was.
UNSET_IS_ABSENT = ("data.folds", "data.fold", "data.manifest", "data.test_site")
# The same for keys (dotted prefixes) added with a default that is not None: at their default they are left out.
DEFAULT_IS_ABSENT = ("data.aug.", "data.crop", "data.background", "data.head_margin", "scheduler.warmup_epochs",
                     "train.mixup", "train.cutmix", "train.label_smoothing", "train.ema", "eval.",
                     "data.classes", "data.dicom.")


@functools.lru_cache(maxsize=1)
def _defaults() -> dict[str, Any]:
    return flatten(RunConfig().to_dict())


def _absent(key: str, value: Any) -> bool:
    if value is None and key in UNSET_IS_ABSENT:
        return True
    return key.startswith(DEFAULT_IS_ABSENT) and value == _defaults().get(key, ())


def identity(tree: dict[str, Any]) -> dict[str, Any]:
    """The keys of a config mapping (nested or dotted) that define the run, flattened."""
    return {k: v for k, v in flatten(_plain(tree)).items() if not is_runtime_key(k) and not _absent(k, v)}


def run_hash(cfg: RunConfig) -> str:
    """8 hex digits naming the run ``cfg`` computes (the same whatever its runtime keys)."""
    return hashlib.sha1(json.dumps(identity(cfg.to_dict()), sort_keys=True).encode()).hexdigest()[:8]


def differing_keys(old: dict[str, Any], new: dict[str, Any], may_change: tuple[str, ...] = ()) -> list[str]:
    """Dotted identity keys (outside ``may_change``) whose values differ between two config mappings."""
    a, b = identity(old), identity(new)
    return sorted(k for k in set(a) | set(b) if not k.startswith(may_change) and a.get(k) != b.get(k))


@dataclass(frozen=True)
class SyntheticConfig:
    n_per_class: int = 40
    n_test_per_class: int = 10
    render_size: int = 224  # side of the generated phantom files (the model sees data.input_size)
    seed: int = 0


@dataclass(frozen=True)
class AugConfig:
    """Parameters of the ``data.augment`` transforms (``brainmri.data.transforms.train_transform``)."""
    rrc_scale: tuple[float, ...] = (0.5, 1.0)  # rrc: area fraction of the crop
    rrc_ratio: tuple[float, ...] = (0.75, 1.3333)  # rrc: aspect ratio of the crop
    affine_degrees: float = 10.0  # affine: rotation in ±degrees
    affine_translate: float = 0.1  # affine: shift, fraction of the side, each axis
    affine_scale: tuple[float, ...] = (0.9, 1.1)  # affine: zoom range
    affine_shear: float = 5.0  # affine: shear in ±degrees
    brightness: float = 0.2  # intensity: multiply by U(1-b, 1+b)
    contrast: float = 0.2  # intensity: stretch about the mean of the non-zero pixels by U(1-c, 1+c)
    gamma: tuple[float, ...] = (0.8, 1.25)  # intensity: gamma, log-uniform in this range
    noise: float = 0.0  # intensity: Rician-like noise, sigma U(0, noise) × 255 (0: off)
    randaugment_ops: int = 2
    randaugment_magnitude: int = 9
    erasing_p: float = 0.25  # erasing: probability per image
    erasing_scale: tuple[float, ...] = (0.02, 0.2)  # erasing: area fraction


@dataclass(frozen=True)
class DicomConfig:
    """How DICOM slices are turned into intensities (``brainmri.data.dicom``)."""
    window: str = "file"  # file (the file's window, else min-max) | auto (min-max) | "<center>,<width>"


@dataclass(frozen=True)
class DataConfig:
    root: str | None = None  # a folder (Training/ and optional Testing/) or a manifest file; None → phantoms
    manifest: str | None = None  # a manifest (CSV/TSV: path, label, [patient, site, split, ...]); docs/manifest.md
    classes: tuple[str, ...] = ()  # the class list and its order (default: sorted labels / class folders)
    test_site: str | None = None  # a manifest's site held out as the test part (its patients never in train/val)
    max_skipped_fraction: float = 0.05  # more manifest rows than this failing is an error
    dicom: DicomConfig = field(default_factory=DicomConfig)
    synthetic_dir: str = "data/phantoms"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    input_size: int = 224  # images are resized to input_size × input_size for the model
    input_channels: int = 3  # 1 = grey-scale input, 3 = grey-scale replicated to 3 channels
    normalize: str = "imagenet"  # imagenet | none
    augment: tuple[str, ...] = ("hflip", "rotation")  # brainmri.data.transforms.AUGMENTATIONS, applied in that order
    rotation_degrees: float = 10.0
    aug: AugConfig = field(default_factory=AugConfig)
    crop: str = "none"  # none | head: crop to the head's bounding box before resizing (at decode time)
    background: str = "keep"  # keep | zero: pixels outside the dilated head mask set to 0 (at decode time)
    head_margin: float = 0.0  # crop box and background mask widened by this × the head box's longer side
    val_fraction: float = 0.2
    split_seed: int = 0
    group_by: str = "near"  # exact | near | scan | <manifest column> | <column>+<band>: kept whole in one part
    folds: int | None = None  # K >= 2: grouped stratified K-fold over Training (val_fraction unused); None: one split
    fold: int | None = None  # with folds: which fold (0..K-1) is the validation part
    batch_size: int = 32
    eval_batch_size: int | None = None
    num_workers: int = 2
    class_weights: bool = False
    cache: str = "none"  # none | decoded
    cache_dir: str | None = None


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "baseline_cnn"  # baseline_cnn | torchvision:<any classification model> (resnet50, resnet152 = aliases)
    head: str = "linear"  # linear | mlp
    head_hidden: int = 512
    dropout: float = 0.5
    hidden: int = 256  # baseline_cnn dense width
    conv_widths: tuple[int, ...] = (32, 64, 128)  # baseline_cnn: output channels of its conv blocks
    pretrained: bool = False  # ImageNet weights: fetched once into the local torch cache, then read from it
    weights_url: str | None = None  # pretrained weights from this URL instead of torchvision's (a mirror)
    weights: str | None = None  # path to a local .pth state_dict (overrides pretrained)
    feature_cache_views: int = 0  # >0: cache frozen-backbone features for that many augmented views


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adam"  # brainmri.optim.OPTIMIZERS: adam | adamw | sgd | ranger
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd
    betas: tuple[float, ...] = (0.9, 0.999)
    eps: float = 1e-8
    lookahead_k: int = 6
    lookahead_alpha: float = 0.5
    gc_conv: bool = True
    gc_fc: bool = True
    clip_grad_norm: float | None = None


@dataclass(frozen=True)
class SchedulerConfig:
    name: str = "none"  # brainmri.optim.SCHEDULERS: none | plateau | cosine (both decay to min_lr)
    warmup_epochs: int = 0  # cosine or none: LR rises linearly over this many epochs of each phase first
    monitor: str = "val/loss"
    mode: str = "min"
    factor: float = 0.1
    patience: int = 2
    min_lr: float = 0.0


@dataclass(frozen=True)
class EarlyStopConfig:
    enabled: bool = False
    monitor: str = "val/loss"
    mode: str = "min"
    patience: int = 5
    min_delta: float = 0.0


@dataclass(frozen=True)
class PhaseConfig:
    name: str = "train"
    epochs: int = 1
    train: tuple[str, ...] = ("all",)  # parameter groups to train
    lr_mult: dict[str, float] = field(default_factory=lambda: FrozenDict())  # group LR = optim.lr × mult (default 1)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10  # used when no phases are given
    trainable: tuple[str, ...] = ("all",)  # groups trained without phases
    phases: tuple[PhaseConfig, ...] = ()
    grad_accum: int = 1
    mixed_precision: str = "no"  # no | bf16 | fp16
    monitor: str = "val/acc"  # best-checkpoint metric
    monitor_mode: str = "max"
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    max_steps_per_epoch: int | None = None
    deterministic: bool = False
    # also write the last checkpoint inside an epoch this often (minutes; 0: epochs only)
    checkpoint_every_min: float = 10.0
    fail_at_epoch: int | None = None  # test hook: raise at the start of this epoch
    # away from a terminal: a progress line this often inside an epoch (seconds; 0: off)
    log_interval_s: float = 30.0
    mixup: float = 0.0  # MixUp Beta(alpha, alpha); 0: off (brainmri.train.regularise.BatchMixer)
    cutmix: float = 0.0  # CutMix Beta(alpha, alpha); 0: off
    mixup_prob: float = 1.0  # share of batches mixed when mixup or cutmix is on
    mixup_switch_prob: float = 0.5  # with both on: share of mixed batches that use CutMix
    # soft-target cross-entropy smoothing (brainmri.train.regularise.SoftTargetCrossEntropy)
    label_smoothing: float = 0.0
    ema: float | None = None  # EMA decay of the weights (e.g. 0.999); None: off (brainmri.train.regularise.WeightEMA)
    ema_warmup: bool = False  # EMA decay min(ema, (1 + n) / (10 + n)) after n updates, so short runs move
    compile: bool = False  # torch.compile the training forward (eager, with one warning, where it cannot compile)
    channels_last: bool = False  # the model and its input batches in channels-last memory layout


@dataclass(frozen=True)
class EvalConfig:
    # test-time views averaged with the identity: hflip, vflip (brainmri.train.regularise.TTA)
    tta: tuple[str, ...] = ()


@dataclass(frozen=True)
class WandbConfig:
    enabled: bool = True
    project: str = "brainmri"
    entity: str | None = None
    group: str | None = None
    job_type: str | None = None
    name: str | None = None
    tags: tuple[str, ...] = ()
    verbose: bool = False  # W&B's own console output; off: one line (run id, mode, where to sync)


@dataclass(frozen=True)
class RunConfig:
    recipe: str = "baseline_cnn"  # any name: a recipe is its YAML (default: the YAML's file name)
    seed: int = 0
    run_dir: str | None = None  # None → runs/<recipe>-seed<seed>-<hash>
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts and lists (YAML/JSON-ready, and what ``from_dict`` reads back)."""
        return _plain(dataclasses.asdict(self))

    @property
    def phases(self) -> tuple[PhaseConfig, ...]:
        """The phases to run; a config without phases is one phase of ``train.epochs``."""
        if self.train.phases:
            return self.train.phases
        return (PhaseConfig(name="train", epochs=self.train.epochs, train=self.train.trainable),)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _build(tp, value, key)
    if origin in (list, tuple):  # read-only once loaded: lists become tuples
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return FrozenDict({str(k): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()})
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


# Keys that were renamed: the old spelling (a saved config, a sweep, an override) is an error naming the new one.
RENAMED = {
    "data.image_size": "data.input_size",
    "data.channels": "data.input_channels",
    "data.synthetic.image_size": "data.synthetic.render_size",
    "model.channels": "model.conv_widths",
}


def check_mapping(data: Any, valid, error: type[Exception], not_mapping: str, unknown) -> dict:
    """``data`` when it is a non-empty mapping whose keys are all in ``valid``; else ``error(not_mapping)``,
    or ``error(unknown(key))`` for the first unknown key (sorted)."""
    if not isinstance(data, dict) or not data:
        raise error(not_mapping)
    bad = sorted(set(data) - set(valid))
    if bad:
        raise error(unknown(bad[0]))
    return data


def _build(cls, data: dict[str, Any], prefix: str = ""):
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    for key in unknown:
        old = f"{prefix}.{key}" if prefix else key
        if old in RENAMED:
            raise ConfigError(f"config key {old} was renamed {RENAMED[old]}: write {RENAMED[old]}")
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key {where}{unknown[0]!s} (valid keys under "
            f"{prefix or 'the top level'}: {', '.join(sorted(names))})"
        )
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def parse_value(text: str, key: str | None = None) -> Any:
    """Parse the value of a ``key=value`` override: Python/YAML literal, else a plain string.

    A word that is one of ``key``'s choices stays that word (``data.cache=none`` is the choice
    "none", not null).
    """
    if key is not None and (text.strip() in _CHOICES.get(key, ()) or key in TEXT_KEYS):
        return text.strip()
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    lowered = text.strip().lower()
    if lowered in ("null", "none", "~"):
        return None
    if lowered in ("yes", "no", "on", "off", "y", "n"):
        return text  # YAML 1.1 would read these as booleans; mixed_precision=no means the string
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_override(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``tree[a][b][c] = value`` for ``dotted = "a.b.c"``; a numeric part indexes a list
    (``train.phases.1.epochs=5``)."""
    parts = dotted.split(".")
    node: Any = tree
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override {dotted}: {part!r} is not an index of a list of {len(node)}")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {'.'.join(parts[:depth])} is not a mapping")
        if last:
            node[part] = value
        else:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"epochs": 2}}`` → ``{"train.epochs": 2}`` (the spelling of overrides)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def split_override(item: str) -> tuple[str, str]:
    """``"key=value"`` → ``(key, value text)``; anything else is a ConfigError naming it."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value")
    key, text = item.split("=", 1)
    return key.strip(), text


def apply_overrides(tree: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> None:
    """Apply ``key=value`` strings to a config mapping in place."""
    for item in overrides:
        key, text = split_override(item)
        apply_override(tree, key, parse_value(text, key))


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML in {path}: {e}") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def recipe_name(path: str | Path, data: dict[str, Any] | None = None) -> str:
    """The recipe a YAML defines: its ``recipe:`` key, else its file name (``configs/efficientnet_b0.yaml``
    → ``efficientnet_b0``)."""
    data = read_yaml(path) if data is None else data
    return str(data.get("recipe") or Path(path).stem)


def from_dict(data: dict[str, Any]) -> RunConfig:
    cfg = _build(RunConfig, data)
    validate(cfg)
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Load a recipe YAML and apply ``key=value`` overrides.

    Args:
        path: a recipe YAML (``configs/<recipe>.yaml``) or None for the defaults.
        overrides: dotted ``key=value`` strings, e.g. ``["optim.lr=3e-4", "data.root=/data"]``.
    Returns:
        A validated ``RunConfig``.
    Raises:
        ConfigError naming the file, key or value that is wrong.
    """
    data = read_yaml(path) if path is not None else {}
    if path is not None:
        data.setdefault("recipe", recipe_name(path, data))
    file_only = copy.deepcopy(data)
    try:
        apply_overrides(data, overrides)
    except ConfigError as e:
        raise ConfigError(f"command line: {e}") from None
    try:
        return from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{_blame(file_only, path, bool(overrides))}: {e}") from None


def _blame(file_only: dict[str, Any], path: str | Path | None, overridden: bool) -> str:
    """Where a bad value came from: the file when the file alone is already wrong, else the command line."""
    if not overridden:
        return str(path) if path else "config"
    try:
        from_dict(file_only)
    except ConfigError:
        return str(path) if path else "config"
    return f"command line (with {path})" if path else "command line"


TEXT_KEYS = ("data.dicom.window", "data.test_site", "data.manifest")  # an override's text is the value as typed
_CHOICES = {
    "model.head": ("linear", "mlp"),
    "scheduler.mode": ("min", "max"),
    "train.monitor_mode": ("min", "max"),
    "train.early_stop.mode": ("min", "max"),
    "train.mixed_precision": ("no", "bf16", "fp16"),
    "data.normalize": ("imagenet", "none"),
    "data.cache": ("none", "decoded"),
    "data.crop": ("none", "head"),
    "data.background": ("keep", "zero"),
    "data.input_channels": (1, 3),
}


MONITORS = ("val/acc", "val/loss", "val/macro_f1", "val/auc", "val/ece", "train/loss", "train/acc")


def _get(cfg: RunConfig, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def validate(cfg: RunConfig) -> None:
    """Check value ranges and choices; raise ConfigError naming the key."""
    for key, choices in _CHOICES.items():
        value = _get(cfg, key)
        if value not in choices:
            raise ConfigError(f"invalid value for {key}: {value!r} (choose from {', '.join(map(str, choices))})")
    if not RECIPE_NAME.fullmatch(cfg.recipe):
        raise ConfigError(f"recipe: {cfg.recipe!r} is not a plain name (letters, digits, _ . + -)")
    _validate_augmentation(cfg)
    _validate_regularisers(cfg)
    positive = ["data.batch_size", "data.input_size", "train.grad_accum", "optim.lookahead_k"]
    for key in positive:
        if _get(cfg, key) < 1:
            raise ConfigError(f"{key} must be >= 1, got {_get(cfg, key)}")
    _validate_folds(cfg.data.folds, cfg.data.fold)
    _validate_data_source(cfg)
    if not 0.0 < cfg.data.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be in (0, 1): the engine selects on a validation split, "
                          f"got {cfg.data.val_fraction}")
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
    from brainmri import optim
    from brainmri.models import registry as models  # the registries own the architectures, optimizers and schedulers

    for key, registry in (("optim.name", optim.OPTIMIZERS), ("scheduler.name", optim.SCHEDULERS)):
        if _get(cfg, key) not in registry:
            raise ConfigError(f"invalid value for {key}: {_get(cfg, key)!r} (choose from {', '.join(registry)})")

    try:
        models.check_arch(cfg.model.arch)
    except ValueError as e:
        raise ConfigError(str(e)) from None
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


AUGMENTATIONS = ("hflip", "vflip", "rotation", "rrc", "affine", "trivialaugment", "randaugment", "intensity",
                 "erasing")  # the order brainmri.data.transforms.train_transform applies them in
TTA_VIEWS = ("hflip", "vflip")


def _range(cfg: RunConfig, key: str, low: float, high: float, closed: str = "[]") -> None:
    """``key``'s value (or each of its values) within low..high; ``closed`` says which ends are allowed."""
    value = _get(cfg, key)
    for v in value if isinstance(value, tuple) else (value,):
        ok = (v >= low if closed[0] == "[" else v > low) and (v <= high if closed[1] == "]" else v < high)
        if not ok:
            raise ConfigError(f"{key} must be in {closed[0]}{low}, {high}{closed[1]}, got {value}")


def _pair(cfg: RunConfig, key: str) -> None:
    value = _get(cfg, key)
    if len(value) != 2 or value[0] > value[1]:
        raise ConfigError(f"{key} must be a [low, high] pair with low <= high, got {list(value)}")


def _validate_augmentation(cfg: RunConfig) -> None:
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


GROUP_BANDS = ("exact", "near", "scan")
GROUP_BY = re.compile(r"(?:(?P<column>[A-Za-z_][A-Za-z0-9_.-]*?)(?:\+(?P<band>exact|near|scan))?)")
WINDOW = re.compile(r"file|auto|-?[0-9.]+(?:e-?[0-9]+)?,[0-9.]+(?:e-?[0-9]+)?")


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


def group_by_parts(group_by: str) -> tuple[str | None, str | None]:
    """``data.group_by`` → (manifest column or None, near-duplicate band or None): ``near`` → (None, near),
    ``patient`` → (patient, None), ``patient+near`` → (patient, near)."""
    if group_by in GROUP_BANDS:
        return None, group_by
    match = GROUP_BY.fullmatch(group_by)
    return (match["column"], match["band"]) if match else (None, None)


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

