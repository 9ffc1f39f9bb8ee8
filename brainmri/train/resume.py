"""Which run a config belongs to, and whether a run directory may continue with it.

- :func:`default_run_dir`: the same config always maps to the same ``runs/<recipe>-seed<seed>-<hash>``.
- :func:`check_resumable`: an interrupted run may resume with a config that differs only in how
  long it trains or how data is fed (:data:`RESUME_MAY_CHANGE`); anything else is a ConfigError.
- :func:`extends_finished`: a finished run is returned as is for the same config, extended when the
  config only adds epochs to its last phase, refused otherwise.
- :func:`load_run_config`: the saved config for ``train.py --resume`` (refusing a directory that
  never wrote a checkpoint unless asked to start fresh).

Reads config files only; knows nothing about models or training.
"""

from __future__ import annotations

from pathlib import Path

from brainmri.config import EXTENDABLE_KEYS, RUNTIME_KEYS, ConfigError, RunConfig, differing_keys, run_hash
from brainmri.rundir import CheckpointError, RunDir

# keys that never change what a run computes (brainmri.config: the one definition of run identity)
NEVER_MATTERS = RUNTIME_KEYS
# and what a resume may change besides: how long to train
RESUME_MAY_CHANGE = RUNTIME_KEYS + EXTENDABLE_KEYS


def default_run_dir(cfg: RunConfig) -> Path:
    """``runs/<recipe>-seed<seed>-<hash>``: the same run (``config.run_hash``) always maps to the same directory."""
    return Path("runs") / f"{cfg.recipe}-seed{cfg.seed}-{run_hash(cfg)}"


def _saved(run: RunDir) -> dict | None:
    return run.read_config()  # None: no readable config to compare with, the checkpoint itself decides


def _diff(old: dict, cfg: RunConfig, may_change: tuple[str, ...]) -> list[str]:
    return differing_keys(old, cfg.to_dict(), may_change)


def check_resumable(cfg: RunConfig, run: RunDir) -> None:
    """An interrupted run continues only with a config that may change (see above)."""
    old = _saved(run)
    diff = [] if old is None else _diff(old, cfg, RESUME_MAY_CHANGE)
    if diff:
        raise ConfigError(f"{run.path} already holds an interrupted run with a different config "
                          f"(differs in {', '.join(diff[:5])}); choose another run_dir")


def _phase_plan(tree: dict) -> list[tuple]:
    train = tree.get("train", {})
    phases = train.get("phases") or [{"name": "train", "epochs": train.get("epochs"), "train": train.get("trainable")}]
    return [(p.get("name"), p.get("epochs"), p.get("train"), p.get("lr_mult") or {}) for p in phases]


def extends_finished(cfg: RunConfig, run: RunDir) -> bool:
    """False for the same config (the finished run is returned as is); True when ``cfg`` only adds
    epochs to the last phase (the run is extended); any other difference is a ConfigError."""
    old = _saved(run)
    diff = [] if old is None else _diff(old, cfg, NEVER_MATTERS)
    if not diff or old is None:
        return False
    a, b = _phase_plan(old), _phase_plan(cfg.to_dict())
    longer = (len(a) == len(b) and a[:-1] == b[:-1] and a[-1][0] == b[-1][0] and a[-1][2:] == b[-1][2:]
              and b[-1][1] > a[-1][1])
    if longer and set(diff) <= {"train.epochs", "train.phases"}:
        return True
    raise ConfigError(f"{run.path} already holds a finished run with a different config "
                      f"(differs in {', '.join(diff[:5])}); choose another run_dir, or extend it by giving "
                      f"its last phase more epochs and nothing else")


def load_run_config(run_dir: str | Path, fresh: bool = False) -> dict:
    """The resolved config saved in a run directory (for ``--resume``).

    A directory with a config but neither a checkpoint nor a summary has nothing to resume: a
    CheckpointError says so, unless ``fresh`` (start that config from scratch there).
    """
    run = RunDir(run_dir)
    tree = run.read_config()
    if tree is None:
        raise FileNotFoundError(f"--resume: no readable {run.config_file.name} in {run_dir}")
    if not fresh and not run.has_checkpoint() and not run.is_finished():
        raise CheckpointError(f"--resume: {run_dir} has a config but no checkpoint (it stopped before its "
                              f"first checkpoint); add --fresh to start it from scratch")
    return tree
