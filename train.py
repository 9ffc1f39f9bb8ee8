"""Train one brainmri recipe.

    accelerate launch train.py --config configs/resnet50_finetune.yaml data.root=/data/brain-mri optim.lr=3e-4
    python train.py --config configs/baseline_cnn.yaml                 # one process, CPU or one GPU
    python train.py --resume runs/<run>                                # continue an interrupted run
    python train.py --resume runs/<run> train.epochs=20                # extend a finished (or interrupted) run
"""

import sys

from brainmri.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
