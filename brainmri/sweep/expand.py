"""Sweeps: a sweep YAML expanded into training tasks, and the sweep directory's task table.

Owns the sweep schema (recipes x grid x folds x seeds + fixed overrides + SLURM resources, each
recipe's own block merged over the sweep-wide keys), stable task ids, each task's run directory
and W&B grouping, and ``tasks.json``/``tasks.csv``. Every task is checked by building its
``RunConfig`` before anything is submitted. Knows nothing about submitit or training:
``brainmri.jobs`` runs a task, ``launch/sweep.py`` submits them.

Merge rules (per recipe; the more specific level wins, a key set twice on one level is an error):
    command line key=value  >  per_recipe.<recipe>.{overrides, grid, lr_scale}  >  sweep-wide ones
- ``seeds:`` are shared by every recipe (a per-recipe ``seed`` is an error).
- ``folds: K`` is an axis like seeds: every recipe, configuration and seed is trained K times,
  ``data.folds=K data.fold=0..K-1`` (grouped K-fold, ``brainmri.data.split``); with it no level
  may set ``data.folds`` or ``data.fold`` (the command line's ``data.folds=K`` changes K, its
  ``data.fold=i`` trains that one fold).
- ``lr_scale: [0.3, 1, 3]`` is a grid over ``optim.lr`` relative to the recipe's own ``optim.lr``
  (after its fixed overrides); it and ``grid.optim.lr`` are one axis: a per-recipe one replaces
  the sweep-wide one, both on one level is an error.
- A fixed override replaces a grid axis of the same key from a less specific level, and vice versa.
- ``slurm:`` keys of a recipe replace the sweep-wide ones, except ``setup`` (run after the
  sweep-wide lines) and ``sbatch`` (merged option by option); ``cpus_per_task`` defaults to the
  recipe's ``data.num_workers + 1``.

Example:
    >>> sweep = load_sweep("configs/sweeps/compare_recipes.yaml", ["slurm.partition=gpu"])
    >>> [t.id for t in sweep.tasks]
    ['3f1c9a0b2e', ...]
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import itertools
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from brainmri.atomic import atomic_write
from brainmri.config import (
    ConfigError,
    check_mapping,
    flatten,
    is_runtime_key,
    load_config,
    parse_value,
    read_yaml,
    recipe_name,
    split_override,
)
from brainmri.sweep.resources import ResourceError, SlurmResources, merge_resources, parse_resources
from brainmri.sweep.search import SearchError, SearchSpec, check_epochs, parse_search, shared_config
from brainmri.sweepdir import SweepDir, TaskState

CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"
SWEEP_KEYS = {"name", "recipe", "recipes", "seeds", "folds", "overrides", "grid", "lr_scale", "slurm", "per_recipe",
              "search"}
GRID_KEYS = ("grid", "lr_scale", "seeds", "folds")  # a sweep is a grid or a search (brainmri.sweep.search)
FOLD_KEYS = ("data.folds", "data.fold")  # set by folds: (an axis); never by a level of the file when it is given
SITE_KEYS = ("data.test_site",)  # set by folds: sites (leave one site out)
BLOCK_KEYS = {"overrides", "grid", "lr_scale", "slurm"}  # what a per_recipe block may set
WANDB_TAG_MAX = 64


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


def _recipe_of(entry: str) -> tuple[Path, str]:
    """(config file, recipe name) of a ``recipes:`` entry: the YAML's ``recipe:`` (or file name), also for a path."""
    config_path = _recipe_path(entry)
    try:
        return config_path, recipe_name(config_path)
    except ConfigError as e:
        raise SweepError(str(e)) from None


@dataclass
class _Level:
    """The overrides, grid and LR axis of one level: the sweep-wide keys or one recipe's block."""

    where: str  # "" or "per_recipe.<recipe>."
    overrides: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    lr_scale: list[float] | None = None
    slurm: dict[str, Any] = field(default_factory=dict)

    @property
    def has_lr_axis(self) -> bool:
        return self.lr_scale is not None or "optim.lr" in self.grid


