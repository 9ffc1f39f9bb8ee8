"""`python launch/audit.py`: the same as `brainmri-audit` (brainmri/cli/audit.py; `--help` lists its options)."""

import sys

from brainmri.cli.audit import main

if __name__ == "__main__":
    sys.exit(main())
