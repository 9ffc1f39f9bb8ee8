"""A sweep and its tasks: one training run's recipe, overrides, stable id and run directory.

``Sweep`` is a loaded sweep (``brainmri.sweep.expand.load_sweep``): its recipes, the sweep-wide
overrides, grid and axes, each recipe's resources, and its tasks. A ``Task`` is one training run,
a recipe plus ``key=value`` overrides in ``<sweep dir>/runs/<task id>``; its id hashes what defines
the run (``task_id``), and ``make_task`` adds the keys set per task (run directory, W&B grouping)
and checks the task by building its ``RunConfig``. Knows nothing about the sweep file or submitting.

Example:
    >>> task_id("resnet18", {"optim.lr": 0.001, "seed": 0}) == task_id("resnet18", {"seed": 0, "optim.lr": 0.001})
    True
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brainmri.config import ConfigError, is_runtime_key, load_config
from brainmri.sweep.resources import SlurmResources
from brainmri.sweep.search import SearchSpec
from brainmri.sweepdir import SweepDir, TaskState

WANDB_TAG_MAX = 64
DERIVED_KEYS = ("run_dir", "wandb.group", "wandb.job_type", "wandb.name", "wandb.tags")  # set per task (make_task)


class SweepError(ValueError):
    """A sweep file, key or value is invalid; the message names it."""


@dataclass
class Task:
    """One training run of the sweep: a recipe plus overrides, in its own run directory."""

    id: str
    recipe: str
    config_path: str
    params: dict[str, Any]  # the grid values of this task
    overrides: list[str]  # every key=value given to load_config, derived keys included
    run_dir: str
    job_id: str | None = None
    cluster: str | None = None  # slurm | local | debug, once submitted
    state: str = TaskState.NEW  # brainmri.sweepdir.TaskState
    error: str | None = None

    def command(self) -> str:
        """The equivalent single-run command line."""
        return shlex.join(["python", "train.py", "--config", self.config_path, *self.overrides])

    def resolved_config(self) -> dict[str, Any]:
        return load_config(self.config_path, self.overrides).to_dict()


@dataclass
class Sweep:
    name: str
    recipes: list[str]
    overrides: dict[str, Any]
    grid: dict[str, list[Any]]
    slurm: SlurmResources  # the sweep-wide resources
    dir: Path
    seeds: list[Any] | None = None
    folds: int | str | None = None  # K: each recipe x configuration x seed on folds 0..K-1; "sites": one per site
    lr_scale: list[float] | None = None
    per_recipe: dict[str, dict[str, Any]] = field(default_factory=dict)  # the blocks as given (checked)
    recipe_slurm: dict[str, SlurmResources] = field(default_factory=dict)  # merged, per recipe
    tasks: list[Task] = field(default_factory=list)
    search: SearchSpec | None = None  # a search sweep: its trials become tasks as the driver asks for them

    @property
    def search_spec(self) -> SearchSpec:
        """The search of a search sweep (a grid sweep has none: SweepError)."""
        if self.search is None:
            raise SweepError(f"{self.dir}: not a search sweep (its sweep.yaml has no search:)")
        return self.search

    def resources(self, recipe: str) -> SlurmResources:
        """What each task of ``recipe`` asks the scheduler for."""
        return self.recipe_slurm.get(recipe, self.slurm)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "recipes": self.recipes, "seeds": self.seeds, "folds": self.folds,
                "overrides": self.overrides,
                "grid": self.grid, "lr_scale": self.lr_scale, "slurm": self.slurm.to_dict(),
                "per_recipe": self.per_recipe,
                "resolved_slurm": {r: self.resources(r).to_dict() for r in self.recipes},
                **({"search": self.search.to_dict()} if self.search else {})}


def format_value(value: Any) -> str:
    """The ``value`` half of a ``key=value`` override; strings go as typed on a command line."""
    if isinstance(value, str):
        return value
    return json.dumps(value) if isinstance(value, (list, dict)) else repr(value)


def format_params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={format_value(v)}" for k, v in params.items())


def as_overrides(values: dict[str, Any]) -> list[str]:
    """``values`` as the ``key=value`` items ``load_config`` takes."""
    return [f"{k}={format_value(v)}" for k, v in values.items()]


def task_id(recipe: str, overrides: dict[str, Any]) -> str:
    """Short hash of the recipe and its sorted overrides: the same task always gets the same id
    (overrides of keys that only change how it runs, ``config.RUNTIME_KEYS``, do not count)."""
    defining = {k: v for k, v in overrides.items() if not is_runtime_key(k)}
    payload = json.dumps([recipe, sorted(defining.items())], sort_keys=True, default=str)
    return hashlib.sha1(payload.encode()).hexdigest()[:10]


def _tags(name: str, recipe: str, params: dict[str, Any]) -> list[str]:
    tags = [name, recipe, *(f"{k}={format_value(v)}" for k, v in params.items())]
    return [t for t in tags if len(t) <= WANDB_TAG_MAX]  # W&B refuses longer tags; the config has them all


def make_task(sweep: Sweep, recipe: str, config_path: str | Path, chosen: dict[str, Any], params: dict[str, Any],
              tags: list[str] | tuple[str, ...] = ()) -> tuple[Task, Any]:
    """The task that trains ``recipe`` with the overrides ``chosen`` (``params``: the values that vary
    between tasks), in ``<sweep dir>/runs/<task id>``, and its validated ``RunConfig``."""
    tid = task_id(recipe, chosen)
    run_dir = SweepDir(sweep.dir).run_dir(tid).path
    derived = {"run_dir": str(run_dir), "wandb.group": sweep.name, "wandb.job_type": recipe,
               "wandb.name": f"{recipe}-{tid}", "wandb.tags": _tags(sweep.name, recipe, params) + list(tags)}
    overrides = as_overrides(chosen | {k: v for k, v in derived.items() if k not in chosen})
    try:
        cfg = load_config(config_path, overrides)
    except ConfigError as e:
        at = ", ".join(f"{k}={format_value(v)}" for k, v in params.items()) or "fixed overrides"
        raise SweepError(f"sweep {sweep.name}, recipe {recipe} ({at}): {e}") from None
    return Task(id=tid, recipe=recipe, config_path=str(config_path), params=params, overrides=overrides,
                run_dir=str(run_dir)), cfg
