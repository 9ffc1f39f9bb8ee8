"""Confirming a search's result: each recipe's best configuration re-run over other seeds.

``launch/sweep.py --confirm-seeds`` (``confirm_seeds``): once every recipe has its best trial, the
driver trains that configuration once per seed as ordinary tasks (``brainmri.sweep.expand.confirm_task``;
runs already done are kept), records them in ``trials.json`` under ``confirm`` and prints the metric's
mean and standard deviation over the seeds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from brainmri.jobs.search_trials import TrialTable, metric_value
from brainmri.jobs.submit import refresh, submit, wait
from brainmri.rundir import RunDir
from brainmri.sweep.expand import confirm_task
from brainmri.sweepdir import TASK_RESUBMITTABLE


def confirm_best(table: TrialTable, recipes: Sequence[str], seeds: list, cluster: str,
                 say: Callable[[str], None]) -> int:
    """Re-run each recipe's best configuration over ``seeds`` (ordinary tasks; done ones kept); 0 when every
    confirmation run finished with the metric, else 1."""
    sweep, chosen = table.sweep, []
    table.data["confirm"] = {}
    for recipe in recipes:
        best = table.data["best"][recipe]
        ids = []
        for seed in seeds:
            task, _ = confirm_task(sweep, recipe, best["params"], seed)
            task = table.tasks.setdefault(task.id, task)
            ids.append(task.id)
            chosen.append(task)
        table.data["confirm"][recipe] = {"trial": best["number"], "seeds": list(seeds), "tasks": ids}
    table.save()
    refresh(sweep.dir, chosen)
    todo = [t for t in {t.id: t for t in chosen}.values() if t.state in TASK_RESUBMITTABLE]
    say(f"confirming the best configuration over seeds {', '.join(map(str, seeds))}: {len(todo)} run(s) to train")
    jobs = submit(sweep, todo, cluster) if todo else []
    if cluster == "slurm" and jobs:
        wait(jobs)
    refresh(sweep.dir, chosen)
    table.save()
    return confirmation_summary(table, say)


def confirmation_summary(table: TrialTable, say: Callable[[str], None]) -> int:
    """Say each recipe's metric over its confirmation seeds (mean ± sample standard deviation); 1 when a
    confirmation run has no metric, else 0."""
    metric, code = table.spec.metric, 0
    for recipe, entry in table.data["confirm"].items():
        values = [metric_value((RunDir(table.tasks[i].run_dir).read_summary() or {}).get(metric))
                  for i in entry["tasks"]]
        done = [v for v in values if v is not None]
        if len(done) < len(values):
            code = 1
        mean = sum(done) / len(done) if done else math.nan
        std = (sum((v - mean) ** 2 for v in done) / (len(done) - 1)) ** 0.5 if len(done) > 1 else math.nan
        say(f"{recipe}: trial {entry['trial']} over {len(done)}/{len(values)} seed(s): {metric} {mean:.4g} ± {std:.2g}")
    return code
