"""Run identity: which config keys define what a run computes, and the hash that names it.

``identity`` is a config's keys less its runtime keys (``RUNTIME_KEYS``) and less the keys added
after runs were named that still hold their old meaning; ``run_hash`` names a run by it and
``differing_keys`` compares two configs by it (``EXTENDABLE_KEYS``: what a resume may change too).
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

from brainmri.config.overrides import flatten
from brainmri.config.schema import RunConfig, plain

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
    return {k: v for k, v in flatten(plain(tree)).items() if not is_runtime_key(k) and not _absent(k, v)}


def run_hash(cfg: RunConfig) -> str:
    """8 hex digits naming the run ``cfg`` computes (the same whatever its runtime keys)."""
    return hashlib.sha1(json.dumps(identity(cfg.to_dict()), sort_keys=True).encode()).hexdigest()[:8]


def differing_keys(old: dict[str, Any], new: dict[str, Any], may_change: tuple[str, ...] = ()) -> list[str]:
    """Dotted identity keys (outside ``may_change``) whose values differ between two config mappings."""
    a, b = identity(old), identity(new)
    return sorted(k for k in set(a) | set(b) if not k.startswith(may_change) and a.get(k) != b.get(k))
