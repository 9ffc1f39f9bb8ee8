"""Sweeps: a sweep YAML expanded into training tasks.

``load_sweep`` reads a sweep (recipes x grid x folds x seeds + fixed overrides + SLURM resources,
each recipe's own block merged over the sweep-wide keys) and expands it: one task per recipe and
grid point, or, for a search, each recipe checked over its space (its trials become tasks as the
driver asks: ``trial_task``, ``confirm_task``). Every task is checked by building its
``RunConfig`` before anything is submitted. The file's schema is ``brainmri.sweep.schema``, a
task and its id ``brainmri.sweep.tasks``, the task table and re-run checks
``brainmri.sweep.table``, job arrays ``brainmri.sweep.arrays``; their names are also importable
from here. Knows nothing about submitit or training: ``brainmri.jobs`` runs a task,
``launch/sweep.py`` submits them.

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

import dataclasses
import itertools
from pathlib import Path
from typing import Any

from brainmri.config import ConfigError, flatten, load_config, recipe_name
from brainmri.sweep.arrays import arrays, bill
from brainmri.sweep.resources import describe
from brainmri.sweep.schema import (
    FOLD_KEYS,
    SITE_KEYS,
    CommandLine,
    Level,
    SweepFile,
    apply_command_line,
    check_levels,
    new_sweep,
    normalize,
    parse_search_block,
    parse_sweep_file,
    read_sweep_yaml,
)
from brainmri.sweep.search import SearchError, check_epochs, shared_config
from brainmri.sweep.table import (
    check_same_sweep,
    load_table,
    merge_table,
    save_sweep,
    save_table,
    sweep_differences,
)
from brainmri.sweep.tasks import (
    Sweep,
    SweepError,
    Task,
    as_overrides,
    format_params,
    format_value,
    make_task,
    task_id,
)
from brainmri.sweepdir import SweepDir

__all__ = [  # with the names of brainmri.sweep.{tasks,table,arrays} and describe, importable from here as before
    "CONFIGS_DIR", "Sweep", "SweepError", "Task", "arrays", "bill", "check_same_sweep", "confirm_task", "describe",
    "expand", "expand_search", "format_params", "format_value", "load_sweep", "load_table", "make_task",
    "merge_table", "save_sweep", "save_table", "sweep_differences", "task_id", "trial_task",
]

CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"


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
    data = read_sweep_yaml(path)
    line = CommandLine.parse(cli_overrides)
    sweep_file = parse_sweep_file(path, data, line.name)
    apply_command_line(sweep_file, line)
    check_levels(sweep_file)
    sweep = new_sweep(sweep_file, parse_search_block(sweep_file, set(line.config)), sweeps_root)
    _add_tasks(sweep, sweep_file)
    return sweep


def _add_tasks(sweep: Sweep, sweep_file: SweepFile) -> None:
    """Give ``sweep`` its tasks: a grid's every point, checked, with job ids and states from an existing
    ``tasks.json``; a search's trials made so far, once its space is checked (``expand_search``)."""
    if sweep.search is not None:  # a search's tasks are its trials, made as the driver asks for them
        expand_search(sweep, sweep_file.path, sweep_file.top, sweep_file.blocks)
        sweep.tasks = load_table(sweep.dir) if SweepDir.is_sweep_dir(sweep.dir) else []
        return
    sweep.tasks = expand(sweep, sweep_file.path, sweep_file.top, sweep_file.blocks)
    merge_table(sweep)


# ----------------------------------------------------------------- grid tasks
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


def _recipe_axes(seeds: list[Any] | None, top: Level, block: Level | None,
                 folds: int | str | None = None) -> tuple[dict, dict, list | None]:
    """(fixed overrides, grid axes, lr_scale) of one recipe after the merge rules (module docstring)."""
    block = block or Level("")
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


def expand(sweep: Sweep, path: str | Path = "", top: Level | None = None,
           blocks: dict[str, Level] | None = None) -> list[Task]:
    """One task per recipe x seed x fold x grid point, each validated against the RunConfig schema.

    Also settles each recipe's ``cpus_per_task`` (``data.num_workers + 1`` unless given; less
    than that is an error).
    """
    if top is None:
        top = Level("", overrides=dict(sweep.overrides), grid=dict(sweep.grid), lr_scale=sweep.lr_scale)
    blocks = blocks or {}
    tasks, seen = [], set()
    for entry in sweep.recipes:
        config_path, recipe = _recipe_of(entry)
        block = blocks.get(entry, blocks.get(recipe))
        fixed, grid, lr_scale = _recipe_axes(sweep.seeds, top, block, sweep.folds)
        fixed = {k: normalize(v) for k, v in fixed.items()}
        where = f"sweep {sweep.name}, recipe {recipe}"
        if sweep.folds == "sites" and "data.test_site" not in fixed:  # the command line's data.test_site: that site
            grid = {**({"seed": grid.pop("seed")} if "seed" in grid else {}),
                    "data.test_site": _sites(config_path, fixed, where), **grid}
        base_lr = None
        if lr_scale is not None:
            try:
                base_lr = load_config(config_path, as_overrides(
                    {k: v for k, v in fixed.items() if k not in FOLD_KEYS})).optim.lr  # a fold is a task's
            except ConfigError as e:
                raise SweepError(f"{where} (fixed overrides): {e}") from None
        keys = list(grid)
        workers = 0
        for values in itertools.product(*(grid[k] for k in keys)):
            params = {k: normalize(v) for k, v in zip(keys, values, strict=True)}
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
        data = load_config(config_path, as_overrides({k: v for k, v in fixed.items() if k not in SITE_KEYS})).data
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


def _settle_cpus(sweep: Sweep, recipe: str, block: Level | None, workers: int, path: str | Path) -> None:
    """``cpus_per_task`` of ``recipe``: ``data.num_workers + 1`` unless given; less than that is an error."""
    res = sweep.resources(recipe)
    key = f"{'per_recipe.' + recipe + '.' if block and 'cpus_per_task' in block.slurm else ''}slurm.cpus_per_task"
    if res.cpus_per_task is None:
        sweep.recipe_slurm[recipe] = dataclasses.replace(res, cpus_per_task=workers + 1)
    elif res.cpus_per_task < workers + 1:
        raise SweepError(f"{path or sweep.name}: {key}={res.cpus_per_task} is less than data.num_workers + 1 = "
                         f"{workers + 1} for recipe {recipe} (one CPU per loader worker plus one for training)")


# ----------------------------------------------------------------- search trials
def expand_search(sweep: Sweep, path: str | Path, top: Level, blocks: dict[str, Level]) -> None:
    """Check a search before anything runs: every recipe's fixed overrides, and every space key at its
    bounds and at each choice, build a ``RunConfig`` (errors name the key). Settles each recipe's fixed
    overrides (its seed explicit, so ``--confirm-seeds`` of that seed is the trial's own task) and CPUs."""
    spec = sweep.search_spec
    for entry in sweep.recipes:
        config_path, recipe = _recipe_of(entry)
        block = blocks.get(entry, blocks.get(recipe))
        fixed = {k: normalize(v) for k, v in _recipe_axes(None, top, block)[0].items()}
        try:
            base = load_config(config_path, as_overrides(fixed))
        except ConfigError as e:
            raise SweepError(f"sweep {sweep.name}, recipe {recipe} (fixed overrides): {e}") from None
        epochs = _epochs(base)
        for key, param in spec.space.items():
            for value in param.probes():
                try:
                    epochs = min(epochs, _epochs(load_config(config_path, as_overrides(fixed | {key: value}))))
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
