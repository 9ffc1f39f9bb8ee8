"""The sweep directory's task table, and whether a re-run is still the same sweep.

``save_sweep`` writes ``sweep.yaml`` (the sweep resolved) and the task table: ``tasks.json``
(every field of every task) and ``tasks.csv`` (one line a task, to read); ``load_table`` reads the
tasks back, ``merge_table`` carries job ids, states and errors over to a re-loaded sweep.
A re-run may add tasks, never drop one: ``sweep_differences`` names what makes it another sweep
(changed fixed settings, a dropped recipe or grid value) and ``check_same_sweep`` refuses it
before anything is written.

Example:
    >>> check_same_sweep(sweep)  # SweepError: <dir> holds another sweep: resnet18 optim.lr 0.001 -> 0.01; ...
    >>> save_sweep(sweep)
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path

import yaml

from brainmri.atomic import atomic_write
from brainmri.config import is_runtime_key
from brainmri.sweep.tasks import DERIVED_KEYS, Sweep, SweepError, Task, format_params
from brainmri.sweepdir import SweepDir


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
