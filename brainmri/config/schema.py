"""The config schema: the ``RunConfig`` dataclasses and the vocabularies of valid values.

Every key a recipe may set is a field here, with its type, its default and a comment that
``python -m brainmri.cli.config_doc`` copies into docs/config.md. A loaded config is frozen all the
way down (``FrozenDict`` for its mappings). The vocabularies (``CHOICES``, ``MONITORS``,
``AUGMENTATIONS``, ``TTA_VIEWS``, ``GROUP_BY``, ``WINDOW``, ``RECIPE_NAME``) say which values a key
takes; ``brainmri.config.checks`` enforces them and the code that uses a key reads them.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

RECIPE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")  # it names run directories and W&B job types


class ConfigError(ValueError):
    """A config file, key or value is invalid; the message names it."""


class FrozenDict(dict):
    """A dict that refuses changes: a loaded ``RunConfig`` is read-only all the way down."""

    def _refuse(self, *args, **kwargs):
        raise TypeError("a loaded RunConfig is read-only; build a new one (load_config / from_dict with overrides)")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _refuse


# ------------------------------------------------------------------ vocabularies of valid values
CHOICES = {  # keys with a closed set of values (brainmri.config.checks.validate)
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
AUGMENTATIONS = ("hflip", "vflip", "rotation", "rrc", "affine", "trivialaugment", "randaugment", "intensity",
                 "erasing")  # the order brainmri.data.transforms.train_transform applies them in
TTA_VIEWS = ("hflip", "vflip")
GROUP_BANDS = ("exact", "near", "scan")
GROUP_BY = re.compile(r"(?:(?P<column>[A-Za-z_][A-Za-z0-9_.-]*?)(?:\+(?P<band>exact|near|scan))?)")
WINDOW = re.compile(r"file|auto|-?[0-9.]+(?:e-?[0-9]+)?,[0-9.]+(?:e-?[0-9]+)?")


def group_by_parts(group_by: str) -> tuple[str | None, str | None]:
    """``data.group_by`` → (manifest column or None, near-duplicate band or None): ``near`` → (None, near),
    ``patient`` → (patient, None), ``patient+near`` → (patient, near)."""
    if group_by in GROUP_BANDS:
        return None, group_by
    match = GROUP_BY.fullmatch(group_by)
    return (match["column"], match["band"]) if match else (None, None)


# ------------------------------------------------------------------ the schema
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
        return plain(dataclasses.asdict(self))

    @property
    def phases(self) -> tuple[PhaseConfig, ...]:
        """The phases to run; a config without phases is one phase of ``train.epochs``."""
        if self.train.phases:
            return self.train.phases
        return (PhaseConfig(name="train", epochs=self.train.epochs, train=self.train.trainable),)


def plain(value: Any) -> Any:
    """``value`` with its dicts, lists and tuples rebuilt as plain dicts and lists (YAML/JSON-ready)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value

