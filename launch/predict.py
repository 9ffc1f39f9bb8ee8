"""Predict new scans with a trained run (its own config, its best checkpoint).

    python launch/predict.py sweeps/lr/runs/<id> new_scans/ --out preds.csv --cam cams/
    python launch/predict.py runs/<run> scan1.dcm scan2.png folder/ --out preds.csv

Inputs: image files, DICOM slices and folders (recursive; hidden and non-image files ignored).
Writes the CSV (path, predicted class, per-class probabilities, nearest training image, its
similarity and band) and ``<out stem>.skipped.csv`` (files that could not be used, with the reason).
"""

import sys

from brainmri.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
