#!/usr/bin/env bash
# From a fresh clone: set up .venv, run the demo sweep on this machine, and print the comparison table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
export WANDB_MODE=${WANDB_MODE:-offline}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one thread per task: the tasks run side by side
.venv/bin/python launch/sweep.py --config configs/sweeps/demo.yaml --cluster local
.venv/bin/python launch/collect.py sweeps/demo --format md --out sweeps/demo/results.md --plots sweeps/demo/plots \
    --html sweeps/demo/report.html
cat sweeps/demo/results.md
echo "table: sweeps/demo/results.md, plots: sweeps/demo/plots/, runs: sweeps/demo/runs/"
echo "HTML report: $PWD/sweeps/demo/report.html"
