"""What every command-line tool shares: its parser (with ``--version``), ``--config`` and ``--data``.

The tools parse their arguments before importing anything heavy (torch, torchvision, accelerate,
scikit-learn, wandb): ``--help``, ``--version`` and every usage error answer at once. Only light
floors (config, rundir, sweep.expand) are imported here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, NoReturn

from brainmri.config import ConfigError

CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"  # the recipes shipped with brainmri


class _Version(argparse.Action):
    """``--version``: computed only when asked (it runs ``git describe``)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest=dest, nargs=0, default=argparse.SUPPRESS,
                         help="print brainmri's version (and git commit) and exit", **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        from brainmri.version import code_version

        print(code_version())
        parser.exit()


class ToolParser(argparse.ArgumentParser):
    """A usage error is one line starting with ``error:`` (and where to read the usage), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (usage: {self.prog} --help)\n")


def tool_parser(description: str | None) -> argparse.ArgumentParser:
    """A tool's parser: its docstring as the description, and ``--version``."""
    p = ToolParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action=_Version)
    return p


def add_data_arg(p: argparse.ArgumentParser, required: bool = False, help: str | None = None) -> None:
    """``--data PATH``, the same on every tool: a data root folder (or a manifest file the data layer reads)."""
    p.add_argument("--data", metavar="PATH", required=required,
                   help=help or "data root: a folder holding Training/<class>/ (and optionally Testing/<class>/)")


def recipe_names(kind: str = "recipe") -> list[str]:
    folder = CONFIGS_DIR / "sweeps" if kind == "sweep" else CONFIGS_DIR
    return sorted(p.stem for p in folder.glob("*.yaml"))


def resolve_config(text: str, kind: str = "recipe") -> Path:
    """``--config``: a YAML path, or the name of a shipped recipe (``baseline_cnn`` → configs/baseline_cnn.yaml;
    a sweep's ``seed_lr_grid`` → configs/sweeps/seed_lr_grid.yaml). A ConfigError naming both when neither exists."""
    path = Path(text)
    if path.is_file():
        return path
    folder = CONFIGS_DIR / "sweeps" if kind == "sweep" else CONFIGS_DIR
    named = folder / f"{text}.yaml"
    if path.suffix not in (".yaml", ".yml") and len(path.parts) == 1 and named.is_file():
        try:
            return named.relative_to(Path.cwd())
        except ValueError:
            return named
    names = ", ".join(recipe_names(kind)) or "none"
    raise ConfigError(f"--config {text}: config file not found: {path} (nor a {kind} named {text!r} in "
                      f"{folder}; {kind}s: {names})")


class saying:
    """``with saying("exporting ..."):`` a long step says what it does, in one line on stderr: at once on a
    terminal; in a log only once it has run ``after_s`` seconds, so that bad input found in its first
    moments stays the one line the tool prints."""

    def __init__(self, message: str, after_s: float = 5.0) -> None:
        import threading

        self.message = message
        self._lock = threading.Lock()
        self._done = False
        self._timer = threading.Timer(after_s, self._say)
        self._timer.daemon = True

    def _say(self) -> None:
        with self._lock:
            if not self._done:
                print(self.message, file=sys.stderr, flush=True)

    def __enter__(self) -> saying:  # noqa: PYI034
        if sys.stderr.isatty():
            self._say()
            self._done = True
        else:
            self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._done = True
        self._timer.cancel()
