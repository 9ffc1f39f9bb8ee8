"""`python train.py` / `accelerate launch train.py`: the same as `brainmri-train` (brainmri/cli/train.py)."""

import atexit
import os
import sys

from brainmri.cli.train import main

if __name__ == "__main__":
    code = main()
    # the run is written and closed: run the exit handlers (logging, W&B, locks), then leave without
    # tearing down thousands of imported modules one by one (about a second of CPU)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
