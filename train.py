"""`python train.py` / `accelerate launch train.py`: the same as `brainmri-train` (brainmri/cli/train.py)."""

import sys

from brainmri.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
