"""Sweeps: a sweep YAML expanded into training tasks, and the sweep directory's task table.

Owns the sweep schema (recipes x grid + fixed overrides + SLURM resources), stable task ids,
each task's run directory and W&B grouping, and ``tasks.json``/``tasks.csv``. Every task is
checked by building its ``RunConfig``. Knows nothing about submitit or training:
``jobs/`` runs a task, ``launch/sweep.py`` submits them.

Example:
    >>> sweep = load_sweep("configs/sweeps/seed_lr_grid.yaml", ["slurm.partition=gpu"])
    >>> [t.id for t in sweep.tasks]
    ['3f1c9a0b2e', ...]
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import itertools
import json
import os
import re
import shlex
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from brainmri.config import ConfigError, flatten, is_runtime_key, load_config, parse_value, read_yaml, recipe_name

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"
SWEEP_KEYS = {"name", "recipe", "recipes", "overrides", "grid", "slurm"}
WANDB_TAG_MAX = 64


class SweepError(ValueError):
    """A sweep file, key or value is invalid; the message names it."""


@dataclass
class SlurmResources:
    """What each task asks SLURM for (per task, not per sweep)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int | None = None  # None: one task per GPU (one if no GPUs)
    cpus_per_task: int = 2
    mem_gb: float = 8.0
    time_min: int = 60
    array_parallelism: int = 32
    signal_delay_s: int = 120  # USR2 this long before the time limit: time to finish the step

    @property
    def ntasks_per_node(self) -> int:
        return self.tasks_per_node or max(self.gpus_per_node, 1)


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
    state: str = "new"  # new | submitted | pending | running | finished | failed (see jobs/submit.py)
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
    slurm: SlurmResources
    dir: Path
    tasks: list[Task] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "recipes": self.recipes, "overrides": self.overrides,
                "grid": self.grid, "slurm": dataclasses.asdict(self.slurm)}


def format_value(value: Any) -> str:
    """The ``value`` half of a ``key=value`` override; strings go as typed on a command line."""
    if isinstance(value, str):
        return value
    return json.dumps(value) if isinstance(value, (list, dict)) else repr(value)


def _normalize(value: Any) -> Any:
    # YAML 1.1 reads `1e-3` as a string; parse it as the command line would
    return parse_value(value) if isinstance(value, str) else value


def task_id(recipe: str, overrides: dict[str, Any]) -> str:
    """Short hash of the recipe and its sorted overrides: the same task always gets the same id
    (overrides of keys that only change how it runs, ``config.RUNTIME_KEYS``, do not count)."""
    defining = {k: v for k, v in overrides.items() if not is_runtime_key(k)}
    payload = json.dumps([recipe, sorted(defining.items())], sort_keys=True, default=str)
    return hashlib.sha1(payload.encode()).hexdigest()[:10]


def _tags(name: str, recipe: str, params: dict[str, Any]) -> list[str]:
    tags = [name, recipe, *(f"{k}={format_value(v)}" for k, v in params.items())]
    return [t for t in tags if len(t) <= WANDB_TAG_MAX]  # W&B refuses longer tags; the config has them all


def _recipe_path(recipe: str) -> Path:
    """A recipe is ``configs/<name>.yaml`` or any YAML path (absolute, or relative to the working directory)."""
    path = Path(recipe) if recipe.endswith((".yaml", ".yml")) else CONFIGS_DIR / f"{recipe}.yaml"
    if not path.is_file():
        raise SweepError(f"recipe {recipe!r}: no config file {path}")
    return path.resolve()


def _slurm_resources(data: dict[str, Any]) -> SlurmResources:
    hints = typing.get_type_hints(SlurmResources)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise SweepError(f"unknown sweep key slurm.{unknown[0]} (valid: {', '.join(sorted(hints))})")
    for key, value in data.items():
        kinds = typing.get_args(hints[key]) or (hints[key],)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ((value is None and type(None) in kinds) or (str in kinds and isinstance(value, str))
                or (int in kinds and number and float(value).is_integer())
                or (float in kinds and number)):
            expected = " or ".join(k.__name__ for k in kinds)
            raise SweepError(f"slurm.{key}: expected {expected}, got {value!r}")
        if int in kinds and number:
            data[key] = int(value)
    return SlurmResources(**data)


def _apply_cli(data: dict[str, Any], items: list[str] | tuple[str, ...]) -> None:
    """``slurm.<field>=value`` sets a resource; any other ``key=value`` overrides every task's config."""
    for item in items:
        if "=" not in item:
            raise SweepError(f"override {item!r} is not of the form key=value")
        key, text = item.split("=", 1)
        if key.startswith("slurm."):
            data.setdefault("slurm", {})[key.removeprefix("slurm.")] = parse_value(text)
        elif key == "name":
            data["name"] = text
        else:
            data.setdefault("overrides", {})[key] = parse_value(text)
            (data.get("grid") or {}).pop(key, None)


