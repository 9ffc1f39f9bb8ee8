"""A sweep's tasks as job arrays: one array per resource shape, and what the arrays request.

Tasks whose recipes ask the scheduler for the same ``SlurmResources`` share one job array
(``arrays``); ``bill`` is what the tasks request when each runs to its time limit, per recipe
and in all (GPU- and CPU-hours), the bill ``brainmri.jobs.submit`` prints.

Example:
    >>> bill(sweep, sweep.tasks)["gpu_hours"]
    12.0
"""

from __future__ import annotations

from typing import Any

from brainmri.sweep.resources import SlurmResources
from brainmri.sweep.tasks import Sweep, Task


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
