"""Run a sweep: expand a sweep YAML into tasks and submit them through submitit.

    python launch/sweep.py --config seed_lr_grid --data /data/brain-mri [--dry-run]   # SLURM if sbatch answers
    python launch/sweep.py --config configs/sweeps/seed_lr_grid.yaml --cluster slurm --only-failed  # resubmit failures
    python launch/sweep.py --config demo --cluster local slurm.array_parallelism=2 train.epochs=3
    python launch/sweep.py status sweeps/<name>                           # states, epoch/batch, ETA, errors
    python launch/sweep.py --config search_lr --cluster slurm [--confirm-seeds 0,1,2]

--config takes a sweep name (configs/sweeps/<name>.yaml) or a YAML path. --cluster auto (the
default) submits to SLURM where sbatch answers and runs the tasks on this machine otherwise, and
says which. key=value arguments override SLURM resources (slurm.partition=gpu) or, for any other
key, the config of every task. Finished tasks and tasks still queued or running are never
resubmitted. A sweep with search: runs the search driver (brainmri.jobs.search) until the study
ends; run the same command again after a crash or scancel to continue it.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys

from brainmri.cli.errors import full_disk_is_one_line
from brainmri.cli.parsing import add_data_arg, resolve_config, tool_parser
from brainmri.config import ConfigError
from brainmri.sweep.expand import SweepError, load_sweep

CLUSTERS = ("auto", "slurm", "local", "debug")  # brainmri.jobs.submit.CLUSTERS, and auto


def get_args_parser() -> argparse.ArgumentParser:
    parser = tool_parser(__doc__)
    parser.add_argument("--config", required=True, metavar="SWEEP|YAML",
                        help="a sweep name (seed_lr_grid: configs/sweeps/seed_lr_grid.yaml) or a sweep YAML")
    add_data_arg(parser, help="data root of every task (the same as data.root=PATH)")
    parser.add_argument("--cluster", choices=CLUSTERS, default="auto",
                        help="auto (default): slurm where sbatch answers, else local; debug: in this process")
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


def slurm_missing() -> str | None:
    """Why SLURM cannot take jobs from this machine (None when ``sbatch --version`` answers and srun is there)."""
    for tool in ("sbatch", "srun"):
        if shutil.which(tool) is None:
            return f"{tool} not found on PATH"
    try:
        out = subprocess.run(["sbatch", "--version"], capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        return f"sbatch --version failed: {e}"
    return None if out.returncode == 0 else f"sbatch --version exited {out.returncode}"


def pick_cluster(requested: str, dry_run: bool = False) -> str:
    """``auto`` → slurm or local (said in one line on stderr); ``slurm`` without SLURM → a SweepError
    (a dry run only prints the plan: it may plan for SLURM anywhere)."""
    if requested == "auto":
        why = slurm_missing()
        cluster = "local" if why else "slurm"
        print(f"cluster: {cluster} ({why + '; tasks run on this machine' if why else 'sbatch answers'}; "
              "--cluster slurm|local to choose)", file=sys.stderr)
        return cluster
    if requested == "slurm" and not dry_run:
        why = slurm_missing()
        if why:
            raise SweepError(f"--cluster slurm: no SLURM here ({why}); use --cluster local to run the tasks on "
                             "this machine (or leave --cluster out: auto)")
    return requested


@full_disk_is_one_line
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["status"]:
            if len(argv) != 2:
                print("error: usage: launch/sweep.py status SWEEP_DIR", file=sys.stderr)
                return 2
            from brainmri.jobs.submit import status

            return status(argv[1])
        args = get_args_parser().parse_args(argv)
        overrides = list(args.overrides) + ([f"data.root={args.data}"] if args.data else [])
        sweep = load_sweep(resolve_config(args.config, "sweep"), overrides, args.sweeps_root)
        cluster = pick_cluster(args.cluster, args.dry_run)
        from brainmri.jobs.search import run_search
        from brainmri.jobs.submit import run_sweep

        if sweep.search is not None:
            return run_search(sweep, cluster, args.dry_run, args.poll, args.confirm_seeds)
        if args.confirm_seeds:
            raise SweepError("--confirm-seeds re-runs the best trial of a search: the sweep has no search:")
        return run_sweep(sweep, cluster, args.only_failed, args.dry_run, args.wait)
    except (SweepError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        weights = sys.modules.get("brainmri.models.weights")
        if weights is None or not isinstance(e, weights.WeightsError):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
