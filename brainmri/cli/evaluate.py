"""Evaluate a trained run on another data root (an external test set).

    python launch/evaluate.py sweeps/lr/runs/<id> --data /data/other-hospital
    python launch/evaluate.py runs/<run> --data /data/other-hospital --out results/other-hospital
    python launch/evaluate.py sweeps/cv_compare --recipe baseline_cnn --data /data/other-hospital   # fold ensemble

The root holds <class>/ folders (or Training/ and Testing/; Testing/ is evaluated when present)
with exactly the run's classes. Writes the test predictions, confusion matrix, summary and
skipped-file report — the files of training's own test evaluation — into --out
(default <run>/eval/<root name>/, for an ensemble <sweep>/ensembles/<recipe>/eval/<root name>/);
the run's own results are never touched.
"""

from __future__ import annotations

import sys

from brainmri.cli.errors import one_line_errors
from brainmri.cli.parsing import add_data_arg, saying
from brainmri.cli.target import TARGET_ERRORS, load_target, target_parser
from brainmri.rundir import RunDir


@one_line_errors(*TARGET_ERRORS, "brainmri.data.files:DataError")
def main(argv: list[str] | None = None) -> int:
    p = target_parser(__doc__)
    add_data_arg(p, required=True, help="data root with the run's class folders (<class>/, or Training/ and Testing/), "
                 "or a manifest (CSV/TSV: path, label, [patient, site, split]; its test rows, else every row; "
                 "docs/manifest.md)")
    p.add_argument("--out", help="output folder (default: <run_dir>/eval/<data root name>/)")
    p.add_argument("--batch-size", type=int, help="default: the run's eval batch size")
    p.add_argument("--num-workers", type=int, default=0)
    args = p.parse_args(argv)
    from brainmri.use.external import evaluate_run

    with saying(f"evaluating {args.run_dir}" + (f" ({args.recipe} ensemble)" if args.recipe else "")
                + f" on {args.data} ..."):
        trained = load_target(args.run_dir, args.recipe)
        summary = evaluate_run(args.run_dir, args.data, args.out, args.batch_size, args.num_workers, trained)
    if summary["skipped_files"]:
        print(f"skipped {summary['skipped_files']} unreadable image(s); see {RunDir(summary['out']).skipped_file}",
              file=sys.stderr)
    print(f"{summary['out']}: test/acc {summary['test/acc']:.4f} macro_f1 {summary['test/macro_f1']:.4f} "
          f"n {summary['test/n']}")
    return 0
