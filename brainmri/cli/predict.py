"""Predict new scans with a trained run (its own config, its best checkpoint).

    python launch/predict.py sweeps/lr/runs/<id> --data new_scans/ --out preds.csv --cam cams/
    python launch/predict.py runs/<run> scan1.dcm scan2.png folder/ --out preds.csv
    python launch/predict.py sweeps/cv_compare --recipe baseline_cnn --data new_scans/ --out preds.csv   # fold ensemble

Inputs: image files, DICOM slices, folders (recursive; hidden and non-image files ignored) and
manifests (``docs/manifest.md``: a CSV/TSV with a path column; labels optional; its other columns
are copied into the predictions CSV).
Writes the CSV (path, predicted class, per-class probabilities, nearest training image, its
similarity and band) and ``<out stem>.skipped.csv`` (files that could not be used, with the reason).
With no usable input file it writes nothing and exits 2.
"""

from __future__ import annotations

import sys

from brainmri.cli.errors import one_line_errors
from brainmri.cli.parsing import saying
from brainmri.cli.target import TARGET_ERRORS, load_target, target_parser


@one_line_errors(*TARGET_ERRORS, "brainmri.data.files:DataError")
def main(argv: list[str] | None = None) -> int:
    p = target_parser(__doc__)
    p.add_argument("inputs", nargs="*", default=[], help="image files, DICOM files, folders and manifests (as --data)")
    p.add_argument("--data", metavar="PATH", nargs="+", default=[], help="image files, DICOM files, folders "
                   "(recursive; hidden and non-image files ignored) and manifests (CSV/TSV with a path column; its "
                   "other columns are copied into the predictions)")
    p.add_argument("--out", default="predictions.csv", help="CSV to write (default: predictions.csv)")
    p.add_argument("--cam", metavar="DIR", help="write Grad-CAM overlays and DIR/index.html")
    p.add_argument("--batch-size", type=int, help="default: the run's eval batch size")
    p.add_argument("--num-workers", type=int, default=0, help="decoding processes (default 0)")
    p.add_argument("--no-similarity", action="store_true", help="skip the nearest-training-image search")
    args = p.parse_args(argv)
    inputs = list(args.data) + list(args.inputs)
    if not inputs:
        p.error("give the scans to predict: --data PATH [PATH ...]")
    from brainmri.data.manifest import is_manifest
    from brainmri.use.inputs import collect_inputs

    collected = collect_inputs([p for p in inputs if not is_manifest(p)])  # a manifest's files: read by predict_files
    if not collected.files and not any(is_manifest(p) for p in inputs):  # nothing to predict: nothing is loaded
        for s in collected.skipped:
            print(f"skipped {s['path']}: {s['error']}", file=sys.stderr)
        print(f"error: no usable input files in {', '.join(map(str, inputs))} (images: .jpg .png .tif ..., DICOM "
              f"slices; {len(collected.skipped)} skipped)", file=sys.stderr)
        return 2
    from brainmri.use.ensemble import Ensemble
    from brainmri.use.predict import predict_files, write_csv
    from brainmri.use.trained import RunError

    manifests = sum(is_manifest(p) for p in inputs)
    with saying(f"predicting {len(collected.files)} file(s)"
                + (f" and {manifests} manifest(s)' files" if manifests else "") + f" with {args.run_dir}"
                + (f" ({args.recipe} ensemble)" if args.recipe else "") + " ..."):
        trained = load_target(args.run_dir, args.recipe)
        if args.cam and isinstance(trained, Ensemble):
            raise RunError("--cam explains one run's model: give one of the ensemble's run directories")
        pred = predict_files(trained, inputs, args.batch_size, args.num_workers, args.cam,
                             similarity=not args.no_similarity)
    for s in pred.skipped:
        print(f"skipped {s['path']}: {s['error']}", file=sys.stderr)
    if not pred.paths:
        print(f"error: no usable input files in {', '.join(map(str, inputs))} ({len(pred.skipped)} skipped)",
              file=sys.stderr)
        return 2
    csv_path, skipped_path = write_csv(pred, args.out)
    if pred.reference_note:
        print(f"note: no nearest-training similarity ({pred.reference_note})", file=sys.stderr)
    print(f"{len(pred.paths)} prediction(s) -> {csv_path}; {len(pred.skipped)} skipped -> {skipped_path}"
          + (f"; Grad-CAM -> {pred.cam_index}" if pred.cam_index else ""))
    return 0