def _nonempty_list(path: str | Path, key: str, values: Any) -> list[Any]:
    if not isinstance(values, list) or not values:
        raise SweepError(f"{path}: {key} must be a non-empty list, got {values!r}")
    return values


def _parse_level(path: str | Path, data: dict[str, Any], where: str) -> _Level:
    level = _Level(where)
    overrides = data.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise SweepError(f"{path}: {where}overrides must be a mapping of config keys, got {overrides!r}")
    level.overrides = {k: _normalize(v) for k, v in flatten(overrides).items()}
    if "grid" in data:
        grid = data["grid"]
        if not isinstance(grid, dict):
            raise SweepError(f"{path}: {where}grid must be a mapping of config keys to lists, got {grid!r}")
        if not grid:
            raise SweepError(f"{path}: {where}grid is empty (leave it out for one task per recipe and seed)")
        level.grid = {k: _nonempty_list(path, f"{where}grid.{k}", v) for k, v in flatten(grid).items()}
    if "lr_scale" in data:
        scales = _nonempty_list(path, f"{where}lr_scale", data["lr_scale"])
        scales = [_normalize(s) for s in scales]
        if not all(isinstance(s, (int, float)) and not isinstance(s, bool) and s > 0 for s in scales):
            raise SweepError(f"{path}: {where}lr_scale must hold positive numbers, got {data['lr_scale']!r}")
        level.lr_scale = scales
    slurm = data.get("slurm") or {}
    if not isinstance(slurm, dict):
        raise SweepError(f"{path}: {where}slurm must be a mapping of resources, got {slurm!r}")
    level.slurm = dict(slurm)
    for key in ("run_dir",):
        if key in level.overrides or key in level.grid:
            raise SweepError(f"{path}: {where}{key} is set per task (<sweep dir>/runs/<task id>); do not override it")
    return level


def _check_level(path: str | Path, level: _Level) -> None:
    """Within one level a key is either fixed or swept, and the LR axis is given once."""
    if level.lr_scale is not None and "optim.lr" in level.grid:
        raise SweepError(f"{path}: {level.where}lr_scale and {level.where}grid.optim.lr are the same axis; give one")
    for key in level.grid:
        if key in level.overrides:
            raise SweepError(f"{path}: {level.where}{key} is both in grid and in overrides; give one")


def _folds(path: str | Path, value: Any, key: str = "folds") -> int | str:
    value = _normalize(value)
    if key == "folds" and value == "sites":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise SweepError(f"{path}: {key} must be an integer >= 2 (the number of folds)"
                         f"{' or sites (leave one site out)' if key == 'folds' else ''}, got {value!r}")
    return value


def _check_no_fold_keys(path: str | Path, levels: list[_Level], sites: bool = False) -> None:
    """With ``folds:`` the fold keys belong to that axis, never to a level's overrides or grid."""
    for level in levels:
        for part, keys in (("overrides", level.overrides), ("grid", level.grid)):
            for key in FOLD_KEYS + (SITE_KEYS if sites else ()):
                if sites and key in keys:
                    raise SweepError(f"{path}: {level.where}{part}.{key}: folds: sites holds every site out in "
                                     f"turn (data.test_site=<site>); drop {key}")
                if key in keys:
                    raise SweepError(f"{path}: {level.where}{part}.{key}: folds: is the fold axis of every "
                                     f"recipe (data.folds=K, data.fold=0..K-1); drop {key}")


def _split_cli(items: list[str] | tuple[str, ...]) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """``slurm.<field>=value`` (resources), ``name=...``, any other ``key=value`` (every task's config)."""
    slurm, overrides, name = {}, {}, None
    for item in items:
        try:
            key, text = split_override(item)
        except ConfigError as e:
            raise SweepError(str(e)) from None
        if key.startswith("slurm."):
            slurm[key.removeprefix("slurm.")] = parse_value(text)
        elif key == "name":
            name = text
        else:
            overrides[key] = parse_value(text, key)
    return slurm, overrides, name


