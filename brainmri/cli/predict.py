"""Predict new scans with a trained run (its own config, its best checkpoint).

    python launch/predict.py sweeps/lr/runs/<id> new_scans/ --out preds.csv --cam cams/
    python launch/predict.py runs/<run> scan1.dcm scan2.png folder/ --out preds.csv
    python launch/predict.py sweeps/cv_compare --recipe baseline_cnn new_scans/ --out preds.csv   # fold ensemble

Inputs: image files, DICOM slices, folders (recursive; hidden and non-image files ignored) and
manifests (``docs/manifest.md``: a CSV/TSV with a path column; labels optional; its other columns
are copied into the predictions CSV).
Writes the CSV (path, predicted class, per-class probabilities, nearest training image, its
similarity and band) and ``<out stem>.skipped.csv`` (files that could not be used, with the reason).
"""

from __future__ import annotations

import sys

from brainmri.cli.errors import one_line_errors
from brainmri.cli.target import load_target, target_parser
from brainmri.config import ConfigError
from brainmri.data.files import DataError
from brainmri.models.weights import WeightsError
from brainmri.rundir import CheckpointError
from brainmri.use.ensemble import Ensemble
from brainmri.use.predict import predict_files, write_csv
from brainmri.use.trained import RunError


@one_line_errors(RunError, CheckpointError, ConfigError, WeightsError, DataError)
def main(argv=None) -> int:
    p = target_parser(__doc__)
    p.add_argument("inputs", nargs="+", help="image files, DICOM files, folders and manifests (CSV/TSV with a path "
                   "column; its other columns are copied into the predictions)")
    p.add_argument("--out", default="predictions.csv", help="CSV to write (default: predictions.csv)")
    p.add_argument("--cam", metavar="DIR", help="write Grad-CAM overlays and DIR/index.html")
    p.add_argument("--batch-size", type=int, help="default: the run's eval batch size")
    p.add_argument("--num-workers", type=int, default=0, help="decoding processes (default 0)")
    p.add_argument("--no-similarity", action="store_true", help="skip the nearest-training-image search")
    args = p.parse_args(argv)
    trained = load_target(args.run_dir, args.recipe)
    if args.cam and isinstance(trained, Ensemble):
        raise RunError("--cam explains one run's model: give one of the ensemble's run directories")
    pred = predict_files(trained, args.inputs, args.batch_size, args.num_workers, args.cam,
                         similarity=not args.no_similarity)
    for s in pred.skipped:
        print(f"skipped {s['path']}: {s['error']}", file=sys.stderr)
    csv_path, skipped_path = write_csv(pred, args.out)
    if pred.reference_note:
        print(f"note: no nearest-training similarity ({pred.reference_note})", file=sys.stderr)
    print(f"{len(pred.paths)} prediction(s) -> {csv_path}; {len(pred.skipped)} skipped -> {skipped_path}"
          + (f"; Grad-CAM -> {pred.cam_index}" if pred.cam_index else ""))
    if not pred.paths:
        print("error: no usable input files", file=sys.stderr)
        return 2
    return 0
