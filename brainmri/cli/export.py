"""Export a trained run as a stand-alone model (no brainmri needed to use it).

    python launch/export.py sweeps/lr/runs/<id> --format onnx --out model/
    python launch/export.py runs/<run> --format onnx torchscript --out model/
    python launch/export.py sweeps/cv_compare --recipe baseline_cnn --format onnx --out model/   # one graph, all folds

Writes model.onnx (dynamic batch axis) and/or model.ts (TorchScript) and model_card.json
(classes, preprocessing, input size, metrics with intervals, data fingerprint, config, code version).
An ensemble is one graph averaging its members' softmax; its card lists every member (run, fold, seed, metrics).
"""

from __future__ import annotations

from brainmri.cli.errors import one_line_errors
from brainmri.cli.parsing import saying
from brainmri.cli.target import TARGET_ERRORS, load_target, target_parser

FORMATS = ("onnx", "torchscript")  # brainmri.use.export.FORMATS


@one_line_errors(*TARGET_ERRORS, "brainmri.use.export:ExportError")
def main(argv: list[str] | None = None) -> int:
    p = target_parser(__doc__)
    p.add_argument("--format", nargs="+", default=["onnx"], choices=FORMATS, metavar="FMT",
                   help=f"{' '.join(FORMATS)} (default onnx)")
    p.add_argument("--out", required=True, help="output folder")
    args = p.parse_args(argv)
    from brainmri.use.export import export

    with saying(f"exporting {args.run_dir}" + (f" ({args.recipe} ensemble)" if args.recipe else "")
                + f" as {' and '.join(args.format)} into {args.out}: tracing, then checking the graph against "
                "PyTorch (about a minute) ..."):
        written = export(load_target(args.run_dir, args.recipe), args.out, args.format)
    for kind, path in written.items():
        print(f"{kind}: {path}")
    return 0