def _resources(path: str | Path, data: dict[str, Any], where: str) -> SlurmResources:
    try:
        return parse_resources(data, where)
    except ResourceError as e:
        raise SweepError(f"{path}: {e}") from None


def load_sweep(path: str | Path, cli_overrides: list[str] | tuple[str, ...] = (),
               sweeps_root: str | Path = "sweeps") -> Sweep:
    """Read a sweep YAML, apply command-line overrides, and expand and validate its tasks.

    Args:
        path: the sweep YAML.
        cli_overrides: ``slurm.partition=gpu``-style resource overrides, or config overrides
            (``train.epochs=3``) applied to every task; they beat every level of the file.
        sweeps_root: the sweep directory is ``<sweeps_root>/<name>``.
    Returns:
        The ``Sweep`` with its tasks; job ids and states come from an existing ``tasks.json``.
    Raises:
        SweepError naming the bad key, value or task (nothing has been written then).
    """
    try:
        data = read_yaml(path)
    except ConfigError as e:
        raise SweepError(str(e)) from None
    cli_slurm, cli_config, cli_name = _split_cli(cli_overrides)
    unknown = sorted(set(data) - SWEEP_KEYS)
    if unknown:
        raise SweepError(f"{path}: unknown sweep key {unknown[0]} (valid: {', '.join(sorted(SWEEP_KEYS))})")
    name = cli_name if cli_name is not None else data.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise SweepError(f"{path}: name must be a plain directory name, got {name!r}")
    if ("recipe" in data) == ("recipes" in data):
        raise SweepError(f"{path}: give exactly one of recipe: or recipes:")
    recipes = data["recipes"] if "recipes" in data else [data["recipe"]]
    if not isinstance(recipes, list) or not recipes:
        raise SweepError(f"{path}: recipes must be a non-empty list of configs/<recipe>.yaml names, got {recipes!r}")
    if not all(isinstance(r, str) and r for r in recipes):
        raise SweepError(f"{path}: recipes must be names of configs/<recipe>.yaml, got {recipes!r}")
    recipes = list(dict.fromkeys(recipes))
    if "search" in data:
        both = [k for k in GRID_KEYS if k in data] + [
            f"per_recipe.{r}.{k}" for r, b in (data.get("per_recipe") or {}).items() if isinstance(b, dict)
            for k in ("grid", "lr_scale") if k in b]
        if both:
            raise SweepError(f"{path}: {both[0]} and search: both given; a sweep is a grid or a search (a search "
                             "trains one seed per trial: fix it under overrides:, re-run the best with "
                             "--confirm-seeds)")
    seeds = _nonempty_list(path, "seeds", data["seeds"]) if "seeds" in data else None
    folds = _folds(path, data["folds"]) if "folds" in data else None

    top = _parse_level(path, data, "")
    if seeds is not None and "seed" in top.grid:
        raise SweepError(f"{path}: give seeds: or grid.seed, not both")
    blocks_data = data.get("per_recipe")
    if blocks_data is not None and (not isinstance(blocks_data, dict) or not blocks_data):
        raise SweepError(f"{path}: per_recipe must be a non-empty mapping of recipe -> block, got {blocks_data!r}")
    blocks: dict[str, _Level] = {}
    for recipe, block in (blocks_data or {}).items():
        where = f"per_recipe.{recipe}."
        if recipe not in recipes:
            raise SweepError(f"{path}: per_recipe.{recipe}: not one of recipes ({', '.join(recipes)})")
        keys = ", ".join(sorted(BLOCK_KEYS))
        check_mapping(block, BLOCK_KEYS, SweepError, f"{path}: {where[:-1]} must be a non-empty mapping of {keys}",
                      lambda k, where=where, keys=keys: f"{path}: {where}{k}: a recipe block holds only {keys} "
                                "(config keys go under overrides: or grid:)")
        level = _parse_level(path, block, where)
        for key in ("seed",):
            if key in level.grid or key in level.overrides:
                raise SweepError(f"{path}: {where}{'grid' if key in level.grid else 'overrides'}.seed: "
                                 "seeds are shared by every recipe; set seeds: at the top")
        blocks[recipe] = level
    if folds is not None:
        _check_no_fold_keys(path, [top, *blocks.values()], folds == "sites")
    file_fixed = set(top.overrides).union(*(b.overrides for b in blocks.values()))

    # the command line beats every level of the file
    if "data.folds" in cli_config and (folds is not None or "data.fold" not in cli_config):
        folds = _folds("command line", cli_config.pop("data.folds"), "data.folds")  # the fold axis, K folds
    for key, value in cli_config.items():
        if key == "run_dir":
            raise SweepError("run_dir is set per task (<sweep dir>/runs/<task id>); do not override it")
        for level in (top, *blocks.values()):
            level.grid.pop(key, None)
            if level is not top:
                level.overrides.pop(key, None)
            if key == "optim.lr":
                level.lr_scale = None
        if key == "seed":
            seeds = None
        top.overrides[key] = _normalize(value)
    top.slurm.update(cli_slurm)
    for level in blocks.values():
        for key in cli_slurm:
            level.slurm.pop(key, None)
    for level in (top, *blocks.values()):
        _check_level(path, level)
    if seeds is not None and "seed" in top.overrides:
        raise SweepError(f"{path}: seed is both in seeds and in overrides; give one")

    spec = None
    if "search" in data:
        try:
            spec = parse_search(path, data["search"], file_fixed, set(cli_config))
        except SearchError as e:
            raise SweepError(str(e)) from None
    top_slurm = _resources(path, top.slurm, "slurm")
    recipe_slurm = {}
    for recipe in recipes:
        block = blocks.get(recipe)
        if block is not None:
            _resources(path, block.slurm, f"{block.where}slurm")  # errors name the block's own key
        recipe_slurm[recipe] = _resources(path, merge_resources(top.slurm, block.slurm if block else None),
                                          f"per_recipe.{recipe}.slurm" if block else "slurm")
    sweep = Sweep(name=name, recipes=recipes, overrides=top.overrides, grid=top.grid, slurm=top_slurm,
                  dir=Path(sweeps_root).resolve() / name, seeds=seeds, folds=folds, lr_scale=top.lr_scale,
                  per_recipe={r: {"overrides": b.overrides, "grid": b.grid, "lr_scale": b.lr_scale,
                                  "slurm": b.slurm} for r, b in blocks.items()},
                  recipe_slurm=recipe_slurm, search=spec)
    if spec is not None:  # a search's tasks are its trials, made as the driver asks for them
        expand_search(sweep, path, top, blocks)
        sweep.tasks = load_table(sweep.dir) if SweepDir.is_sweep_dir(sweep.dir) else []
        return sweep
    sweep.tasks = expand(sweep, path, top, blocks)
    merge_table(sweep)
    return sweep


