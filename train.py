"""`python train.py` / `accelerate launch train.py`: the same as `brainmri-train` (brainmri/cli/train.py)."""

import atexit
import os
import sys
import threading

from brainmri.cli.train import main
from brainmri.train.tracking import wandb_prepared

if __name__ == "__main__":
    code = main()
    if code or "torch" not in sys.modules:  # bad input, a failed run: the ordinary exit
        sys.exit(code)
    # the run is written and closed: wait for W&B's service to write its last files, run the exit
    # handlers (logging, locks), then leave without tearing down thousands of imported modules one
    # by one (about a second of CPU)
    wandb_prepared()
    if "wandb" in sys.modules:
        sys.modules["wandb"].teardown()
    # what the interpreter does before its exit handlers: threading's own exit callbacks (which tell
    # thread pools, e.g. torch.compile's, to stop), then a join of every non-daemon thread
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
