"""What predict, evaluate and export use: one run directory, or a sweep directory plus ``--recipe``.

A sweep directory (it holds ``tasks.json``, ``brainmri.sweep.table.load_table``) with
``--recipe NAME`` is the ensemble of that recipe's chosen configuration over all its folds × seeds
(``brainmri.use.ensemble.Ensemble``); a missing or unknown recipe is one line listing the sweep's
recipes. Anything else is a run directory (``brainmri.use.trained.TrainedRun``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from brainmri.cli.parsing import tool_parser
from brainmri.sweep.expand import SweepError, load_table
from brainmri.sweepdir import SweepDir

if TYPE_CHECKING:
    from brainmri.use.ensemble import Ensemble
    from brainmri.use.trained import TrainedRun

# what predict, evaluate and export end with one line and exit 2 (imported only once they are)
TARGET_ERRORS = ("brainmri.use.trained:RunError", "brainmri.rundir:CheckpointError", "brainmri.config:ConfigError",
                 "brainmri.models.weights:WeightsError")


def target_parser(description: str | None) -> argparse.ArgumentParser:
    """The argument parser of predict, evaluate and export, with the run (or sweep + ``--recipe``) they use."""
    p = tool_parser(description)
    add_target_args(p)
    return p


def add_target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a brainmri run directory (its config and best checkpoint are used), or a sweep "
                   "directory with --recipe (the ensemble of the recipe's chosen configuration)")
    p.add_argument("--recipe", help="with a sweep directory: the recipe whose chosen configuration's folds x seeds "
                   "form the ensemble (mean of their softmax probabilities)")


def is_sweep_dir(path: str | Path) -> bool:
    return SweepDir.is_sweep_dir(path)


def load_target(path: str | Path, recipe: str | None = None) -> TrainedRun | Ensemble:
    """A TrainedRun, or the Ensemble of ``recipe`` in the sweep directory ``path``; a RunError (one line) otherwise."""
    from brainmri.use.ensemble import Ensemble
    from brainmri.use.trained import RunError, TrainedRun

    if not is_sweep_dir(path):
        if recipe:
            raise RunError(f"--recipe {recipe}: {path} is not a sweep directory (no tasks.json); "
                           "--recipe takes a sweep directory")
        return TrainedRun.load(path)
    try:
        tasks = load_table(path)
    except (SweepError, ValueError, TypeError) as e:
        raise RunError(f"{Path(path) / 'tasks.json'} cannot be read: "
                       f"{str(e).splitlines()[0] if str(e) else e}") from None
    recipes = sorted({t.recipe for t in tasks})
    if not recipe:
        raise RunError(f"{path} is a sweep directory: give --recipe NAME (recipes: {', '.join(recipes) or 'none'})")
    if recipe not in recipes:
        raise RunError(f"--recipe {recipe}: no such recipe in {path} (recipes: {', '.join(recipes) or 'none'})")
    # the table's run directories, or where the sweep keeps them when it was written from another folder
    run_dirs = [d if d.is_dir() else SweepDir(path).run_dir(t.id).path
                for t in tasks if t.recipe == recipe for d in [Path(t.run_dir)]]
    return Ensemble.from_runs(run_dirs, recipe, path)
