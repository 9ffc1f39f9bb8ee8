"""Model registry and pretrained-weight loading, with checkpoints the tests create themselves."""

from __future__ import annotations

import pytest
import torch
from torchvision import models as tvm

from brainmri.config import ModelConfig
from brainmri.models import (
    WeightsError, build_model, imagenet_weights_path, parameter_groups, set_trainable,
)


def test_baseline_cnn_shapes_follow_the_recipe():
    net = build_model(ModelConfig(arch="baseline_cnn"), num_classes=4, image_size=224)
    x = torch.zeros(2, 3, 224, 224)
    sizes = []
    for layer in net.features:
        x = layer(x)
        if isinstance(layer, torch.nn.MaxPool2d):
            sizes.append(x.shape[-1])
    assert sizes == [112, 56, 28]
    assert net.head[1].in_features == 128 * 28 * 28 and net.head[1].out_features == 256
    assert net(torch.zeros(2, 3, 224, 224)).shape == (2, 4)


def test_ranger_recipe_head_is_mlp_512():
    net = build_model(ModelConfig(arch="resnet152", head="mlp"), num_classes=4)
    kinds = [type(m).__name__ for m in net.fc]
    assert kinds == ["Linear", "ReLU", "Dropout", "Linear"]
    assert net.fc[0].out_features == 512 and net.fc[2].p == 0.5 and net.fc[3].out_features == 4


def test_weights_path_loads_backbone_and_replaces_head(tmp_path):
    torch.manual_seed(1)
    src = tvm.resnet50(weights=None)
    path = tmp_path / "r50.pth"
    torch.save(src.state_dict(), path)
    net = build_model(ModelConfig(arch="resnet50", weights=str(path)), num_classes=4)
    assert torch.equal(net.layer4[0].conv1.weight, src.layer4[0].conv1.weight)
    assert torch.equal(net.bn1.running_var, src.bn1.running_var)
    assert net.fc.out_features == 4


def test_pretrained_from_the_local_torch_cache(tmp_path, monkeypatch):
    """model.pretrained=true reads torchvision's IMAGENET1K_V2 file from $TORCH_HOME, offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cfg = ModelConfig(arch="resnet50", pretrained=True)
    with pytest.raises(WeightsError, match="not in the local torch cache") as err:
        build_model(cfg, num_classes=4)
    assert "model.weights=" in str(err.value) and str(imagenet_weights_path("resnet50")) in str(err.value)
    torch.manual_seed(2)
    src = tvm.resnet50(weights=None)
    cached = imagenet_weights_path("resnet50")
    assert cached.parent == tmp_path / "hub" / "checkpoints"
    cached.parent.mkdir(parents=True)
    torch.save(src.state_dict(), cached)
    net = build_model(cfg, num_classes=4)
    assert torch.equal(net.conv1.weight, src.conv1.weight)


def test_mismatched_or_missing_weights_are_errors(tmp_path):
    wrong = tmp_path / "r152.pth"
    torch.save(tvm.resnet152(weights=None).state_dict(), wrong)
    with pytest.raises(WeightsError, match="does not match the architecture"):
        build_model(ModelConfig(arch="resnet50", weights=str(wrong)), num_classes=4)
    with pytest.raises(WeightsError, match="file not found"):
        build_model(ModelConfig(arch="resnet50", weights=str(tmp_path / "none.pth")), num_classes=4)


def test_parameter_groups_and_freezing():
    net = build_model(ModelConfig(arch="resnet50"), num_classes=4)
    groups = parameter_groups(net)
    assert set(groups) == {"backbone", "layer4", "head"}
    set_trainable(net, ["head", "layer4"])
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in groups["head"] + groups["layer4"]}
    with pytest.raises(ValueError, match="unknown parameter group 'layer9'"):
        set_trainable(net, ["layer9"])
