"""`python launch/evaluate.py`: the same as `brainmri-evaluate` (brainmri/cli/evaluate.py; `--help` lists its
options)."""

import sys

from brainmri.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
