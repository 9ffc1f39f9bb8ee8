"""`python launch/predict.py`: the same as `brainmri-predict` (brainmri/cli/predict.py; `--help` lists its options)."""

import sys

from brainmri.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