def _recipe_axes(seeds: list[Any] | None, top: _Level, block: _Level | None,
                 folds: int | str | None = None) -> tuple[dict, dict, list | None]:
    """(fixed overrides, grid axes, lr_scale) of one recipe after the merge rules (module docstring)."""
    block = block or _Level("")
    overrides = {k: v for k, v in top.overrides.items() if k not in block.grid} | block.overrides
    grid = {"seed": seeds} if seeds is not None else {}
    if folds == "sites":
        pass  # the held-out sites come from the recipe's manifest (expand)
    elif isinstance(folds, int):
        overrides["data.folds"] = folds
        if "data.fold" not in overrides:  # the command line's data.fold=i trains that fold only
            grid["data.fold"] = list(range(folds))
    grid.update({k: v for k, v in top.grid.items() if k not in block.overrides})
    if block.has_lr_axis:
        grid.pop("optim.lr", None)
    lr_scale = block.lr_scale if block.has_lr_axis else top.lr_scale
    for key, values in block.grid.items():
        grid[key] = values
    if lr_scale is not None:
        grid["lr_scale"] = lr_scale
    return overrides, grid, lr_scale


def _as_overrides(values: dict[str, Any]) -> list[str]:
    return [f"{k}={format_value(v)}" for k, v in values.items()]


