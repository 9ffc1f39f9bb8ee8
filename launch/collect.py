"""`python launch/collect.py`: the same as `brainmri-collect` (brainmri/cli/collect.py; `--help` lists its options)."""

import sys

from brainmri.cli.collect import main

if __name__ == "__main__":
    sys.exit(main())
