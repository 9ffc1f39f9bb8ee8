"""The sweep YAML's schema: its keys, its levels (sweep-wide and per recipe) and the command line's.

A sweep file names its recipes and gives, sweep-wide and in each ``per_recipe.<recipe>`` block,
fixed ``overrides``, ``grid`` axes, an ``lr_scale`` axis and ``slurm`` resources (one ``Level``
each), plus ``seeds``, ``folds`` and ``search`` for every recipe; ``parse_sweep_file`` checks it
into a ``SweepFile``. The command line's ``key=value`` items (``CommandLine``) then beat every
level (``apply_command_line``), and ``new_sweep`` resolves the resources into a ``Sweep`` with no
tasks yet. Every error names the file and the key. The merge rules, and how each recipe's levels
become its tasks, are in ``brainmri.sweep.expand``.

Example:
    >>> sweep_file = parse_sweep_file("s.yaml", {"name": "s", "recipe": "resnet18", "seeds": [0, 1]})
    >>> sweep_file.recipes, sweep_file.seeds
    (['resnet18'], [0, 1])
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brainmri.config import ConfigError, check_mapping, flatten, parse_value, read_yaml, split_override
from brainmri.sweep.resources import ResourceError, SlurmResources, merge_resources, parse_resources
from brainmri.sweep.search import SearchError, SearchSpec, parse_search
from brainmri.sweep.tasks import Sweep, SweepError

SWEEP_KEYS = {"name", "recipe", "recipes", "seeds", "folds", "overrides", "grid", "lr_scale", "slurm", "per_recipe",
              "search"}
GRID_KEYS = ("grid", "lr_scale", "seeds", "folds")  # a sweep is a grid or a search (brainmri.sweep.search)
FOLD_KEYS = ("data.folds", "data.fold")  # set by folds: (an axis); never by a level of the file when it is given
SITE_KEYS = ("data.test_site",)  # set by folds: sites (leave one site out)
BLOCK_KEYS = {"overrides", "grid", "lr_scale", "slurm"}  # what a per_recipe block may set


def normalize(value: Any) -> Any:
    """A value of the sweep file as the command line would parse it (YAML 1.1 reads ``1e-3`` as a string)."""
    return parse_value(value) if isinstance(value, str) else value


# ----------------------------------------------------------------- one level
@dataclass
class Level:
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


def _parse_level(path: str | Path, data: dict[str, Any], where: str) -> Level:
    """The ``overrides``, ``grid``, ``lr_scale`` and ``slurm`` of one level, each checked (never ``run_dir``)."""
    level = Level(where)
    overrides = data.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise SweepError(f"{path}: {where}overrides must be a mapping of config keys, got {overrides!r}")
    level.overrides = {k: normalize(v) for k, v in flatten(overrides).items()}
    if "grid" in data:
        grid = data["grid"]
        if not isinstance(grid, dict):
            raise SweepError(f"{path}: {where}grid must be a mapping of config keys to lists, got {grid!r}")
        if not grid:
            raise SweepError(f"{path}: {where}grid is empty (leave it out for one task per recipe and seed)")
        level.grid = {k: _nonempty_list(path, f"{where}grid.{k}", v) for k, v in flatten(grid).items()}
    if "lr_scale" in data:
        scales = _nonempty_list(path, f"{where}lr_scale", data["lr_scale"])
        scales = [normalize(s) for s in scales]
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


def _check_level(path: str | Path, level: Level) -> None:
    """Within one level a key is either fixed or swept, and the LR axis is given once."""
    if level.lr_scale is not None and "optim.lr" in level.grid:
        raise SweepError(f"{path}: {level.where}lr_scale and {level.where}grid.optim.lr are the same axis; give one")
    for key in level.grid:
        if key in level.overrides:
            raise SweepError(f"{path}: {level.where}{key} is both in grid and in overrides; give one")


def _folds(path: str | Path, value: Any, key: str = "folds") -> int | str:
    """The fold axis: K >= 2 folds, or ``sites`` (``folds:`` only) for one task per held-out site."""
    value = normalize(value)
    if key == "folds" and value == "sites":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise SweepError(f"{path}: {key} must be an integer >= 2 (the number of folds)"
                         f"{' or sites (leave one site out)' if key == 'folds' else ''}, got {value!r}")
    return value


def _check_no_fold_keys(path: str | Path, levels: list[Level], sites: bool = False) -> None:
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


# ----------------------------------------------------------------- the file
@dataclass
class SweepFile:
    """A checked sweep YAML: its name, recipes, seed and fold axes, the sweep-wide level and each recipe's."""

    path: str | Path
    name: str
    recipes: list[str]
    top: Level
    blocks: dict[str, Level]  # per_recipe.<recipe>
    seeds: list[Any] | None
    folds: int | str | None
    file_fixed: set[str]  # every key a level of the file fixes (a search may not search it)
    is_search: bool = False
    search: Any = None  # the search: block as given

    @property
    def levels(self) -> list[Level]:
        return [self.top, *self.blocks.values()]


