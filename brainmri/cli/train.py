"""Train one brainmri recipe.

    python train.py --config baseline_cnn --data /data/brain-mri             # one process, CPU or one GPU
    accelerate launch train.py --config resnet50_finetune --data /data/brain-mri optim.lr=3e-4
    python train.py --config configs/my_recipe.yaml data.root=/data/brain-mri  # a YAML path; data.root= works too
    python train.py --resume runs/<run>                                # continue an interrupted run
    python train.py --resume runs/<run> train.epochs=20                # extend a finished (or interrupted) run

--config takes a recipe name (configs/<name>.yaml) or a YAML path; key=value overrides any config
key (docs/config.md lists them all). Exit codes: 0 finished (or pruned by a search driver: the run's
status says pruned, checkpoints kept), 2 bad input, 75 disk full, 128+signal when stopped by a
signal (resumable).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from brainmri.atomic import DiskFullError
from brainmri.cli.errors import one_line_errors
from brainmri.cli.parsing import add_data_arg, resolve_config, tool_parser
from brainmri.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    from_dict,
    load_config,
)
from brainmri.rundir import CheckpointError, RunDirError, RunLockedError
from brainmri.train.resume import default_run_dir, load_run_config
from brainmri.train.signals import TrainingInterrupted, TrialPruned


def get_args_parser() -> argparse.ArgumentParser:
    parser = tool_parser(__doc__)
    parser.add_argument("--config", metavar="RECIPE|YAML",
                        help="a recipe name (baseline_cnn: configs/baseline_cnn.yaml) or a recipe YAML")
    add_data_arg(parser, help="data root (the same as data.root=PATH): a folder holding Training/<class>/ "
                              "(and optionally Testing/<class>/), or a manifest file")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR with its saved config")
    parser.add_argument("--fresh", action="store_true",
                        help="with --resume on a run that never wrote a checkpoint: start it from scratch")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    return parser


def resolve_config_args(args: argparse.Namespace) -> RunConfig:
    overrides = list(args.overrides) + ([f"data.root={args.data}"] if args.data else [])
    if args.resume:
        data = load_run_config(args.resume, fresh=args.fresh)
        apply_overrides(data, overrides)
        data["run_dir"] = args.resume
        return from_dict(data)
    if not args.config:
        raise ConfigError("give --config RECIPE (a name in configs/, or a YAML path) or --resume RUN_DIR")
    return load_config(resolve_config(args.config), overrides)


def _remove_unstarted(run_dir: Path) -> None:
    """A run directory this command created, that failed on bad input before its first epoch: removed."""
    if run_dir.is_dir() and not (run_dir / "metrics.jsonl").exists() and not any(run_dir.glob("checkpoints/*.pt")):
        shutil.rmtree(run_dir, ignore_errors=True)


# bad input ends with one line and exit 2 (the data and weights errors once their modules are imported)
@one_line_errors(ConfigError, CheckpointError, RunLockedError, RunDirError, FileNotFoundError,
                 "brainmri.data.files:DataError", "brainmri.models.weights:WeightsError")
def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.data and any(o.split("=", 1)[0].strip() == "data.root" for o in args.overrides):
        print("error: give the data root once: --data PATH or data.root=PATH", file=sys.stderr)
        return 2
    cfg: RunConfig | None = None
    new_dir: Path | None = None
    try:
        cfg = resolve_config_args(args)
        run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
        new_dir = None if run_dir.exists() else run_dir
        from brainmri.data.files import DataError
        from brainmri.models.weights import WeightsError
        from brainmri.train.engine import fit

        try:
            summary = fit(cfg)
        except (DataError, WeightsError, ConfigError):
            if new_dir is not None and int(os.environ.get("RANK", "0")) == 0:
                _remove_unstarted(new_dir)
            raise
    except TrialPruned as e:  # a search driver stopped it: a normal end, checkpoints kept
        print(f"{cfg.run_dir if cfg else ''}: {e}")
        return 0
    except TrainingInterrupted as e:  # checkpoint kept, the run's state "interrupted"/"preempted"
        print(f"error: {e}; resume with --resume {(cfg.run_dir if cfg else None) or 'RUN_DIR'}", file=sys.stderr)
        return e.exit_code
    except DiskFullError as e:  # the last good checkpoint is kept; the run's state says failed: no space
        e.hint = f"; resume with --resume {cfg.run_dir if cfg else 'RUN_DIR'} once space is freed"
        raise
    if int(os.environ.get("RANK", "0")) == 0:  # one line per run, not one per process
        print(f"{summary['run_dir']}: val/acc {summary['val/acc']:.4f}"
              + (f" test/acc {summary['test/acc']:.4f}" if "test/acc" in summary else ""))
    return 0
