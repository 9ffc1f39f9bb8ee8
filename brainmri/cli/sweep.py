"""Run a sweep: expand a sweep YAML into tasks and submit them through submitit.

    python launch/sweep.py --config configs/sweeps/seed_lr_grid.yaml --cluster slurm [--dry-run]
    python launch/sweep.py --config ... --cluster slurm --only-failed     # resubmit what failed (per fold too)
    python launch/sweep.py --config ... --cluster local slurm.array_parallelism=2 train.epochs=3
    python launch/sweep.py status sweeps/<name>                           # states, job ids, errors

key=value arguments override SLURM resources (slurm.partition=gpu) or, for any other key, the
config of every task. Finished tasks and tasks still queued or running are never
resubmitted.
"""

from __future__ import annotations

import argparse
import sys

from brainmri.jobs.submit import CLUSTERS, run_sweep, status
from brainmri.models.weights import WeightsError
from brainmri.sweep.expand import SweepError, load_sweep
from brainmri.cli.errors import full_disk_is_one_line


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


@full_disk_is_one_line
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["status"]:
            if len(argv) != 2:
                print("usage: launch/sweep.py status SWEEP_DIR", file=sys.stderr)
                return 2
            return status(argv[1])
        args = get_args_parser().parse_args(argv)
        sweep = load_sweep(args.config, args.overrides, args.sweeps_root)
        return run_sweep(sweep, args.cluster, args.only_failed, args.dry_run, args.wait)
    except (SweepError, WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
