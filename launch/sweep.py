"""`python launch/sweep.py`: the same as `brainmri-sweep` (brainmri/cli/sweep.py; `--help` lists its options)."""

import sys

from brainmri.cli.sweep import main

if __name__ == "__main__":
    sys.exit(main())