def expand(sweep: Sweep, path: str | Path = "", top: _Level | None = None,
           blocks: dict[str, _Level] | None = None) -> list[Task]:
    """One task per recipe x seed x fold x grid point, each validated against the RunConfig schema.

    Also settles each recipe's ``cpus_per_task`` (``data.num_workers + 1`` unless given; less
    than that is an error).
    """
    if top is None:
        top = _Level("", overrides=dict(sweep.overrides), grid=dict(sweep.grid), lr_scale=sweep.lr_scale)
    blocks = blocks or {}
    tasks, seen = [], set()
    for entry in sweep.recipes:
        config_path, recipe = _recipe_of(entry)
        block = blocks.get(entry, blocks.get(recipe))
        fixed, grid, lr_scale = _recipe_axes(sweep.seeds, top, block, sweep.folds)
        fixed = {k: _normalize(v) for k, v in fixed.items()}
        where = f"sweep {sweep.name}, recipe {recipe}"
        if sweep.folds == "sites" and "data.test_site" not in fixed:  # the command line's data.test_site: that site
            grid = {**({"seed": grid.pop("seed")} if "seed" in grid else {}),
                    "data.test_site": _sites(config_path, fixed, where), **grid}
        base_lr = None
        if lr_scale is not None:
            try:
                base_lr = load_config(config_path, _as_overrides(
                    {k: v for k, v in fixed.items() if k not in FOLD_KEYS})).optim.lr  # a fold is a task's
            except ConfigError as e:
                raise SweepError(f"{where} (fixed overrides): {e}") from None
        keys = list(grid)
        workers = 0
        for values in itertools.product(*(grid[k] for k in keys)):
            params = {k: _normalize(v) for k, v in zip(keys, values, strict=True)}
            config_params = {k: v for k, v in params.items() if k != "lr_scale"}
            if "lr_scale" in params:
                config_params["optim.lr"] = params["optim.lr"] = float(f"{base_lr * params['lr_scale']:.12g}")
            chosen = fixed | config_params
            if task_id(recipe, chosen) in seen:
                continue
            task, cfg = make_task(sweep, recipe, config_path, chosen, params)
            seen.add(task.id)
            workers = max(workers, cfg.data.num_workers)
            tasks.append(task)
        _settle_cpus(sweep, recipe, block, workers, path)
    return tasks


def _sites(config_path: Path, fixed: dict[str, Any], where: str) -> list[str]:
    """The sites of the recipe's manifest (``folds: sites``: one task per site held out)."""
    from brainmri.data.files import DataError
    from brainmri.data.manifest import is_manifest, manifest_sites

    try:
        data = load_config(config_path, _as_overrides({k: v for k, v in fixed.items() if k not in SITE_KEYS})).data
    except ConfigError as e:
        raise SweepError(f"{where} (fixed overrides): {e}") from None
    source = data.manifest or data.root
    if not source or not is_manifest(source):
        raise SweepError(f"{where}: folds: sites holds each site of a manifest out in turn; give data.manifest "
                         f"(a CSV/TSV with a site column), not {source or 'the built-in phantoms'}")
    try:
        sites = manifest_sites(source)
    except DataError as e:
        raise SweepError(f"{where}: folds: sites: {e}") from None
    if len(sites) < 2:
        raise SweepError(f"{where}: folds: sites needs at least two sites in {source}, found {sites or 'none'}")
    return sites


