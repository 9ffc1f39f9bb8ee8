"""The process around one ``--cluster local`` task: runs it as a child and records how it ended.

submitit's local executor starts each task as ``python -m brainmri.jobs.local_task <python> -u -m
submitit.core._submit <folder>``. Stop signals (TERM, INT, USR2, CONT) are passed on to the task;
when the task ends, its exit code, and the signal if one killed it (SIGKILL from outside, the OOM
killer), go to ``<folder>/<job id>_<task>_exit.json`` with the task's CPU time, which
``brainmri.jobs.submit`` reads for the task's state. The task dies with this process (PR_SET_PDEATHSIG), so none
outlives a killed sweep.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

from brainmri.atomic import write_json

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2, signal.SIGCONT)
PR_SET_PDEATHSIG = 1


def exit_record(folder: str | Path, job_id: str, task: int = 0) -> Path:
    return Path(str(folder).replace("%j", str(job_id))) / f"{job_id}_{task}_exit.json"


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the task may then outlive a killed parent
        pass


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m brainmri.jobs.local_task COMMAND...", file=sys.stderr)
        return 2
    proc = subprocess.Popen(argv, preexec_fn=_die_with_parent)
    for signum in FORWARDED:
        signal.signal(signum, lambda s, _frame: proc.send_signal(s))
    code = proc.wait()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the task and every process it waited for
    record = {"pid": proc.pid, "returncode": code,
              "signal": signal.Signals(-code).name if code < 0 else None, "cpu_s": usage.ru_utime + usage.ru_stime}
    job_id, task = os.environ.get("SUBMITIT_LOCAL_JOB_ID"), int(os.environ.get("SUBMITIT_LOCAL_GLOBALID", "0"))
    if job_id:
        path = exit_record(argv[-1], job_id, task)  # the submitit folder is the command's last argument
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, record)
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
