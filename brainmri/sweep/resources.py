"""What one sweep task asks the scheduler for: the ``slurm:`` block of a sweep YAML.

Owns the ``SlurmResources`` schema and its checks (types, site setup lines, pass-through sbatch
options checked against sbatch's own long options), merging a recipe's block over the sweep-wide
one, the hours a task requests at its time limit, and a request in one line (``describe``). Knows
nothing about submitit or configs.

Example:
    >>> res = parse_resources({"gpus_per_node": 2, "sbatch": {"mail-type": "END"}}, "slurm")
    >>> res.hours()
    {'gpu_hours': 2.0, 'cpu_hours': 2.0}
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

# sbatch's long options (Slurm 22.05-24.05 man page); the pass-through accepts these only
SBATCH_OPTIONS = frozenset("""
account acctg-freq array batch bb bbf begin chdir cluster-constraint clusters comment constraint container
container-id contiguous core-spec cores-per-socket cpu-freq cpus-per-gpu cpus-per-task deadline delay-boot
dependency distribution error exclude exclusive export export-file extra extra-node-info get-user-env gid
gpu-bind gpu-freq gpus gpus-per-node gpus-per-socket gpus-per-task gres gres-flags help hint hold ignore-pbs
input job-name kill-on-invalid-dep licenses mail-type mail-user mcs-label mem mem-bind mem-per-cpu
mem-per-gpu mincpus network nice no-kill no-requeue nodefile nodelist nodes ntasks ntasks-per-core
ntasks-per-gpu ntasks-per-node ntasks-per-socket open-mode output overcommit oversubscribe parsable partition
power prefer priority profile propagate qos quiet reboot requeue reservation signal sockets-per-node
spread-job switches test-only thread-spec threads-per-core time time-min tmp tres-per-task uid usage
use-min-nodes verbose version wait wait-all-nodes wckey wrap
""".split())
# options brainmri sets itself (the sweep key to use instead, or None: not changeable)
MANAGED_OPTIONS = {
    "array": None, "output": None, "error": None, "open-mode": None, "requeue": None, "no-requeue": None,
    "wrap": None, "parsable": None, "wait": None, "test-only": None, "help": None, "usage": None,
    "version": None, "chdir": None, "job-name": "name", "signal": "slurm.signal_delay_s",
    "partition": "slurm.partition", "account": "slurm.account", "qos": "slurm.qos",
    "constraint": "slurm.constraint", "exclude": "slurm.exclude", "nodes": "slurm.nodes",
    "ntasks-per-node": "slurm.tasks_per_node", "cpus-per-task": "slurm.cpus_per_task", "mem": "slurm.mem_gb",
    "time": "slurm.time_min", "gpus-per-node": "slurm.gpus_per_node",
}


class ResourceError(ValueError):
    """A ``slurm.*`` key or value is invalid; the message names it."""


@dataclass
class SlurmResources:
    """What each task asks SLURM for (per task, not per sweep)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None  # node features, e.g. "a100|h100"
    exclude: str | None = None  # nodes never to use, e.g. "node[3-4]"
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int | None = None  # None: one task per GPU (one if no GPUs)
    cpus_per_task: int | None = None  # None: data.num_workers + 1 (one CPU per loader worker + the trainer)
    mem_gb: float = 8.0
    time_min: int = 60
    array_parallelism: int = 32
    signal_delay_s: int = 120  # USR2 this long before the time limit: the task requeues and resumes
    max_requeues: int = 20  # time-outs after which a task is still requeued
    setup: list[str] = field(default_factory=list)  # shell lines run in the job before the task
    sbatch: dict[str, Any] = field(default_factory=dict)  # other sbatch long options (true: a flag)

    @property
    def ntasks_per_node(self) -> int:
        return self.tasks_per_node or max(self.gpus_per_node, 1)

    def hours(self) -> dict[str, float]:
        """GPU- and CPU-hours one task requests when it runs to its time limit."""
        hours = self.time_min / 60
        return {"gpu_hours": self.nodes * self.gpus_per_node * hours,
                "cpu_hours": self.nodes * self.ntasks_per_node * (self.cpus_per_task or 1) * hours}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = typing.get_type_hints(SlurmResources)
