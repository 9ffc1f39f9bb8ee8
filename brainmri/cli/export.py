"""Export a trained run as a stand-alone model (no brainmri needed to use it).

    python launch/export.py sweeps/lr/runs/<id> --format onnx --out model/
    python launch/export.py runs/<run> --format onnx torchscript --out model/
    python launch/export.py sweeps/cv_compare --recipe baseline_cnn --format onnx --out model/   # one graph, all folds

Writes model.onnx (dynamic batch axis) and/or model.ts (TorchScript) and model_card.json
(classes, preprocessing, input size, metrics with intervals, data fingerprint, config, code version).
An ensemble is one graph averaging its members' softmax; its card lists every member (run, fold, seed, metrics).
"""

from __future__ import annotations

import argparse
import sys

from brainmri.config import ConfigError
from brainmri.use.export import FORMATS, ExportError, export
from brainmri.models.weights import WeightsError
from brainmri.use.trained import RunError
from brainmri.rundir import CheckpointError
from brainmri.cli.errors import full_disk_is_one_line
from brainmri.cli.target import add_target_args, load_target


@full_disk_is_one_line
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_target_args(p)
    p.add_argument("--format", nargs="+", default=["onnx"], metavar="FMT", help=f"{' '.join(FORMATS)} (default onnx)")
    p.add_argument("--out", required=True, help="output folder")
    args = p.parse_args(argv)
    try:
        trained = load_target(args.run_dir, args.recipe)
        written = export(trained, args.out, args.format)
    except (RunError, CheckpointError, ConfigError, WeightsError, ExportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for kind, path in written.items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
