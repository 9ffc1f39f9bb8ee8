#!/usr/bin/env bash
# From a fresh clone: set up .venv, run the demo sweep on this machine, and print the comparison table.
#   bash launch/demo.sh                    # on the embedded synthetic phantoms: sweeps/demo/
#   bash launch/demo.sh --data scans.csv   # on your own data, a manifest or a Training/<class>/ folder:
#                                          # sweeps/demo-<name>/demo/ (never mixed with the phantom runs)
set -euo pipefail
DATA=""
while [ $# -gt 0 ]; do
    case "$1" in
        --data) [ $# -ge 2 ] || { echo "demo.sh: --data needs a path (a manifest file or a data folder)" >&2; exit 2; }
                DATA=$2; shift 2 ;;
        --data=*) DATA=${1#--data=}; shift ;;
        *) echo "demo.sh: unknown argument '$1' (usage: bash launch/demo.sh [--data PATH])" >&2; exit 2 ;;
    esac
done
if [ -n "$DATA" ]; then
    [ -e "$DATA" ] || { echo "demo.sh: --data $DATA: no such file or folder" >&2; exit 2; }
    DATA="$(cd "$(dirname "$DATA")" && pwd)/$(basename "$DATA")"  # absolute: the demo runs from the repository root
fi
cd "$(dirname "$0")/.."
bash launch/setup.sh
export WANDB_MODE=${WANDB_MODE:-offline}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one thread per task: the tasks run side by side
SWEEP=(--config configs/sweeps/demo.yaml --cluster local)
OUT=sweeps/demo
if [ -n "$DATA" ]; then
    NAME=$(basename "$DATA"); NAME=${NAME%.*}; NAME=${NAME//[^A-Za-z0-9_-]/_}
    SWEEP+=(--data "$DATA" --sweeps-root "sweeps/demo-$NAME")
    OUT="sweeps/demo-$NAME/demo"
fi
.venv/bin/python launch/sweep.py "${SWEEP[@]}"
.venv/bin/python launch/collect.py "$OUT" --format md --out "$OUT/results.md" --plots "$OUT/plots" \
    --html "$OUT/report.html"
cat "$OUT/results.md"
echo "table: $OUT/results.md, plots: $OUT/plots/, runs: $OUT/runs/"
echo "HTML report: $PWD/$OUT/report.html"
