"""`python train.py` / `accelerate launch train.py`: the same as `brainmri-train` (brainmri/cli/train.py)."""

import atexit
import os
import sys
import threading

from brainmri.cli.train import main
from brainmri.train.tracking import wandb_prepared

if __name__ == "__main__":
    code = main()
    # the run is written and closed: wait for W&B's service to write its last files, run the exit
    # handlers (logging, locks), then leave without tearing down thousands of imported modules one
    # by one (about a second of CPU)
    wandb_prepared()
    if "wandb" in sys.modules:
        sys.modules["wandb"].teardown()
    for thread in threading.enumerate():  # as the interpreter does before its exit handlers
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
