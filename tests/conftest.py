"""Shared fixtures: tiny synthetic data sets, isolated caches, and a helper to run train.py."""

from __future__ import annotations

import ast
import functools
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data" / "brain-tumor-mri" / "Training"

# Offline W&B and a private cache for the test run (its processes, xdist's workers, the processes they start).
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
_OWN_CACHE = None if "BRAINMRI_CACHE" in os.environ else \
    Path(os.environ.get("TMPDIR", "/tmp")) / f"brainmri-test-cache-{os.getpid()}"
if _OWN_CACHE is not None:
    os.environ["BRAINMRI_CACHE"] = str(_OWN_CACHE)
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Small and fast: every recipe trains on these in seconds on a 2-core CPU.
TINY = [
    "data.input_size=32",
    "data.batch_size=8",
    "data.num_workers=0",
    "train.mixed_precision=no",
    "train.compile=false",  # a recipe that compiles would spend a minute compiling (tested on its own)
]


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The test run's private cache goes with it (one set up by the caller stays). pytest-xdist's
    workers inherit the controller's, so they share one cache, which the controller removes at the end."""
    if _OWN_CACHE is not None and not os.environ.get("PYTEST_XDIST_WORKER"):
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


# ------------------------------------------------------------------ parallel runs (pytest-xdist)
# CI runs `pytest -n 2 --dist loadfile`: each test module goes to one worker as a whole (its module
# fixtures are built once), except the tests that start SLURM jobs or several training processes
# (accelerate's gloo group): they form one unit that runs on one worker, one after another, so two
# of them never compete for the cluster's CPUs or their timing. (pytest-xdist's own xdist_group
# marker does not take effect with this pytest, hence the scheduler below.)
SERIAL = "serial"


@functools.cache
def _serial_functions(path: str) -> frozenset[str]:
    """The test functions of a test file that must run serially: all of them in a file marked slurm,
    else those that start several training processes or use the SLURM cluster."""
    file = ROOT / path
    if not file.is_file():
        return frozenset()
    source = file.read_text()
    tree = ast.parse(source)
    tests = [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name.startswith("test")]
    module_marks = [node for node in tree.body if isinstance(node, ast.Assign)
                    and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets)]
    if any("mark.slurm" in ast.get_source_segment(source, node) for node in module_marks):
        return frozenset(node.name for node in tests)
    return frozenset(node.name for node in tests
                     if any(call in ast.get_source_segment(source, node)
                            for call in ("accelerate_cpu(", "cluster_problem(")))


def runs_serially(nodeid: str) -> bool:
    path, _, rest = nodeid.partition("::")
    return rest.split("::")[-1].split("[")[0] in _serial_functions(path)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # the serial unit is the longest: hand it out first, so the other worker fills in around it
    serial = [item for item in items if runs_serially(item.nodeid)]
    first = {id(item) for item in serial}
    items[:] = serial + [item for item in items if id(item) not in first]


def pytest_xdist_make_scheduler(config: pytest.Config, log):  # noqa: ANN201 -- xdist's scheduler type
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FileOrSerial(LoadScopeScheduling):
        """A test file per unit of work; the serial tests of every file one unit."""

        def _split_scope(self, nodeid: str) -> str:
            return SERIAL if runs_serially(nodeid) else nodeid.split("::", 1)[0]

    return FileOrSerial(config, log)


def shared_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """``<basetemp>/<name>``, built by ``build`` once per test run: under pytest-xdist the workers share
    one copy (the first builds it under a file lock, the others wait and read it)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        path = tmp_path_factory.mktemp(name)
        build(path)
        return path
    path = tmp_path_factory.getbasetemp().parent / name  # the workers' common parent
    with FileLock(f"{path}.lock"):
        if not (path / ".built").is_file():
            shutil.rmtree(path, ignore_errors=True)  # a build another worker did not finish
            path.mkdir()
            build(path)
            (path / ".built").touch()
    return path


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory) -> Path:
    """A small synthetic data set (Training + Testing) shared by the whole session (read-only)."""
    from brainmri.data.phantoms import generate_phantoms

    def build(path: Path) -> None:
        generate_phantoms(path / "data", n_per_class=12, n_test_per_class=4, image_size=64, seed=0)

    return shared_once(tmp_path_factory, "phantoms", build) / "data"


@pytest.fixture
def data_copy(phantom_root, tmp_path) -> Path:
    """A private, writable copy of the phantom set for tests that damage it."""
    dst = tmp_path / "data"
    shutil.copytree(phantom_root, dst)
    return dst


@pytest.fixture(scope="session")
def trained_run(phantom_root, tmp_path_factory) -> Path:
    """A finished tiny baseline-CNN run on the phantoms (2 epochs, 32 px), shared by the tests that use a
    trained model (predict, evaluate, export); they read it and write their outputs elsewhere."""
    def build(path: Path) -> None:
        run_train("--config", "configs/baseline_cnn.yaml", *TINY, f"data.root={phantom_root}",
                  f"run_dir={path / 'run'}", "train.epochs=2", "wandb.enabled=false")

    return shared_once(tmp_path_factory, "trained", build) / "run"


def run_train(*args: str, launcher: list[str] | None = None, check: bool = True, timeout: int = 600,
              env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``train.py`` in a fresh process (as a user would), optionally under ``accelerate launch``."""
    cmd = (launcher or [sys.executable]) + [str(ROOT / "train.py"), *args]
    env = {**(env or {}), **({"ACCELERATE_USE_CPU": "1"} if launcher else {})}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **env})
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n--- stderr ---\n{proc.stderr[-4000:]}")
    return proc


def accelerate_cpu(num_processes: int) -> list[str]:
    """``accelerate launch`` with real gloo processes on CPU and a free port (never 29500)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
            str(num_processes), "--num_machines", "1", "--main_process_port", "0",
            "--mixed_precision", "no", "--dynamo_backend", "no"]


# ------------------------------------------------------------------ shared factories
def make_samples(root, n: int = 8, seed: int = 0) -> list:
    """Tiny JPEG/PNG files of mixed size and colour mode, as ``brainmri.data.files.Sample`` rows."""
    from brainmri.data.files import Sample

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(n):
        side = 40 + 3 * i
        arr = rng.integers(0, 256, (side, side + 5, 3) if i % 2 else (side, side), dtype=np.uint8)
        path = root / f"img{i}.{'jpg' if i % 3 else 'png'}"
        Image.fromarray(arr).save(path)
        samples.append(Sample(str(path), i % 4, hashlib.sha1(path.read_bytes()).hexdigest()))
    return samples
