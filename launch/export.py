"""Export a trained run as a stand-alone model (no brainmri needed to use it).

    python launch/export.py sweeps/lr/runs/<id> --format onnx --out model/
    python launch/export.py runs/<run> --format onnx torchscript --out model/

Writes model.onnx (dynamic batch axis) and/or model.ts (TorchScript) and model_card.json
(classes, preprocessing, input size, metrics with intervals, data fingerprint, config, code version).
"""

import sys

from brainmri.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
