"""Evaluate a trained run on another data root (an external test set).

    python launch/evaluate.py sweeps/lr/runs/<id> --data /data/other-hospital
    python launch/evaluate.py runs/<run> --data /data/other-hospital --out results/other-hospital

The root holds <class>/ folders (or Training/ and Testing/; Testing/ is evaluated when present)
with exactly the run's classes. Writes predictions_test.csv, confusion_test.png, summary.json and
skipped_files.json — the files of training's own test evaluation — into --out
(default <run>/eval/<root name>/); the run's own results are never touched.
"""

import sys

from brainmri.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
