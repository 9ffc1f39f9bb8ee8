"""Train one brainmri recipe.

    accelerate launch train.py --config configs/resnet50_finetune.yaml data.root=/data/brain-mri optim.lr=3e-4
    python train.py --config configs/baseline_cnn.yaml                 # one process, CPU or one GPU
    python train.py --resume runs/<run>                                # continue an interrupted run
    python train.py --resume runs/<run> train.epochs=20                # extend a finished (or interrupted) run

Exit codes: 0 finished (or pruned by a search driver: the run's status says pruned, checkpoints kept),
2 bad input, 75 disk full, 128+signal when stopped by a signal (resumable).
"""

from __future__ import annotations

import argparse
import os
import sys

from brainmri.atomic import DiskFullError
from brainmri.cli.errors import full_disk_is_one_line
from brainmri.config import ConfigError, apply_overrides, from_dict, load_config
from brainmri.data.files import DataError
from brainmri.models.weights import WeightsError
from brainmri.rundir import CheckpointError, RunDirError, RunLockedError
from brainmri.train.engine import fit
from brainmri.train.resume import load_run_config
from brainmri.train.signals import TrainingInterrupted, TrialPruned


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="recipe YAML, e.g. configs/baseline_cnn.yaml")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR with its saved config")
    parser.add_argument("--fresh", action="store_true",
                        help="with --resume on a run that never wrote a checkpoint: start it from scratch")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    return parser


def resolve_config(args):
    if args.resume:
        data = load_run_config(args.resume, fresh=args.fresh)
        apply_overrides(data, args.overrides)
        data["run_dir"] = args.resume
        return from_dict(data)
    if not args.config:
        raise ConfigError("give --config configs/<recipe>.yaml (or --resume RUN_DIR)")
    return load_config(args.config, args.overrides)


@full_disk_is_one_line
def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        cfg = resolve_config(args)
        summary = fit(cfg)
    except (ConfigError, DataError, WeightsError, CheckpointError, RunLockedError, RunDirError,
            FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrialPruned as e:  # a search driver stopped it: a normal end, checkpoints kept
        print(f"{cfg.run_dir}: {e}")
        return 0
    except TrainingInterrupted as e:  # checkpoint kept, the run's state "interrupted"/"preempted"
        print(f"error: {e}; resume with --resume {cfg.run_dir or 'RUN_DIR'}", file=sys.stderr)
        return e.exit_code
    except DiskFullError as e:  # the last good checkpoint is kept; the run's state says failed: no space
        e.hint = f"; resume with --resume {cfg.run_dir} once space is freed"
        raise
    if int(os.environ.get("RANK", "0")) == 0:  # one line per run, not one per process
        print(f"{summary['run_dir']}: val/acc {summary['val/acc']:.4f}"
              + (f" test/acc {summary['test/acc']:.4f}" if "test/acc" in summary else ""))
    return 0
