"""`python launch/export.py`: the same as `brainmri-export` (brainmri/cli/export.py; `--help` lists its options)."""

import sys

from brainmri.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
