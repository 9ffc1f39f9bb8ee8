#!/usr/bin/env bash
# From a fresh clone: set up .venv, run the demo sweep on this machine, and print the comparison table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
export WANDB_MODE=${WANDB_MODE:-offline}
.venv/bin/python launch/sweep.py --config configs/sweeps/demo.yaml --cluster local
.venv/bin/python launch/collect.py sweeps/demo --format md --out sweeps/demo/results.md --plots sweeps/demo/plots
cat sweeps/demo/results.md
echo "table: sweeps/demo/results.md, plots: sweeps/demo/plots/, runs: sweeps/demo/runs/"
