"""Model registry and pretrained-weight loading, with checkpoints the tests create themselves."""

from __future__ import annotations

import pytest
import torch
from torchvision import models as tvm

from brainmri.config import ModelConfig, OptimConfig, load_config
from brainmri.models.registry import (
    assign_groups,
    build_model,
    parameter_groups,
    pretrained_url,
    set_trainable,
)
from brainmri.models.weights import WeightsError, cache_path
from brainmri.optim import Ranger, build_optimizer


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


def test_ranger_recipe_builds_what_its_yaml_says():
    """configs/resnet152_ranger.yaml: ResNet-152, head Linear(→512) → ReLU → Dropout 0.5 → Linear;
    Ranger k=6 α=0.5 with Gradient Centralization, lr 1e-5."""
    cfg = load_config("configs/resnet152_ranger.yaml", ["model.pretrained=false"])
    net = build_model(cfg.model, num_classes=4, in_channels=cfg.data.input_channels)
    assert type(net) is tvm.ResNet
    assert [len(layer) for layer in (net.layer1, net.layer2, net.layer3, net.layer4)] == [3, 8, 36, 3]
    kinds = [type(m).__name__ for m in net.fc]
    assert kinds == ["Linear", "ReLU", "Dropout", "Linear"]
    assert net.fc[0].out_features == 512 and net.fc[2].p == 0.5 and net.fc[3].out_features == 4
    groups = assign_groups(net, cfg.phases[0].train)
    opt = build_optimizer(cfg.optim, [{"name": g, "params": ps} for g, ps in groups.items()])
    assert isinstance(opt, Ranger) and isinstance(opt.base_optimizer, torch.optim.RAdam)
    group = opt.param_groups[0]
    assert (group["lr"], group["lookahead_k"], group["lookahead_alpha"]) == (1e-5, 6, 0.5)
    assert group["gc_conv"] and group["gc_fc"] and group["decoupled_weight_decay"]


# name → a stage group it must have (besides head and backbone)
REPRESENTATIVE = {"resnet18": "layer4", "efficientnet_b0": "features.8", "convnext_tiny": "features.7",
                  "mobilenet_v3_small": "features.12", "vit_b_16": "encoder.layers.encoder_layer_11",
                  "densenet121": "features.denseblock4"}


@pytest.mark.parametrize("name", list(REPRESENTATIVE))
def test_torchvision_models_build_with_head_groups_and_grey_input_and_train_a_step(name):
    torch.manual_seed(0)
    net = build_model(ModelConfig(arch=f"torchvision:{name}"), num_classes=4, in_channels=1)
    out_layer = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert out_layer.out_features == 4
    groups = parameter_groups(net)
    stage = REPRESENTATIVE[name]
    head, backbone = ({id(p) for _, p in groups[g]} for g in ("head", "backbone"))
    assert {id(p) for p in out_layer.parameters()} <= head and not head & backbone
    assert len(head | backbone) == len(list(net.parameters()))
    assert {id(p) for _, p in groups[stage]} <= backbone and groups[stage]
    set_trainable(net, ["head", stage])
    opt = build_optimizer(OptimConfig(name="adamw", lr=1e-2),
                          [{"name": g, "params": ps} for g, ps in assign_groups(net, ["head", stage]).items()])
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    side = 224 if name.startswith("vit_") else 64
    x, y = torch.rand(2, 1, side, side), torch.tensor([0, 3])
    net.train()
    loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    names = {id(p): n for n, p in net.named_parameters()}
    changed = {n for n, p in net.named_parameters() if not torch.equal(p, before[n])}
    trained = {names[i] for i in head | {id(p) for _, p in groups[stage]}}
    assert changed <= trained and {n for n, _ in groups["head"]} & changed  # frozen parameters stay put
    assert {n for n, _ in groups[stage]} & changed


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
    """model.pretrained=true reads torchvision's IMAGENET1K_V2 file from $TORCH_HOME; with no network
    (this machine has none) the error says where to put the file."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cfg = ModelConfig(arch="resnet50", pretrained=True)
    assert pretrained_url(cfg) == tvm.ResNet50_Weights.IMAGENET1K_V2.url
    with pytest.raises(WeightsError, match="not in the local torch cache") as err:
        build_model(cfg, num_classes=4)
    cached = cache_path(pretrained_url(cfg))
    assert "model.weights=" in str(err.value) and str(cached) in str(err.value)
    torch.manual_seed(2)
    src = tvm.resnet50(weights=None)
    assert cached.parent == tmp_path / "hub" / "checkpoints"
    assert not [p for p in cached.parent.iterdir() if p.suffix != ".lock"]  # no partial download left behind
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
    assert {"backbone", "head", "layer1", "layer4", "layer4.2"} <= set(groups)
    assert {n for n, _ in groups["head"]} == {"fc.weight", "fc.bias"}
    assert {n for n, _ in groups["backbone"]} == {n for n, _ in net.named_parameters()} - {"fc.weight", "fc.bias"}
    set_trainable(net, ["head", "layer4"])
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in groups["head"] + groups["layer4"]}
    with pytest.raises(ValueError, match="unknown parameter group 'layer9'"):
        set_trainable(net, ["layer9"])


def test_nested_groups_give_each_parameter_to_the_most_specific_one():
    net = build_model(ModelConfig(arch="resnet50"), num_classes=4)
    assigned = assign_groups(net, ["backbone", "layer4", "head"])
    assert list(assigned) == ["backbone", "layer4", "head"]
    ids = {g: {id(p) for p in ps} for g, ps in assigned.items()}
    assert ids["layer4"] == {id(p) for p in net.layer4.parameters()}
    assert not ids["backbone"] & ids["layer4"] and len(set().union(*ids.values())) == len(list(net.parameters()))
    assert list(assign_groups(net, ["all"])) == ["backbone", "head"]


def test_grey_input_sums_the_rgb_filters_of_the_first_conv(tmp_path):
    """A 1-channel ResNet with the summed filters computes what the 3-channel one does on a replicated grey image."""
    torch.manual_seed(3)
    path = tmp_path / "r18.pth"
    torch.save(tvm.resnet18(weights=None).state_dict(), path)
    cfg = ModelConfig(arch="torchvision:resnet18", weights=str(path))
    grey, rgb = build_model(cfg, 4, in_channels=1).eval(), build_model(cfg, 4, in_channels=3).eval()
    grey.fc.load_state_dict(rgb.fc.state_dict())
    assert grey.conv1.in_channels == 1
    x = torch.rand(2, 1, 64, 64)
    torch.testing.assert_close(grey(x), rgb(x.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-5)