def make_task(sweep: Sweep, recipe: str, config_path: str | Path, chosen: dict[str, Any], params: dict[str, Any],
              tags: list[str] | tuple[str, ...] = ()) -> tuple[Task, Any]:
    """The task that trains ``recipe`` with the overrides ``chosen`` (``params``: the values that vary
    between tasks), in ``<sweep dir>/runs/<task id>``, and its validated ``RunConfig``."""
    tid = task_id(recipe, chosen)
    run_dir = SweepDir(sweep.dir).run_dir(tid).path
    derived = {"run_dir": str(run_dir), "wandb.group": sweep.name, "wandb.job_type": recipe,
               "wandb.name": f"{recipe}-{tid}", "wandb.tags": _tags(sweep.name, recipe, params) + list(tags)}
    overrides = _as_overrides(chosen | {k: v for k, v in derived.items() if k not in chosen})
    try:
        cfg = load_config(config_path, overrides)
    except ConfigError as e:
        at = ", ".join(f"{k}={format_value(v)}" for k, v in params.items()) or "fixed overrides"
        raise SweepError(f"sweep {sweep.name}, recipe {recipe} ({at}): {e}") from None
    return Task(id=tid, recipe=recipe, config_path=str(config_path), params=params, overrides=overrides,
                run_dir=str(run_dir)), cfg


def _settle_cpus(sweep: Sweep, recipe: str, block: _Level | None, workers: int, path: str | Path) -> None:
    """``cpus_per_task`` of ``recipe``: ``data.num_workers + 1`` unless given; less than that is an error."""
    res = sweep.resources(recipe)
    key = f"{'per_recipe.' + recipe + '.' if block and 'cpus_per_task' in block.slurm else ''}slurm.cpus_per_task"
    if res.cpus_per_task is None:
        sweep.recipe_slurm[recipe] = dataclasses.replace(res, cpus_per_task=workers + 1)
    elif res.cpus_per_task < workers + 1:
        raise SweepError(f"{path or sweep.name}: {key}={res.cpus_per_task} is less than data.num_workers + 1 = "
                         f"{workers + 1} for recipe {recipe} (one CPU per loader worker plus one for training)")


# ----------------------------------------------------------------- search trials
def expand_search(sweep: Sweep, path: str | Path, top: _Level, blocks: dict[str, _Level]) -> None:
    """Check a search before anything runs: every recipe's fixed overrides, and every space key at its
    bounds and at each choice, build a ``RunConfig`` (errors name the key). Settles each recipe's fixed
    overrides (its seed explicit, so ``--confirm-seeds`` of that seed is the trial's own task) and CPUs."""
    spec = sweep.search_spec
    for entry in sweep.recipes:
        config_path, recipe = _recipe_of(entry)
        block = blocks.get(entry, blocks.get(recipe))
        fixed = {k: _normalize(v) for k, v in _recipe_axes(None, top, block)[0].items()}
        try:
            base = load_config(config_path, _as_overrides(fixed))
        except ConfigError as e:
            raise SweepError(f"sweep {sweep.name}, recipe {recipe} (fixed overrides): {e}") from None
        epochs = _epochs(base)
        for key, param in spec.space.items():
            for value in param.probes():
                try:
                    epochs = min(epochs, _epochs(load_config(config_path, _as_overrides(fixed | {key: value}))))
                except ConfigError as e:
                    raise SweepError(f"{path}: search.space.{key}: {param.text()} at {value!r}, recipe {recipe}: "
                                     f"{e}") from None
        try:
            check_epochs(spec, path, recipe, epochs)
        except SearchError as e:
            raise SweepError(str(e)) from None
        spec.fixed[recipe] = {**fixed, "seed": fixed.get("seed", base.seed)}
        spec.resolved[recipe] = shared_config(flatten(base.to_dict()), set(spec.space))
        spec.config_paths[recipe] = str(config_path)
        _settle_cpus(sweep, recipe, block, base.data.num_workers, path)


