"""The console scripts installed with the package (launch/setup.sh's fresh .venv): each runs from any
directory without PYTHONPATH, and bad input is still one line with exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = ["brainmri-train", "brainmri-sweep", "brainmri-collect", "brainmri-audit", "brainmri-predict",
           "brainmri-evaluate", "brainmri-export"]
BIN = Path(sys.executable).parent
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


@pytest.mark.parametrize("script", SCRIPTS)
def test_installed_script_runs_from_anywhere(script, tmp_path):
    exe = BIN / script
    assert exe.is_file(), f"{script} not installed in {BIN} (pip install -e . creates it)"
    out = subprocess.run([str(exe), "--help"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage:") and "Traceback" not in out.stderr


def test_installed_train_refuses_a_missing_config_in_one_line(tmp_path):
    out = subprocess.run([str(BIN / "brainmri-train"), "--config", "nope.yaml"], cwd=tmp_path, env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "nope.yaml" in out.stderr
