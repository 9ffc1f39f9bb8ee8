"""Compare brainmri recipes from run dirs, offline W&B runs and/or the W&B API.

    python launch/collect.py sweeps/lr --format md [--out FILE] [--plots DIR] [--metric val/acc] [--by optim.lr]
    python launch/collect.py --wandb-project brainmri [--wandb-entity E] --group lr [--tag T] --format latex
"""

import sys

from brainmri.cli.collect import main

if __name__ == "__main__":
    sys.exit(main())