def _epochs(cfg: Any) -> int:
    """The epochs a run of ``cfg`` trains, over all its phases."""
    return sum(p.epochs for p in cfg.phases)


def trial_task(sweep: Sweep, recipe: str, values: dict[str, Any], number: int) -> tuple[Task, Any]:
    """Trial ``number`` of ``recipe`` with the sampled ``values``: an ordinary task (same id rules, same
    run directory for the same values), tagged ``trial-<number>`` in W&B."""
    spec = sweep.search_spec
    params = {**values, "seed": spec.fixed[recipe]["seed"]}
    return make_task(sweep, recipe, spec.config_paths[recipe], spec.fixed[recipe] | params, params,
                     ["search", f"trial-{number}"])


def confirm_task(sweep: Sweep, recipe: str, values: dict[str, Any], seed: Any) -> tuple[Task, Any]:
    """The best configuration's ``values`` trained with ``seed`` (the trial itself for the trial's seed)."""
    spec, params = sweep.search_spec, {**values, "seed": seed}
    return make_task(sweep, recipe, spec.config_paths[recipe], spec.fixed[recipe] | params, params,
                     ["search", "confirm"])


def arrays(sweep: Sweep, tasks: list[Task]) -> list[tuple[SlurmResources, list[Task]]]:
    """``tasks`` grouped by resource shape, in recipe order: one job array per shape."""
    groups: list[tuple[SlurmResources, list[Task]]] = []
    for task in tasks:
        res = sweep.resources(task.recipe)
        for shape, members in groups:
            if shape == res:
                members.append(task)
                break
        else:
            groups.append((res, [task]))
    return groups


def bill(sweep: Sweep, tasks: list[Task]) -> dict[str, Any]:
    """What ``tasks`` request at their time limits: per recipe tasks, array, GPU- and CPU-hours."""
    groups = arrays(sweep, tasks)
    array_of = {t.id: i for i, (_, members) in enumerate(groups) for t in members}
    rows = []
    for recipe in sweep.recipes:
        mine = [t for t in tasks if t.recipe == recipe]
        if not mine:
            continue
        hours = sweep.resources(recipe).hours()
        rows.append({"recipe": recipe, "tasks": len(mine), "array": array_of[mine[0].id] + 1,
                     "gpu_hours": hours["gpu_hours"] * len(mine), "cpu_hours": hours["cpu_hours"] * len(mine)})
    return {"rows": rows, "arrays": len(groups), "tasks": len(tasks),
            "gpu_hours": sum(r["gpu_hours"] for r in rows), "cpu_hours": sum(r["cpu_hours"] for r in rows)}


def describe(res: SlurmResources) -> str:
    """One line: the shape of one task's request."""
    parts = [f"{res.nodes} node(s) x {res.ntasks_per_node} task(s)", f"{res.gpus_per_node} GPU/node",
             f"{res.cpus_per_task} CPU/task", f"{res.mem_gb:g} GB", f"{res.time_min} min"]
    parts += [f"{k}={getattr(res, k)}" for k in ("partition", "account", "qos", "constraint", "exclude")
              if getattr(res, k)]
    parts += [f"--{k}" + ("" if v is True else f"={v}") for k, v in res.sbatch.items()]
    if res.setup:
        parts.append(f"{len(res.setup)} setup line(s)")
    return ", ".join(parts)


# ----------------------------------------------------------------- task table
def merge_table(sweep: Sweep) -> None:
    """Carry job ids, states and errors over from an existing ``tasks.json``."""
    table = SweepDir(sweep.dir).tasks_json
    if not table.is_file():
        return
    old = {row["id"]: row for row in json.loads(table.read_text())}
    for task in sweep.tasks:
        row = old.get(task.id)
        if row:
            task.job_id, task.cluster = row.get("job_id"), row.get("cluster")
            task.state, task.error = row.get("state", "new"), row.get("error")