def load_sweep(path: str | Path, cli_overrides: list[str] | tuple[str, ...] = (),
               sweeps_root: str | Path = "sweeps") -> Sweep:
    """Read a sweep YAML, apply command-line overrides, and expand and validate its tasks.

    Args:
        path: the sweep YAML.
        cli_overrides: ``slurm.partition=gpu``-style resource overrides, or config overrides
            (``train.epochs=3``) applied to every task.
        sweeps_root: the sweep directory is ``<sweeps_root>/<name>``.
    Returns:
        The ``Sweep`` with its tasks; job ids and states come from an existing ``tasks.json``.
    Raises:
        SweepError naming the bad key, value or task.
    """
    try:
        data = read_yaml(path)
    except ConfigError as e:
        raise SweepError(str(e)) from None
    _apply_cli(data, cli_overrides)
    unknown = sorted(set(data) - SWEEP_KEYS)
    if unknown:
        raise SweepError(f"{path}: unknown sweep key {unknown[0]} (valid: {', '.join(sorted(SWEEP_KEYS))})")
    name = data.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise SweepError(f"{path}: name must be a plain directory name, got {name!r}")
    if ("recipe" in data) == ("recipes" in data):
        raise SweepError(f"{path}: give exactly one of recipe: or recipes:")
    recipes = data.get("recipes") or [data.get("recipe")]
    if not all(isinstance(r, str) for r in recipes):
        raise SweepError(f"{path}: recipes must be names of configs/<recipe>.yaml, got {recipes!r}")
    overrides = data.get("overrides") or {}
    grid = data.get("grid") or {}
    if not isinstance(overrides, dict) or not isinstance(grid, dict):
        raise SweepError(f"{path}: overrides and grid must be mappings of config keys")
    overrides = flatten(overrides)
    if "run_dir" in overrides or "run_dir" in grid:
        raise SweepError(f"{path}: run_dir is set per task (<sweep dir>/runs/<task id>); do not override it")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{path}: grid.{key} must be a non-empty list, got {values!r}")
    sweep = Sweep(name=name, recipes=list(recipes), overrides=overrides, grid=dict(grid),
                  slurm=_slurm_resources(data.get("slurm") or {}),
                  dir=Path(sweeps_root).resolve() / name)
    sweep.tasks = expand(sweep)
    merge_table(sweep)
    return sweep


def expand(sweep: Sweep) -> list[Task]:
    """One task per recipe x grid point, each validated against the RunConfig schema."""
    keys = list(sweep.grid)
    tasks, seen = [], set()
    for entry in sweep.recipes:
        config_path = _recipe_path(entry)
        try:
            recipe = recipe_name(config_path)  # the YAML's recipe: (or file name), also for a path entry
        except ConfigError as e:
            raise SweepError(str(e)) from None
        for values in itertools.product(*(sweep.grid[k] for k in keys)):
            params = {k: _normalize(v) for k, v in zip(keys, values)}
            chosen = {k: _normalize(v) for k, v in sweep.overrides.items()} | params
            tid = task_id(recipe, chosen)
            if tid in seen:
                continue
            seen.add(tid)
            run_dir = sweep.dir / "runs" / tid
            derived = {"run_dir": str(run_dir), "wandb.group": sweep.name, "wandb.job_type": recipe,
                       "wandb.name": f"{recipe}-{tid}",
                       "wandb.tags": _tags(sweep.name, recipe, params)}
            merged = chosen | {k: v for k, v in derived.items() if k not in chosen}
            overrides = [f"{k}={format_value(v)}" for k, v in merged.items()]
            try:
                load_config(config_path, overrides)
            except ConfigError as e:
                where = ", ".join(f"{k}={v}" for k, v in params.items()) or "fixed overrides"
                raise SweepError(f"sweep {sweep.name}, recipe {recipe} ({where}): {e}") from None
            tasks.append(Task(id=tid, recipe=recipe, config_path=str(config_path), params=params,
                              overrides=overrides, run_dir=str(run_dir)))
    return tasks


# ----------------------------------------------------------------- task table
def merge_table(sweep: Sweep) -> None:
    """Carry job ids, states and errors over from an existing ``tasks.json``."""
    table = sweep.dir / "tasks.json"
    if not table.is_file():
        return
    old = {row["id"]: row for row in json.loads(table.read_text())}
    for task in sweep.tasks:
        row = old.get(task.id)
        if row:
            task.job_id, task.cluster = row.get("job_id"), row.get("cluster")
            task.state, task.error = row.get("state", "new"), row.get("error")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_sweep(sweep: Sweep) -> None:
    """Write ``sweep.yaml`` (resolved) and the task table (``tasks.json``, ``tasks.csv``)."""
    sweep.dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(sweep.dir / "sweep.yaml", yaml.safe_dump(sweep.to_dict(), sort_keys=False))
    save_table(sweep.dir, sweep.tasks)


def format_params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={format_value(v)}" for k, v in params.items())


def save_table(sweep_dir: Path, tasks: list[Task]) -> None:
    """Write ``tasks.json`` (everything) and ``tasks.csv`` (id, recipe, params, job id, state)."""
    sweep_dir = Path(sweep_dir)
    rows = [dataclasses.asdict(t) for t in tasks]
    _write_atomic(sweep_dir / "tasks.json", json.dumps(rows, indent=1, default=str) + "\n")
    tmp = sweep_dir / f".tasks.csv.tmp{os.getpid()}"
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "recipe", "params", "job_id", "state", "run_dir"])
        for t in tasks:
            writer.writerow([t.id, t.recipe, format_params(t.params), t.job_id or "", t.state, t.run_dir])
    os.replace(tmp, sweep_dir / "tasks.csv")


def load_table(sweep_dir: str | Path) -> list[Task]:
    """The tasks of an existing sweep directory, as last written."""
    path = Path(sweep_dir) / "tasks.json"
    if not path.is_file():
        raise SweepError(f"{sweep_dir}: no tasks.json (not a sweep directory?)")
    return [Task(**row) for row in json.loads(path.read_text())]


def run_state(task: Task) -> tuple[str | None, str | None]:
    """What the task's run directory says: ("finished"|"failed"|"running"|None, error)."""
    run_dir = Path(task.run_dir)
    if (run_dir / "summary.json").is_file():
        return "finished", None
    try:
        status = json.loads((run_dir / "status.json").read_text())
    except (OSError, ValueError):
        return None, None
    return status.get("status"), status.get("error")
