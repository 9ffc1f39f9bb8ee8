"""Run configuration: one schema for every recipe.

``schema``: the ``RunConfig`` dataclasses (every key, its type and default), ``ConfigError``,
``FrozenDict`` and the vocabularies of valid values (``CHOICES``, ``MONITORS``, ``AUGMENTATIONS``,
``TTA_VIEWS``, ``GROUP_BY``, ``WINDOW``, ``RECIPE_NAME``). ``overrides``: the dotted ``key=value``
spelling (``parse_value``, ``apply_overrides``, ``flatten``). ``checks``: ``validate``, value ranges
and choices, asking the registries that own the names (``brainmri.models.registry``,
``brainmri.optim``) whether an architecture, optimizer or scheduler exists and checking the phases'
groups on a weightless skeleton of the model. ``load``: a recipe YAML (``yaml.safe_load``) plus
overrides → a type-checked, validated ``RunConfig`` (``load_config``, ``from_dict``). ``identity``:
which keys define a run (``RUNTIME_KEYS``) and the hash that names it (``run_hash``).
Knows nothing about data or training. Inside the package: load → checks, overrides → schema;
identity → overrides, schema.

Example:
    >>> cfg = load_config("configs/baseline_cnn.yaml", ["optim.lr=3e-4", "seed=1"])
    >>> cfg.optim.lr
    0.0003
"""

from brainmri.config.checks import validate
from brainmri.config.identity import (
    DEFAULT_IS_ABSENT,
    EXTENDABLE_KEYS,
    RUNTIME_KEYS,
    UNSET_IS_ABSENT,
    differing_keys,
    identity,
    is_runtime_key,
    run_hash,
)
from brainmri.config.load import RENAMED, check_mapping, from_dict, load_config, read_yaml, recipe_name
from brainmri.config.overrides import TEXT_KEYS, apply_override, apply_overrides, flatten, parse_value, split_override
from brainmri.config.schema import (
    AUGMENTATIONS,
    CHOICES,
    GROUP_BANDS,
    GROUP_BY,
    MONITORS,
    RECIPE_NAME,
    TTA_VIEWS,
    WINDOW,
    AugConfig,
    ConfigError,
    DataConfig,
    DicomConfig,
    EarlyStopConfig,
    EvalConfig,
    FrozenDict,
    ModelConfig,
    OptimConfig,
    PhaseConfig,
    RunConfig,
    SchedulerConfig,
    SyntheticConfig,
    TrainConfig,
    WandbConfig,
    group_by_parts,
)

__all__ = [
    "AUGMENTATIONS", "CHOICES", "DEFAULT_IS_ABSENT", "EXTENDABLE_KEYS", "GROUP_BANDS", "GROUP_BY", "MONITORS",
    "RECIPE_NAME", "RENAMED", "RUNTIME_KEYS", "TEXT_KEYS", "TTA_VIEWS", "UNSET_IS_ABSENT", "WINDOW", "AugConfig",
    "ConfigError", "DataConfig", "DicomConfig", "EarlyStopConfig", "EvalConfig", "FrozenDict", "ModelConfig",
    "OptimConfig", "PhaseConfig", "RunConfig", "SchedulerConfig", "SyntheticConfig", "TrainConfig", "WandbConfig",
    "apply_override", "apply_overrides", "check_mapping", "differing_keys", "flatten", "from_dict", "group_by_parts",
    "identity", "is_runtime_key", "load_config", "parse_value", "read_yaml", "recipe_name", "run_hash",
    "split_override", "validate",
]
