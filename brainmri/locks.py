"""Exclusive OS file locks that name their holder (bottom floor, beside ``atomic``).

A lock is a ``filelock.FileLock`` taken without waiting; its holder (host, pid, SLURM job id) is
noted in ``<lock>.holder`` so that the process refused can say who holds it. The OS releases the
lock when its process dies, so a killed run never leaves a stale lock behind. Used for the run
directory (``brainmri.rundir.acquire_lock``) and a search's driver (``brainmri.sweepdir.SweepDir``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from brainmri.atomic import read_json, write_json

if TYPE_CHECKING:
    from filelock import BaseFileLock


def holder_file(lock: Path) -> Path:
    """Where the holder of the lock ``lock`` is noted."""
    return lock.with_name(f"{lock.name}.holder")


def lock_holder(lock: Path) -> dict:
    """Who took the lock ``lock`` last (host, pid, SLURM job id; {} when nobody did)."""
    try:
        record = read_json(holder_file(lock))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def pid_alive(pid: int) -> bool:
    """A process ``pid`` runs on this host and is a Python program (a reused pid of another program is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return b"python" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


def hold_lock(path: Path, refused: Callable[[str], BaseException]) -> BaseFileLock:
    """Take the exclusive OS file lock ``path`` (it dies with its process) and note its holder beside
    it; when another process holds it, raise ``refused("host H pid P SLURM job J")`` at once.

    Returns the held lock; call ``release()`` when done.
    Example:
        >>> lock = hold_lock(run_dir / ".lock", lambda holder: RuntimeError(f"in use by {holder}"))
    """
    from filelock import FileLock, Timeout  # imported when a lock is taken: the tools' --help stays fast

    lock = FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        h = lock_holder(path)
        raise refused(f"host {h.get('host', '?')} pid {h.get('pid', '?')} "
                      f"SLURM job {h.get('slurm_job_id') or '-'}") from None
    write_json(holder_file(path), {"host": socket.gethostname(), "pid": os.getpid(),
                             "slurm_job_id": os.environ.get("SLURM_JOB_ID")})
    return lock
