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
the median pruner's warm-up) and ``reduction_factor`` (ASHA keeps the best 1/rf at each rung).
A space entry is ``loguniform(a, b)``, ``uniform(a, b)``, ``int(a, b)`` or ``choice(x, y, ...)``
(also a YAML list); every key is checked against the config schema at its bounds and choices,
like any override (``brainmri.sweep.expand``).

The sweep directory of a search holds, besides the task table: ``study.journal`` (the Optuna
study, written only by the driver, ``brainmri.jobs.search``), ``trials.json`` (trial ↔ task ↔ job
id, state, value and intermediate values per epoch: what the collector's search view reads) and
the driver's lock. Knows nothing about Optuna's objects, submitit or training.
"""

from __future__ import annotations

import math
import re
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from brainmri.atomic import read_json, write_json
from brainmri.config import check_mapping, flatten, parse_value
from brainmri.locks import hold_lock

SAMPLERS = ("random", "tpe")
PRUNERS = ("asha", "median", "none")
KINDS = ("loguniform", "uniform", "int", "choice")
SEARCH_KEYS = {"sampler", "trials", "parallel", "pruner", "metric", "direction", "seed", "startup_trials",
               "min_epochs", "reduction_factor", "space"}
STUDY, TRIALS, DRIVER_LOCK = "study.journal", "trials.json", ".driver.lock"
ENDED = ("finished", "pruned", "failed")  # a trial's terminal states (trials.json)


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
    min_epochs: int = 1
    reduction_factor: int = 3
    fixed: dict[str, dict[str, Any]] = field(default_factory=dict)  # per recipe: the trials' fixed overrides
    config_paths: dict[str, str] = field(default_factory=dict)  # per recipe
    epochs: dict[str, int] = field(default_factory=dict)  # per recipe: epochs a trial trains unless pruned

    def to_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler, "trials": self.trials, "parallel": self.parallel, "pruner": self.pruner,
                "metric": self.metric, "direction": self.direction, "seed": self.seed,
                "startup_trials": self.startup_trials, "min_epochs": self.min_epochs,
                "reduction_factor": self.reduction_factor, "space": {k: p.text() for k, p in self.space.items()}}


def default_direction(metric: str) -> str:
    """minimize a loss, an ECE or an error rate; maximize anything else (accuracy, F1, AUC)."""
    return "minimize" if any(w in metric for w in ("loss", "ece", "error")) else "maximize"


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
    metric = data.get("metric", "val/acc")
    if not isinstance(metric, str) or not metric.startswith("val/"):
        raise SearchError(f"{path}: search.metric must be a validation metric (val/...), got {metric!r}")
    trials = _integer(path, "trials", data["trials"], 1)
    return SearchSpec(
        sampler=_choice(path, "sampler", data.get("sampler", "tpe"), SAMPLERS, "sampler"),
        trials=trials,
        parallel=_integer(path, "parallel", data.get("parallel", 1), 1),
        pruner=_choice(path, "pruner", str(data.get("pruner", "none")).lower(), PRUNERS, "pruner"),
        space=space, metric=metric,
        direction=_choice(path, "direction", data.get("direction", default_direction(metric)),
                          ("maximize", "minimize"), "direction"),
        seed=_integer(path, "seed", data.get("seed", 0), 0),
        startup_trials=_integer(path, "startup_trials", data.get("startup_trials", min(10, trials)), 0),
        min_epochs=_integer(path, "min_epochs", data.get("min_epochs", 1), 1),
        reduction_factor=_integer(path, "reduction_factor", data.get("reduction_factor", 3), 2))


# ------------------------------------------------------------------ the driver's files
def study_file(sweep_dir: str | Path) -> Path:
    return Path(sweep_dir) / STUDY


def read_trials(sweep_dir: str | Path) -> dict | None:
    """``trials.json`` of a search sweep directory (None when it is none)."""
    try:
        data = read_json(Path(sweep_dir) / TRIALS)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "trials" in data else None


def write_trials(sweep_dir: str | Path, data: dict) -> None:
    write_json(Path(sweep_dir) / TRIALS, data)


class DriverLockedError(RuntimeError):
    """Another search driver holds the sweep directory (one line naming it)."""


def lock_driver(sweep_dir: str | Path):
    """Take the sweep's driver lock (an OS file lock: it dies with its process); the study has one writer.

    Raises :class:`DriverLockedError` naming the holder's host, pid and SLURM job; returns the lock.
    """
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    return hold_lock(sweep_dir / DRIVER_LOCK, lambda holder: DriverLockedError(
        f"{sweep_dir}: a search driver is already running ({holder})"))