POSITIVE = {"nodes", "tasks_per_node", "cpus_per_task", "mem_gb", "time_min", "array_parallelism"}
NON_NEGATIVE = {"gpus_per_node", "signal_delay_s", "max_requeues"}


def _check_scalar(where: str, key: str, value: Any) -> Any:
    kinds = typing.get_args(FIELDS[key]) or (FIELDS[key],)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ((value is None and type(None) in kinds) or (str in kinds and isinstance(value, str))
            or (int in kinds and number and float(value).is_integer())
            or (float in kinds and number)):
        expected = " or ".join(k.__name__ for k in kinds)
        raise ResourceError(f"{where}.{key}: expected {expected}, got {value!r}")
    if isinstance(value, str) and ("\n" in value or not value.strip()):
        raise ResourceError(f"{where}.{key}: expected one non-empty line, got {value!r}")
    if number and key in POSITIVE and value <= 0 or number and key in NON_NEGATIVE and value < 0:
        raise ResourceError(f"{where}.{key}: must be {'positive' if key in POSITIVE else '>= 0'}, got {value!r}")
    return int(value) if int in kinds and number else value


def _check_setup(where: str, value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(line, str) and line.strip() for line in value):
        raise ResourceError(f"{where}.setup: expected a list of shell lines, got {value!r}")
    return list(value)


def _check_sbatch(where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ResourceError(f"{where}.sbatch: expected a mapping of sbatch options, got {value!r}")
    options = {}
    for name, v in value.items():
        option = str(name).removeprefix("--").replace("_", "-")
        if option not in SBATCH_OPTIONS:
            raise ResourceError(f"{where}.sbatch.{name}: not an sbatch option (see `man sbatch`)")
        if option in MANAGED_OPTIONS:
            instead = MANAGED_OPTIONS[option]
            raise ResourceError(f"{where}.sbatch.{name}: set by brainmri" + (f"; use {instead}" if instead else ""))
        if v is True or (isinstance(v, (int, float, str)) and not isinstance(v, bool) and "\n" not in str(v)):
            options[option] = v
        else:
            raise ResourceError(f"{where}.sbatch.{name}: expected a value or true (a flag), got {v!r}")
    return options


def parse_resources(data: Any, where: str = "slurm") -> SlurmResources:
    """Check a ``slurm:`` mapping and build its ``SlurmResources``; errors name ``<where>.<key>``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ResourceError(f"{where}: expected a mapping of resources, got {data!r}")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ResourceError(f"unknown sweep key {where}.{unknown[0]} (valid: {', '.join(sorted(FIELDS))})")
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key == "setup":
            values[key] = _check_setup(where, value)
        elif key == "sbatch":
            values[key] = _check_sbatch(where, value)
        else:
            values[key] = _check_scalar(where, key, value)
    return SlurmResources(**values)


def merge_resources(base: dict[str, Any] | None, recipe: dict[str, Any] | None) -> dict[str, Any]:
    """A recipe's ``slurm:`` keys over the sweep-wide ones: each key replaces, except ``setup``
    (the recipe's lines run after the sweep-wide ones) and ``sbatch`` (merged option by option)."""
    base, recipe = dict(base or {}), dict(recipe or {})
    merged = base | recipe
    if "setup" in base and "setup" in recipe:
        merged["setup"] = _as_list(base["setup"]) + _as_list(recipe["setup"])
    if isinstance(base.get("sbatch"), dict) and isinstance(recipe.get("sbatch"), dict):
        merged["sbatch"] = base["sbatch"] | recipe["sbatch"]
    return merged


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


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
