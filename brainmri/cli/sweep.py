"""Run a sweep: expand a sweep YAML into tasks and submit them through submitit.

    python launch/sweep.py --config configs/sweeps/seed_lr_grid.yaml --cluster slurm [--dry-run]
    python launch/sweep.py --config ... --cluster slurm --only-failed     # resubmit what failed (per fold too)
    python launch/sweep.py --config ... --cluster local slurm.array_parallelism=2 train.epochs=3
    python launch/sweep.py status sweeps/<name>                           # states, job ids, errors

key=value arguments override SLURM resources (slurm.partition=gpu) or, for any other key, the
config of every task. Finished tasks (summary.json) and tasks still queued or running are never
resubmitted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from brainmri.config import load_config
from brainmri.models.weights import WeightsError
from brainmri.models.registry import ensure_weights
from brainmri.sweep.expand import (
    SweepError, Task, arrays, bill, describe, format_params, load_sweep, load_table, save_sweep, save_table,
)
from brainmri.jobs.submit import CLUSTERS, executor_parameters, refresh, submit, wait

RESUBMITTABLE = {"new", "failed"}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="sweep YAML, e.g. configs/sweeps/seed_lr_grid.yaml")
    parser.add_argument("--cluster", choices=CLUSTERS, default="slurm")
    parser.add_argument("--dry-run", action="store_true", help="print resources and commands; submit nothing")
    parser.add_argument("--only-failed", action="store_true", help="resubmit only the tasks that failed")
    parser.add_argument("--wait", action="store_true", help="with --cluster slurm: wait for the jobs to end")
    parser.add_argument("--sweeps-root", default="sweeps", help="the sweep directory is <root>/<name>")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    return parser


def print_status(tasks: list[Task]) -> int:
    for t in tasks:
        print(f"{t.id}  {t.state:<10} {t.job_id or '-':<12} {t.recipe}  {format_params(t.params)}")
    for t in tasks:
        if t.state == "failed":
            print(f"\n--- {t.id} failed (job {t.job_id}):")
            print("\n".join(f"    {line}" for line in (t.error or "").splitlines()))
    counts = {s: sum(t.state == s for t in tasks) for s in dict.fromkeys(t.state for t in tasks)}
    print("\n" + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return 1 if counts.get("failed") else 0


def status(sweep_dir: str) -> int:
    tasks = refresh(Path(sweep_dir), load_table(sweep_dir))
    save_table(Path(sweep_dir), tasks)
    return print_status(tasks)


def print_bill(sweep, tasks: list[Task]) -> None:
    b = bill(sweep, tasks)
    folds = f" ({sweep.folds} folds per recipe, configuration and seed)" if sweep.folds else ""
    print(f"bill (requested at the time limits): {b['tasks']} task(s) in {b['arrays']} array(s){folds}")
    print(f"  {'recipe':<22} {'tasks':>5} {'array':>5} {'GPU-h':>9} {'CPU-h':>9}")
    for r in b["rows"]:
        print(f"  {r['recipe']:<22} {r['tasks']:>5} {r['array']:>5} {r['gpu_hours']:>9.1f} {r['cpu_hours']:>9.1f}")
    print(f"  {'total':<22} {b['tasks']:>5} {b['arrays']:>5} {b['gpu_hours']:>9.1f} {b['cpu_hours']:>9.1f}")


def run(args: argparse.Namespace) -> int:
    sweep = load_sweep(args.config, args.overrides, args.sweeps_root)
    refresh(sweep.dir, sweep.tasks)
    wanted = {"failed"} if args.only_failed else RESUBMITTABLE
    chosen = [t for t in sweep.tasks if t.state in wanted]
    print(f"sweep {sweep.name}: {len(sweep.tasks)} task(s) in {sweep.dir}; {len(chosen)} to submit "
          f"({sum(t.state == 'finished' for t in sweep.tasks)} finished, "
          f"{sum(t.state not in RESUBMITTABLE | {'finished'} for t in sweep.tasks)} queued or running)")
    groups = arrays(sweep, chosen)
    for i, (res, group) in enumerate(groups, 1):  # every array's parameters are checked before any submission
        params = executor_parameters(res, sweep.name, args.cluster)
        recipes = ", ".join(dict.fromkeys(t.recipe for t in group))
        print(f"array {i}/{len(groups)} ({recipes}; {len(group)} task(s)), per task: {describe(res)}")
        print("  " + ", ".join(f"{k}={v}" for k, v in params.items() if not k.endswith("_setup")))
        for line in res.setup if args.cluster == "slurm" else ():
            print(f"  setup: {line}")
    for t in chosen:
        print(f"  {t.id}: {t.command()}")
    if chosen and (args.dry_run or args.cluster == "slurm"):
        print_bill(sweep, chosen)
    if args.dry_run or not chosen:
        return 0
    for t in chosen:  # pretrained weights: downloaded once here, read from the cache by every task
        ensure_weights(load_config(t.config_path, t.overrides))
    save_sweep(sweep)
    jobs = submit(sweep, chosen, args.cluster)
    if args.cluster == "slurm":
        ids = list(dict.fromkeys(j.job_id.split("_")[0] for j in jobs))
        print(f"submitted {len(ids)} array(s) {' '.join(ids)} ({len(jobs)} task(s)); "
              f"python launch/sweep.py status {sweep.dir}")
        if not args.wait:
            return 0
        wait(jobs)
    save_table(sweep.dir, refresh(sweep.dir, sweep.tasks))
    return print_status(sweep.tasks)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["status"]:
            if len(argv) != 2:
                print("usage: launch/sweep.py status SWEEP_DIR", file=sys.stderr)
                return 2
            return status(argv[1])
        return run(get_args_parser().parse_args(argv))
    except (SweepError, WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
