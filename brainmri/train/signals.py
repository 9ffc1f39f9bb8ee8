"""Stop signals: SIGTERM, SIGINT and SIGUSR2 only set a flag; training stops after the current step.

:class:`StopSignals` installs the handlers for the duration of a ``with`` block (main thread only;
SIGUSR2 is left to submitit inside a sweep job) and remembers the first signal. A second SIGINT
exits at once (the default action). :class:`TrainingInterrupted` carries the exit code 128+signum.
:class:`TrialPruned` is the other way a run stops early: a search driver's request, read from the run
directory at each epoch end (``brainmri.jobs.search``).
"""

from __future__ import annotations

import logging
import os
import signal
import threading

log = logging.getLogger("brainmri")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)


class TrainingInterrupted(Exception):
    """SIGTERM/SIGINT/SIGUSR2 stopped training after a finished step; ``exit_code`` is 128+signum."""

    def __init__(self, signum: int):
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


class TrialPruned(Exception):
    """A search driver pruned this run; it stopped cleanly after epoch ``epoch`` (checkpoints kept)."""

    def __init__(self, epoch: int):
        self.epoch = epoch
        super().__init__(f"pruned by the search driver after epoch {epoch}")


class StopSignals:
    """``with StopSignals() as stop: ... stop.signum`` (0 until a stop signal came)."""

    def __init__(self):
        self.signum = 0
        self._previous: dict = {}

    def _handler(self, signum, frame) -> None:
        self.signum = self.signum or signum
        again = ""
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # a second Ctrl-C exits at once
            again = " (press Ctrl-C again to exit at once, without a checkpoint)"
        log.warning("%s: stopping after this step%s", signal.Signals(signum).name, again)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                if not (s == signal.SIGUSR2 and os.environ.get("SUBMITIT_EXECUTOR")):  # submitit owns USR2
                    self._previous[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}


def agree(signum: int, due: bool, accelerator) -> tuple[int, bool]:
    """(stop signal, checkpoint due) agreed by every rank at this step: one all-reduce (MAX) of the flags."""
    if accelerator.num_processes == 1:
        return signum, due
    import torch

    flags = torch.tensor([float(signum), float(due)], device=accelerator.device)
    torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    return int(flags[0].item()), bool(flags[1].item())
