"""Run a sweep: expand a sweep YAML into tasks and submit them through submitit.

    python launch/sweep.py --config configs/sweeps/seed_lr_grid.yaml --cluster slurm [--dry-run]
    python launch/sweep.py --config ... --cluster slurm --only-failed     # resubmit what failed (per fold too)
    python launch/sweep.py --config ... --cluster local slurm.array_parallelism=2 train.epochs=3
    python launch/sweep.py status sweeps/<name>                           # states, job ids, errors
    python launch/sweep.py --config configs/sweeps/search_lr.yaml --cluster slurm [--confirm-seeds 0,1,2]

key=value arguments override SLURM resources (slurm.partition=gpu) or, for any other key, the
config of every task. Finished tasks and tasks still queued or running are never
resubmitted. A sweep with search: runs the search driver (brainmri.jobs.search) until the study
ends; run the same command again after a crash or scancel to continue it.
"""

from __future__ import annotations

import argparse
import sys

from brainmri.cli.errors import full_disk_is_one_line
from brainmri.jobs.search import run_search
from brainmri.jobs.submit import CLUSTERS, run_sweep, status
from brainmri.models.weights import WeightsError
from brainmri.sweep.expand import SweepError, load_sweep


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="sweep YAML, e.g. configs/sweeps/seed_lr_grid.yaml")
    parser.add_argument("--cluster", choices=CLUSTERS, default="slurm")
    parser.add_argument("--dry-run", action="store_true", help="print resources and commands; submit nothing")
    parser.add_argument("--only-failed", action="store_true", help="resubmit only the tasks that failed")
    parser.add_argument("--wait", action="store_true", help="with --cluster slurm: wait for the jobs to end")
    parser.add_argument("--sweeps-root", default="sweeps", help="the sweep directory is <root>/<name>")
    parser.add_argument("--confirm-seeds", type=_seeds, metavar="0,1,2",
                        help="search: then re-run each recipe's best configuration over these seeds")
    parser.add_argument("--poll", type=float, default=2.0, metavar="SECONDS",
                        help="search: how often the driver looks at its trials (default 2)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    return parser


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integer seeds, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct comma-separated seeds, got {text!r}")
    return seeds


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
        if sweep.search is not None:
            return run_search(sweep, args.cluster, args.dry_run, args.poll, args.confirm_seeds)
        if args.confirm_seeds:
            raise SweepError("--confirm-seeds re-runs the best trial of a search: the sweep has no search:")
        return run_sweep(sweep, args.cluster, args.only_failed, args.dry_run, args.wait)
    except (SweepError, WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
