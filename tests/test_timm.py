"""model.arch: timm:<name>: any timm model under the same head, group, phase and pretrained-weight rules."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from conftest import TINY
from test_weights import WeightsServer

from brainmri.config import ModelConfig, load_config
from brainmri.models.registry import build_model, ensure_weights, pretrained_url
from brainmri.models.weights import WeightsError, cache_path


def _timm_state(seed: int) -> dict:
    import timm

    torch.manual_seed(seed)
    return timm.create_model("resnet10t", num_classes=1000).state_dict()


@pytest.mark.parametrize("channels", [1, 3])
def test_a_timm_model_trains_two_phases_through_the_engine(channels, phantom_root, tmp_path):
    from brainmri.train.engine import fit

    start = tmp_path / "start.pth"
    initial = _timm_state(5)
    torch.save(initial, start)
    phases = ('train.phases=[{name: head, epochs: 1, train: [head]}, '
              '{name: top, epochs: 1, train: [layer4, head], lr_mult: {layer4: 0.1}}]')
    cfg = load_config("configs/baseline_cnn.yaml", [
        f"data.root={phantom_root}", f"run_dir={tmp_path / 'run'}", *TINY, f"data.input_channels={channels}",
        "model.arch=timm:resnet10t", f"model.weights={start}", "optim.lr=0.01", phases, "wandb.enabled=false"])
    summary = fit(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if "epoch" in r and "phase" in r]
    assert [r["phase"] for r in epochs] == ["head", "top"]
    assert epochs[1]["lr/layer4"] == pytest.approx(0.001) and "lr/layer4" not in epochs[0]
    final = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["model"]
    first = initial["conv1.0.weight"]
    assert torch.equal(final["conv1.0.weight"], first.sum(1, keepdim=True) if channels == 1 else first)  # frozen
    assert torch.equal(final["layer1.0.conv1.weight"], initial["layer1.0.conv1.weight"])
    assert not torch.equal(final["layer4.0.conv1.weight"], initial["layer4.0.conv1.weight"])  # trained in phase 2
    assert final["fc.weight"].shape == (4, 512) and 0.0 <= summary["test/acc"] <= 1.0


def test_pretrained_timm_weights_are_fetched_once_from_a_server_and_loaded(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    served = tmp_path / "served"
    served.mkdir()
    state = _timm_state(7)
    save_file(state, served / "resnet10t-test.safetensors")
    with WeightsServer(served) as server:
        cfg = ModelConfig(arch="timm:resnet10t", pretrained=True,
                          weights_url=f"{server.url}/resnet10t-test.safetensors")
        grey = build_model(cfg, num_classes=4, in_channels=1)
        rgb = build_model(cfg, num_classes=4, in_channels=3)
    assert server.requests == {"/resnet10t-test.safetensors": 1}  # the second build read the cache
    assert cache_path(cfg.weights_url).is_file()
    assert torch.equal(grey.conv1[0].weight, state["conv1.0.weight"].sum(1, keepdim=True))
    assert torch.equal(rgb.conv1[0].weight, state["conv1.0.weight"])
    assert torch.equal(grey.layer3[0].bn1.running_var, state["layer3.0.bn1.running_var"])
    assert grey.fc.weight.shape == (4, 512)


def test_timm_default_weights_come_from_the_hub_file_in_the_torch_cache(tmp_path, monkeypatch):
    """Offline (this machine has no route to the hub): a file put where the error says is what loads."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cfg = ModelConfig(arch="timm:resnet10t.c3_in1k", pretrained=True)
    assert pretrained_url(cfg) == "https://huggingface.co/timm/resnet10t.c3_in1k/resolve/main/model.safetensors"
    cached = tmp_path / "hub" / "checkpoints" / "timm--resnet10t.c3_in1k--model.safetensors"
    state = _timm_state(9)
    cached.parent.mkdir(parents=True)
    save_file(state, cached)
    assert ensure_weights(load_config(None, ["model.arch=timm:resnet10t.c3_in1k", "model.pretrained=true"])) == cached
    net = build_model(cfg, num_classes=4, in_channels=3)
    assert torch.equal(net.layer4[0].conv2.weight, state["layer4.0.conv2.weight"])
    with pytest.raises(WeightsError, match="does not match the architecture"):
        build_model(ModelConfig(arch="timm:resnet18", weights=str(cached)), num_classes=4)
