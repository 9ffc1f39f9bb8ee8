"""The code version one string names everywhere: ``--version`` of every tool, a run's summary and a model card.

``brainmri <package version>``, plus ``git <describe>`` when the package runs from a git checkout
(``-dirty`` when it has uncommitted changes). Bottom floor: imports nothing of brainmri.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("brainmri")
    except PackageNotFoundError:
        return "unknown"


def git_describe() -> str | None:
    """``git describe --always --dirty --tags`` of the checkout holding this package, else None."""
    repo = Path(__file__).resolve().parents[1]
    if not (repo / ".git").exists():  # an installed copy: never describe whatever repository encloses it
        return None
    try:
        out = subprocess.run(["git", "-C", str(repo), "describe", "--always", "--dirty", "--tags"],
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``brainmri 0.1.0 (git ae94f09-dirty)``, or ``brainmri 0.1.0`` outside a git checkout."""
    git = git_describe()
    return f"brainmri {package_version()}" + (f" (git {git})" if git else "")