DERIVED_KEYS = ("run_dir", "wandb.group", "wandb.job_type", "wandb.name", "wandb.tags")  # set per task (make_task)


def _fixed_of(task: Task) -> dict[str, str]:
    """The overrides every task of ``task``'s recipe shares (its grid values and per-task keys left out)."""
    pairs = dict(item.partition("=")[::2] for item in task.overrides)
    return {k: v for k, v in pairs.items()
            if k not in task.params and k not in DERIVED_KEYS and not is_runtime_key(k)}


def sweep_differences(sweep: Sweep) -> list[str]:
    """What makes ``sweep`` another sweep than the one its directory holds: a task of ``tasks.json`` it no
    longer has (changed fixed settings, a dropped recipe or grid value), each difference named; [] when it
    only adds tasks (or there is no task table yet)."""
    table = SweepDir(sweep.dir).tasks_json
    if not table.is_file():
        return []
    new_ids = {t.id for t in sweep.tasks}
    dropped = [t for t in load_table(sweep.dir) if t.id not in new_ids]
    diffs: list[str] = []
    for recipe in dict.fromkeys(t.recipe for t in dropped):
        now = next((t for t in sweep.tasks if t.recipe == recipe), None)
        if now is None:
            diffs.append(f"recipe {recipe} dropped")
            continue
        old, new = _fixed_of(next(t for t in dropped if t.recipe == recipe)), _fixed_of(now)
        diffs += [f"{recipe} {k} {old.get(k, '(unset)')} -> {new.get(k, '(unset)')}"
                  for k in dict.fromkeys([*old, *new]) if old.get(k) != new.get(k)]
    if not diffs:  # the same fixed settings: grid values were dropped
        diffs = [f"{t.recipe} {format_params(t.params) or 'task ' + t.id} dropped" for t in dropped]
    return diffs


def check_same_sweep(sweep: Sweep) -> None:
    """A SweepError naming every difference when the sweep directory holds another sweep (call it before
    writing anything: a refused re-run leaves every file of the sweep as it was)."""
    diffs = sweep_differences(sweep)
    if diffs:
        raise SweepError(f"{sweep.dir} holds another sweep: {'; '.join(diffs)}; nothing was changed (run it with "
                         "the sweep's settings, or give the sweep another name: name=...)")


def save_sweep(sweep: Sweep) -> None:
    """Write ``sweep.yaml`` (resolved) and the task table (``tasks.json``, ``tasks.csv``)."""
    sweep.dir.mkdir(parents=True, exist_ok=True)
    atomic_write(SweepDir(sweep.dir).sweep_yaml, yaml.safe_dump(sweep.to_dict(), sort_keys=False))
    save_table(sweep.dir, sweep.tasks)


def format_params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={format_value(v)}" for k, v in params.items())


def save_table(sweep_dir: Path, tasks: list[Task]) -> None:
    """Write ``tasks.json`` (everything) and ``tasks.csv`` (id, recipe, params, job id, state)."""
    sweep_dir = Path(sweep_dir)
    rows = [dataclasses.asdict(t) for t in tasks]
    atomic_write(SweepDir(sweep_dir).tasks_json, json.dumps(rows, indent=1, default=str) + "\n")
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["id", "recipe", "params", "job_id", "state", "run_dir"])
    for t in tasks:
        writer.writerow([t.id, t.recipe, format_params(t.params), t.job_id or "", t.state, t.run_dir])
    atomic_write(SweepDir(sweep_dir).tasks_csv, buf.getvalue())


def load_table(sweep_dir: str | Path) -> list[Task]:
    """The tasks of an existing sweep directory, as last written."""
    path = SweepDir(sweep_dir).tasks_json
    if not path.is_file():
        raise SweepError(f"{sweep_dir}: no tasks.json (not a sweep directory?)")
    return [Task(**row) for row in json.loads(path.read_text())]