def read_sweep_yaml(path: str | Path) -> dict[str, Any]:
    """The sweep YAML at ``path`` as a mapping (a missing or unreadable file: SweepError)."""
    try:
        return read_yaml(path)
    except ConfigError as e:
        raise SweepError(str(e)) from None


def parse_sweep_file(path: str | Path, data: dict[str, Any], name: str | None = None) -> SweepFile:
    """Check the sweep YAML ``data`` read from ``path``: its keys, name (``name`` from the command line
    beats the file's), recipes, seed and fold axes, and each level; errors name the file and the key."""
    unknown = sorted(set(data) - SWEEP_KEYS)
    if unknown:
        raise SweepError(f"{path}: unknown sweep key {unknown[0]} (valid: {', '.join(sorted(SWEEP_KEYS))})")
    name = name if name is not None else data.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise SweepError(f"{path}: name must be a plain directory name, got {name!r}")
    recipes = _recipes(path, data)
    if "search" in data:
        _check_grid_or_search(path, data)
    seeds = _nonempty_list(path, "seeds", data["seeds"]) if "seeds" in data else None
    folds = _folds(path, data["folds"]) if "folds" in data else None
    top = _parse_level(path, data, "")
    if seeds is not None and "seed" in top.grid:
        raise SweepError(f"{path}: give seeds: or grid.seed, not both")
    blocks = _parse_blocks(path, data.get("per_recipe"), recipes)
    if folds is not None:
        _check_no_fold_keys(path, [top, *blocks.values()], folds == "sites")
    return SweepFile(path, name, recipes, top, blocks, seeds, folds,
                     file_fixed=set(top.overrides).union(*(b.overrides for b in blocks.values())),
                     is_search="search" in data, search=data.get("search"))


def _recipes(path: str | Path, data: dict[str, Any]) -> list[str]:
    """The file's ``recipe:`` or ``recipes:`` (exactly one given) as a list of names, each once, in order."""
    if ("recipe" in data) == ("recipes" in data):
        raise SweepError(f"{path}: give exactly one of recipe: or recipes:")
    recipes = data["recipes"] if "recipes" in data else [data["recipe"]]
    if not isinstance(recipes, list) or not recipes:
        raise SweepError(f"{path}: recipes must be a non-empty list of configs/<recipe>.yaml names, got {recipes!r}")
    if not all(isinstance(r, str) and r for r in recipes):
        raise SweepError(f"{path}: recipes must be names of configs/<recipe>.yaml, got {recipes!r}")
    return list(dict.fromkeys(recipes))


def _check_grid_or_search(path: str | Path, data: dict[str, Any]) -> None:
    """A search sweep has no grid axis: no ``grid``, ``lr_scale``, ``seeds`` or ``folds``, sweep-wide or per recipe."""
    both = [k for k in GRID_KEYS if k in data] + [
        f"per_recipe.{r}.{k}" for r, b in (data.get("per_recipe") or {}).items() if isinstance(b, dict)
        for k in ("grid", "lr_scale") if k in b]
    if both:
        raise SweepError(f"{path}: {both[0]} and search: both given; a sweep is a grid or a search (a search "
                         "trains one seed per trial: fix it under overrides:, re-run the best with "
                         "--confirm-seeds)")


def _parse_blocks(path: str | Path, blocks_data: Any, recipes: list[str]) -> dict[str, Level]:
    """Each ``per_recipe.<recipe>`` block as a ``Level``: a recipe of the sweep, only ``BLOCK_KEYS``, no seed."""
    if blocks_data is not None and (not isinstance(blocks_data, dict) or not blocks_data):
        raise SweepError(f"{path}: per_recipe must be a non-empty mapping of recipe -> block, got {blocks_data!r}")
    blocks: dict[str, Level] = {}
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
    return blocks


