"""Compute cost: wall time, throughput and CPU- or GPU-hours of runs, from their epoch history."""

from __future__ import annotations

import math

import numpy as np

from brainmri.results.comparison import RecipeCost, RecipeResult, RunCost
from brainmri.results.runs import Run


def run_cost(run: Run) -> RunCost:
    """Wall time (sum of epoch times), mean images/s and CPU-hours of one run from its history."""
    hist = run.history()
    wall = float(sum(h.get("time/epoch_s", 0.0) or 0.0 for h in hist))
    ips = [h["throughput/images_per_s"] for h in hist if h.get("throughput/images_per_s")]
    gpus = int((run.config.get("slurm") or {}).get("gpus_per_node") or 0)
    return RunCost(wall_s=wall, images_per_s=float(np.mean(ips)) if ips else math.nan,
                   hours=wall / 3600 * max(gpus, 1), kind="GPU-h" if gpus else "CPU-h")


def recipe_cost(rr: RecipeResult) -> RecipeCost:
    """Every finished run of a recipe (all its swept values): summed wall time and hours, mean images/s."""
    costs = [run_cost(r) for v in rr.per_value for r in v.runs]
    return RecipeCost(recipe=rr.recipe, runs=len(costs), wall_s=sum(c.wall_s for c in costs),
                      images_per_s=float(np.nanmean([c.images_per_s for c in costs] or [math.nan])),
                      hours=sum(c.hours for c in costs), kind="/".join(sorted({c.kind for c in costs})))
