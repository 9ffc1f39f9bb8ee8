"""Search sweeps: the ``search:`` block of a sweep YAML, its space, and the search driver's files.

A sweep is a grid (``grid``/``lr_scale``/``seeds``/``folds``) or a search, never both::

    search:
      sampler: tpe              # random | tpe
      trials: 40                # per recipe
      parallel: 8               # trials running at once (all recipes together)
      pruner: asha              # asha | median | none, on the metric at each epoch end
      metric: val/acc           # reported every epoch; a finished trial's value is its summary's
      space: {optim.lr: "loguniform(1e-5, 1e-2)", optim.weight_decay: "loguniform(1e-6, 1e-2)"}

Optional: ``direction`` (maximize | minimize; by default minimize for a loss, ECE or error metric),
``seed`` (the sampler's), ``startup_trials`` (TPE's random trials before it models the space),
``min_epochs`` (no trial is pruned before it trained this many epochs; ASHA's minimum resource,
the median pruner's warm-up; it must be below every recipe's epochs, else no pruner can act),
``pruner_startup`` (finished trials the median pruner waits for before it prunes; by default
``min(5, trials // 2)``, at least 1, and below ``trials``) and ``reduction_factor`` (ASHA keeps
the best 1/rf at each rung). ``metric`` is one of the metrics every run logs at each epoch end
(``brainmri.metric_names``); a misspelled one is refused with the valid names.
A space entry is ``loguniform(a, b)``, ``uniform(a, b)``, ``int(a, b)`` or ``choice(x, y, ...)``
(also a YAML list); every key is checked against the config schema at its bounds and choices,
like any override (``brainmri.sweep.expand``).

One study, one identity: ``trials.json`` keeps each recipe's shared config (its resolved config
without the searched keys and the keys that only change how a run runs; a data manifest by its
digest) beside the search block, and a re-run that differs in any of them, or in metric,
direction, sampler, pruner (and its settings) or space, is refused with every difference named
(``identity_differences``); ``trials`` and ``parallel`` may change.

The sweep directory of a search holds, besides the task table: ``study.journal`` (the Optuna
study, written only by the driver, ``brainmri.jobs.search``), ``trials.json`` (trial ↔ task ↔ job
id, state, value and intermediate values per epoch: what the collector's search view reads) and
the driver's lock. Knows nothing about Optuna's objects, submitit or training.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from brainmri.atomic import read_json, write_json
from brainmri.config import check_mapping, flatten, is_runtime_key, parse_value
from brainmri.metric_names import (
    DEFAULT_METRIC,
    default_direction,
    unknown_epoch_metric,
)
from brainmri.sweepdir import SweepDir

SAMPLERS = ("random", "tpe")
PRUNERS = ("asha", "median", "none")
KINDS = ("loguniform", "uniform", "int", "choice")
SEARCH_KEYS = {"sampler", "trials", "parallel", "pruner", "metric", "direction", "seed", "startup_trials",
               "pruner_startup", "min_epochs", "reduction_factor", "space"}


class SearchError(ValueError):
    """A ``search:`` key or space entry is invalid; the message names it."""


@dataclass
class Param:
    """One dimension of the space: ``kind`` with ``low``/``high`` (numbers) or ``choices``."""

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    choices: tuple = ()

    def text(self) -> str:
        args = self.choices if self.kind == "choice" else (self.low, self.high)
        return f"{self.kind}({', '.join(str(a) for a in args)})"

    def probes(self) -> list[Any]:
        """Values every one of which must be a valid override of ``key`` (the bounds, every choice)."""
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]


@dataclass
class SearchSpec:
    sampler: str
    trials: int
    parallel: int
    pruner: str
    space: dict[str, Param]
    metric: str = "val/acc"
    direction: str = "maximize"
    seed: int = 0
    startup_trials: int = 10
    pruner_startup: int = 1  # finished trials before the median pruner prunes
    min_epochs: int = 1
    reduction_factor: int = 3
    fixed: dict[str, dict[str, Any]] = field(default_factory=dict)  # per recipe: the trials' fixed overrides
    resolved: dict[str, dict[str, Any]] = field(default_factory=dict)  # per recipe: what every trial shares
    config_paths: dict[str, str] = field(default_factory=dict)  # per recipe
    epochs: dict[str, int] = field(default_factory=dict)  # per recipe: epochs a trial trains unless pruned

    def to_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler, "trials": self.trials, "parallel": self.parallel, "pruner": self.pruner,
                "metric": self.metric, "direction": self.direction, "seed": self.seed,
                "startup_trials": self.startup_trials, "pruner_startup": self.pruner_startup,
                "min_epochs": self.min_epochs,
                "reduction_factor": self.reduction_factor, "space": {k: p.text() for k, p in self.space.items()}}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_param(where: str, key: str, spec: Any) -> Param:
    """``"loguniform(1e-5, 1e-2)"`` (or a YAML list: a choice) → :class:`Param`; SearchError naming ``where``."""
    if isinstance(spec, list):
        kind, args = "choice", spec
    else:
        m = re.fullmatch(r"\s*(\w+)\s*\((.*)\)\s*", spec) if isinstance(spec, str) else None
        if m is None:
            raise SearchError(f"{where}: expected loguniform(a, b), uniform(a, b), int(a, b) or choice(x, y, ...), "
                              f"got {spec!r}")
        kind = m[1]
        if kind not in KINDS:
            raise SearchError(f"{where}: unknown distribution {kind!r} in {spec!r} (valid: {', '.join(KINDS)})")
        try:
            args = yaml.safe_load(f"[{m[2]}]") or []
        except yaml.YAMLError:
            raise SearchError(f"{where}: cannot read the arguments of {spec!r}") from None
    args = [parse_value(a, key) if isinstance(a, str) else a for a in args]
    if kind == "choice":
        if len(args) < 2:
            raise SearchError(f"{where}: choice needs at least two values, got {spec!r} "
                              "(a fixed value goes under overrides:)")
        if not all(a is None or isinstance(a, (bool, int, float, str)) for a in args):
            raise SearchError(f"{where}: choice values must be numbers, strings, booleans or null, got {spec!r}")
        if len(set(map(repr, args))) != len(args):
            raise SearchError(f"{where}: choice lists a value twice: {spec!r}")
        return Param(key, kind, choices=tuple(args))
    if len(args) != 2 or not all(_number(a) for a in args):
        raise SearchError(f"{where}: {kind} needs two numbers (low, high), got {spec!r}")
    low, high = args
    if not low < high:
        raise SearchError(f"{where}: {kind} needs low < high, got {spec!r}")
    if kind == "loguniform" and low <= 0:
        raise SearchError(f"{where}: loguniform needs 0 < low < high, got {spec!r}")
    if kind == "int":
        if not (float(low).is_integer() and float(high).is_integer()):
            raise SearchError(f"{where}: int needs integer bounds, got {spec!r}")
        low, high = int(low), int(high)
    else:
        low, high = float(low), float(high)
    return Param(key, kind, low, high)


def check_epochs(spec: SearchSpec, path: str | Path, recipe: str, epochs: int) -> None:
    """``min_epochs`` against the fewest epochs a trial of ``recipe`` trains: a pruner that could never
    act (it prunes only before a trial's last epoch) is an error, not a silently unpruned search."""
    if spec.min_epochs > epochs:
        raise SearchError(f"{path}: search.min_epochs={spec.min_epochs} is more than the {epochs} epoch(s) a "
                          f"trial of {recipe} trains; lower it or raise train.epochs")
    if spec.pruner != "none" and spec.min_epochs >= epochs:
        raise SearchError(f"{path}: search.pruner {spec.pruner} can never act: it prunes after min_epochs="
                          f"{spec.min_epochs} and before the last epoch, and a trial of {recipe} trains {epochs} "
                          f"epoch(s); lower search.min_epochs, raise train.epochs or set pruner: none")


def _integer(path, key: str, value: Any, minimum: int) -> int:
    value = parse_value(value) if isinstance(value, str) else value
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SearchError(f"{path}: search.{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _choice(path, key: str, value: Any, valid: tuple[str, ...], what: str) -> str:
    if value not in valid:
        raise SearchError(f"{path}: search.{key}: unknown {what} {value!r} (valid: {', '.join(valid)})")
    return value


def parse_search(path: str | Path, data: Any, fixed_keys: AbstractSet[str] = frozenset(),
                 cli_keys: AbstractSet[str] = frozenset()) -> SearchSpec:
    """Check a ``search:`` mapping. ``fixed_keys``: keys a level of the file fixes (a key is fixed or
    searched, never both); ``cli_keys``: keys the command line fixes (they leave the space)."""
    check_mapping(data, SEARCH_KEYS, SearchError,
                  f"{path}: search must be a mapping with sampler, trials, parallel, pruner and space",
                  lambda k: f"{path}: unknown key search.{k} (valid: {', '.join(sorted(SEARCH_KEYS))})")
    for key in ("trials", "space"):
        if key not in data:
            raise SearchError(f"{path}: search.{key} is missing")
    space_data = data["space"]
    if not isinstance(space_data, dict) or not space_data:
        raise SearchError(f"{path}: search.space must be a non-empty mapping of config keys to distributions, "
                          f"got {space_data!r}")
    space = {}
    for key, spec in flatten(space_data).items():
        where = f"{path}: search.space.{key}"
        if key in ("seed", "run_dir") or key.startswith("wandb."):
            raise SearchError(f"{where}: not searchable (seeds: --confirm-seeds re-runs the best over seeds)")
        if key in fixed_keys:
            raise SearchError(f"{where}: {key} is also fixed under overrides:; give one")
        if key in cli_keys:
            continue  # the command line fixes it
        space[key] = parse_param(where, key, spec)
    if not space:
        raise SearchError(f"{path}: search.space: the command line fixes every key; nothing left to search")
    metric = data.get("metric", DEFAULT_METRIC)
    if (why := unknown_epoch_metric(metric)) is not None:
        raise SearchError(f"{path}: search.metric: {why}")
    trials = _integer(path, "trials", data["trials"], 1)
    pruner = _choice(path, "pruner", str(data.get("pruner", "none")).lower(), PRUNERS, "pruner")
    pruner_startup = _integer(path, "pruner_startup", data.get("pruner_startup", max(1, min(5, trials // 2))), 0)
    if pruner == "median" and pruner_startup >= trials:
        raise SearchError(f"{path}: search.pruner median can never prune: it waits for pruner_startup="
                          f"{pruner_startup} finished trial(s) and the study has trials={trials} "
                          f"(lower search.pruner_startup or raise search.trials)")
    return SearchSpec(
        sampler=_choice(path, "sampler", data.get("sampler", "tpe"), SAMPLERS, "sampler"),
        trials=trials,
        parallel=_integer(path, "parallel", data.get("parallel", 1), 1),
        pruner=pruner, pruner_startup=pruner_startup,
        space=space, metric=metric,
        direction=_choice(path, "direction", data.get("direction", default_direction(metric)),
                          ("maximize", "minimize"), "direction"),
        seed=_integer(path, "seed", data.get("seed", 0), 0),
        startup_trials=_integer(path, "startup_trials", data.get("startup_trials", min(10, trials)), 0),
        min_epochs=_integer(path, "min_epochs", data.get("min_epochs", 1), 1),
        reduction_factor=_integer(path, "reduction_factor", data.get("reduction_factor", 3), 2))


# ------------------------------------------------------------------ one study, one identity
# what makes two trials' values comparable (with each recipe's resolved config); a pruner's settings with a pruner
IDENTITY_KEYS = ("metric", "direction", "sampler", "pruner", "space")
PRUNER_KEYS = ("min_epochs", "reduction_factor")


def shared_config(flat: dict[str, Any], searched: set[str]) -> dict[str, Any]:
    """What every trial of a recipe shares: its resolved config (flattened) without the searched keys and
    the keys that only change how a run runs; a data manifest is represented by its content's digest."""
    out = {k: v for k, v in flat.items() if k not in searched and not is_runtime_key(k)}
    manifest = out.get("data.manifest")
    if isinstance(manifest, str) and Path(manifest).is_file():
        out["data.manifest sha256"] = hashlib.sha256(Path(manifest).read_bytes()).hexdigest()
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def identity_differences(old: dict, spec: SearchSpec) -> list[str]:
    """Every difference between the study a sweep directory holds (its ``trials.json``) and ``spec``:
    the search block's identity keys, then each recipe's shared config key by key (empty: the same study)."""
    diffs = []
    mine = spec.to_dict()
    for key in IDENTITY_KEYS + (PRUNER_KEYS if mine["pruner"] != "none" else ()):
        if key in old.get("search", {}) and old["search"][key] != mine[key]:
            diffs.append(f"search.{key} {_short(old['search'][key])} -> {_short(mine[key])}")
    recipes = old.get("recipes")
    if recipes is None:  # written before the recipes' configs were kept
        return diffs
    for recipe in dict.fromkeys([*recipes, *spec.resolved]):
        if recipe not in spec.resolved or recipe not in recipes:
            diffs.append(f"recipe {recipe} {'dropped' if recipe not in spec.resolved else 'added'}")
            continue
        a, b = recipes[recipe], spec.resolved[recipe]
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                diffs.append(f"{recipe} {key} {_short(a.get(key))} -> {_short(b.get(key))}")
    return diffs


# ------------------------------------------------------------------ the driver's files
def study_file(sweep_dir: str | Path) -> Path:
    return SweepDir(sweep_dir).study_journal


def read_trials(sweep_dir: str | Path) -> dict | None:
    """``trials.json`` of a search sweep directory (None when it is none)."""
    try:
        data = read_json(SweepDir(sweep_dir).trials_json)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "trials" in data else None


def write_trials(sweep_dir: str | Path, data: dict) -> None:
    write_json(SweepDir(sweep_dir).trials_json, data)


class DriverLockedError(RuntimeError):
    """Another search driver holds the sweep directory (one line naming it)."""


def lock_driver(sweep_dir: str | Path):
    """Take the sweep's driver lock (an OS file lock: it dies with its process); the study has one writer.

    Raises :class:`DriverLockedError` naming the holder's host, pid and SLURM job; returns the lock.
    """
    return SweepDir(sweep_dir).lock_driver(lambda holder: DriverLockedError(
        f"{sweep_dir}: a search driver is already running ({holder})"))