# ----------------------------------------------------------------- the command line
@dataclass
class CommandLine:
    """The ``key=value`` items given with a sweep: resources, the sweep's name, every task's config."""

    slurm: dict[str, Any] = field(default_factory=dict)  # slurm.<field>=value, without the prefix
    config: dict[str, Any] = field(default_factory=dict)  # any other key=value
    name: str | None = None  # name=...

    @classmethod
    def parse(cls, items: list[str] | tuple[str, ...]) -> CommandLine:
        """``slurm.<field>=value`` (resources), ``name=...``, any other ``key=value`` (every task's config)."""
        line = cls()
        for item in items:
            try:
                key, text = split_override(item)
            except ConfigError as e:
                raise SweepError(str(e)) from None
            if key.startswith("slurm."):
                line.slurm[key.removeprefix("slurm.")] = parse_value(text)
            elif key == "name":
                line.name = text
            else:
                line.config[key] = parse_value(text, key)
        return line


def apply_command_line(sweep_file: SweepFile, line: CommandLine) -> None:
    """The command line beats every level of the file: a config key given there is fixed for every recipe
    (its grid axes and the blocks' overrides of it dropped; ``optim.lr`` drops the LR axes, ``seed`` the
    seeds), ``data.folds=K`` sets the fold axis (unless it comes with ``data.fold=i`` and no ``folds:``,
    which trains that one fold), and ``slurm.<field>`` replaces the field sweep-wide and in each block."""
    top = sweep_file.top
    if "data.folds" in line.config and (sweep_file.folds is not None or "data.fold" not in line.config):
        sweep_file.folds = _folds("command line", line.config.pop("data.folds"), "data.folds")  # K folds
    for key, value in line.config.items():
        if key == "run_dir":
            raise SweepError("run_dir is set per task (<sweep dir>/runs/<task id>); do not override it")
        for level in sweep_file.levels:
            level.grid.pop(key, None)
            if level is not top:
                level.overrides.pop(key, None)
            if key == "optim.lr":
                level.lr_scale = None
        if key == "seed":
            sweep_file.seeds = None
        top.overrides[key] = normalize(value)
    top.slurm.update(line.slurm)
    for level in sweep_file.blocks.values():
        for key in line.slurm:
            level.slurm.pop(key, None)


def check_levels(sweep_file: SweepFile) -> None:
    """Each level as finally merged fixes or sweeps a key, never both, and gives the LR axis once; the seeds
    are an axis or a fixed ``seed``, never both."""
    for level in sweep_file.levels:
        _check_level(sweep_file.path, level)
    if sweep_file.seeds is not None and "seed" in sweep_file.top.overrides:
        raise SweepError(f"{sweep_file.path}: seed is both in seeds and in overrides; give one")


def parse_search_block(sweep_file: SweepFile, cli_keys: set[str]) -> SearchSpec | None:
    """The ``search:`` block checked (None for a grid sweep): a key the file fixes is never searched, one
    the command line fixes (``cli_keys``) leaves the space."""
    if not sweep_file.is_search:
        return None
    try:
        return parse_search(sweep_file.path, sweep_file.search, sweep_file.file_fixed, cli_keys)
    except SearchError as e:
        raise SweepError(str(e)) from None


# ----------------------------------------------------------------- the sweep, no tasks yet
def _resources(path: str | Path, data: dict[str, Any], where: str) -> SlurmResources:
    try:
        return parse_resources(data, where)
    except ResourceError as e:
        raise SweepError(f"{path}: {e}") from None


def new_sweep(sweep_file: SweepFile, search: SearchSpec | None, sweeps_root: str | Path) -> Sweep:
    """The ``Sweep`` that ``sweep_file`` describes, in ``<sweeps_root>/<name>``, with each recipe's resources
    resolved (its block's ``slurm:`` merged over the sweep-wide one) and no tasks yet."""
    path, top, blocks = sweep_file.path, sweep_file.top, sweep_file.blocks
    top_slurm = _resources(path, top.slurm, "slurm")
    recipe_slurm = {}
    for recipe in sweep_file.recipes:
        block = blocks.get(recipe)
        if block is not None:
            _resources(path, block.slurm, f"{block.where}slurm")  # errors name the block's own key
        recipe_slurm[recipe] = _resources(path, merge_resources(top.slurm, block.slurm if block else None),
                                          f"per_recipe.{recipe}.slurm" if block else "slurm")
    return Sweep(name=sweep_file.name, recipes=sweep_file.recipes, overrides=top.overrides, grid=top.grid,
                 slurm=top_slurm, dir=Path(sweeps_root).resolve() / sweep_file.name, seeds=sweep_file.seeds,
                 folds=sweep_file.folds, lr_scale=top.lr_scale,
                 per_recipe={r: {"overrides": b.overrides, "grid": b.grid, "lr_scale": b.lr_scale,
                                 "slurm": b.slurm} for r, b in blocks.items()},
                 recipe_slurm=recipe_slurm, search=search)
