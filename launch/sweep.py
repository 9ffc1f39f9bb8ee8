"""Run a sweep: expand a sweep YAML into tasks and submit them through submitit.

    python launch/sweep.py --config configs/sweeps/seed_lr_grid.yaml --cluster slurm [--dry-run]
    python launch/sweep.py --config ... --cluster slurm --only-failed     # resubmit what failed
    python launch/sweep.py --config ... --cluster local slurm.array_parallelism=2 train.epochs=3
    python launch/sweep.py status sweeps/<name>                           # states, job ids, errors

key=value arguments override SLURM resources (slurm.partition=gpu) or, for any other key, the
config of every task. Finished tasks (summary.json) and tasks still queued or running are never
resubmitted.
"""

import sys

from brainmri.cli.sweep import main

if __name__ == "__main__":
    sys.exit(main())
