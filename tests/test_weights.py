"""Pretrained weights are downloaded once per machine (hash-checked, under a lock) from a real HTTP server."""

from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from torchvision import models as tvm

from conftest import ROOT, TINY

from brainmri.config import parse_value
from brainmri.models.weights import WeightsError, cache_path, fetch_weights


class WeightsServer:
    """``http.server`` on 127.0.0.1 serving ``directory``, counting GET requests per path."""

    def __init__(self, directory: Path, delay_s: float = 0.0):
        self.requests: Counter[str] = Counter()
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(directory), **kwargs)

            def do_GET(self):
                server.requests[self.path] += 1
                time.sleep(delay_s)  # a slow download: the second process arrives while the first is fetching
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def hash_named_state_dict(directory: Path, seed: int = 0) -> tuple[Path, dict]:
    """A real resnet18 state dict saved as ``resnet18-<sha256[:8]>.pth`` (torchvision's convention)."""
    torch.manual_seed(seed)
    state = tvm.resnet18(weights=None).state_dict()
    tmp = directory / "tmp.pth"
    torch.save(state, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    path = directory / f"resnet18-{digest[:8]}.pth"
    tmp.rename(path)
    return path, state


LOAD = """
import sys, torch
from brainmri.config import ModelConfig
from brainmri.models.registry import build_model
net = build_model(ModelConfig(arch="torchvision:resnet18", pretrained=True, weights_url=sys.argv[1]), 4, in_channels=1)
torch.save(net.state_dict(), sys.argv[2])
"""


def test_two_processes_download_once_and_load_the_same_weights(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    path, state = hash_named_state_dict(served)
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch"), "PYTHONPATH": str(ROOT)}
    with WeightsServer(served, delay_s=1.0) as server:
        url = f"{server.url}/{path.name}"
        procs = [subprocess.Popen([sys.executable, "-c", LOAD, url, str(tmp_path / f"net{i}.pt")], env=env,
                                  stderr=subprocess.PIPE, text=True) for i in range(2)]
        errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert server.requests == {f"/{path.name}": 1}
    cached = tmp_path / "torch" / "hub" / "checkpoints" / path.name
    assert cached.read_bytes() == path.read_bytes()
    nets = [torch.load(tmp_path / f"net{i}.pt", weights_only=True) for i in range(2)]
    for key in ("layer4.1.conv2.weight", "bn1.running_var"):
        assert torch.equal(nets[0][key], state[key]) and torch.equal(nets[1][key], state[key])
    # grey input: the first conv is the RGB filters summed, the head is new (4 classes)
    assert torch.equal(nets[0]["conv1.weight"], state["conv1.weight"].sum(1, keepdim=True))
    assert nets[0]["fc.weight"].shape == (4, 512)


def test_a_file_that_does_not_match_its_hash_is_refused(tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    path, _ = hash_named_state_dict(served)
    wrong = path.with_name("resnet18-00000000.pth")
    path.rename(wrong)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with WeightsServer(served) as server:
        with pytest.raises(WeightsError, match="does not match the hash in its name"):
            fetch_weights(f"{server.url}/{wrong.name}")
        assert not cache_path(f"{server.url}/{wrong.name}").exists()
        with pytest.raises(WeightsError, match="not in the local torch cache .*HTTPError"):
            fetch_weights(f"{server.url}/resnet18-11111111.pth")  # 404


def test_sweep_fetches_the_weights_once_before_submitting(phantom_root, tmp_path):
    """launch/sweep.py downloads on the submitting host; both tasks then read the cache."""
    served = tmp_path / "served"
    served.mkdir()
    path, _ = hash_named_state_dict(served)
    sweep = tmp_path / "sweep.yaml"
    with WeightsServer(served) as server:
        overrides = {**{k: parse_value(v) for k, v in (item.split("=", 1) for item in TINY)},
                     "data.root": str(phantom_root), "model.arch": "torchvision:resnet18", "model.pretrained": True,
                     "model.weights_url": f"{server.url}/{path.name}", "train.epochs": 1,
                     "train.max_steps_per_epoch": 1, "wandb.enabled": False}
        sweep.write_text(yaml.safe_dump({"name": "pre", "recipes": ["baseline_cnn"], "overrides": overrides,
                                         "grid": {"seed": [0, 1]}}))
        env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch")}
        proc = subprocess.run([sys.executable, str(ROOT / "launch" / "sweep.py"), "--config", str(sweep),
                               "--cluster", "debug", "--sweeps-root", str(tmp_path / "sweeps")],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert server.requests == {f"/{path.name}": 1}
    assert len(list((tmp_path / "sweeps" / "pre" / "runs").glob("*/summary.json"))) == 2
