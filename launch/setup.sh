#!/usr/bin/env bash
# Create .venv with brainmri and its dependencies, from nothing.
#   bash launch/setup.sh            # Python packages
#   bash launch/setup.sh --slurm    # also Debian's SLURM/munge/mariadb for the local test cluster (root),
#                                   # Chromium and pdflatex for the report tests
#   bash launch/setup.sh --system   # those Debian packages only (CI installs them beside the Python packages)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

python_packages() {
    if [ ! -x .venv/bin/python ]; then
        "$PYTHON" -m venv .venv
    fi
    # torch and torchvision are pinned as a matching pair: an unpinned torchvision pulls in another torch.
    .venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
    .venv/bin/python -m pip install --quiet -e ".[test,dev]"
    .venv/bin/python -c "import torch, torchvision, accelerate, wandb, submitit; print('torch', torch.__version__, '| torchvision', torchvision.__version__, '| accelerate', accelerate.__version__, '| wandb', wandb.__version__, '| submitit', submitit.__version__)"
}

system_packages() {
    bash slurm/install_local_cluster.sh
    # headless Chromium opens the HTML report in tests/test_report_html.py
    command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }
    # pdflatex (booktabs) compiles the collector's LaTeX tables and pdftoppm renders them in tests/test_cv_collect.py
    command -v pdflatex >/dev/null && command -v pdftoppm >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends texlive-latex-base texlive-latex-recommended poppler-utils; }
}

case "${1:-}" in
    --slurm) python_packages; system_packages ;;
    --system) system_packages ;;
    "") python_packages ;;
    *) echo "error: unknown option ${1}: --slurm, --system or none" >&2; exit 2 ;;
esac
