"""brainmri.train.regularise: MixUp/CutMix targets, soft-target cross-entropy, EMA of weights, TTA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from brainmri.config import ConfigError, load_config
from brainmri.train.regularise import TTA, BatchMixer, SoftTargetCrossEntropy, WeightEMA


def _batch(n=8, k=4):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 16, 16, generator=g), torch.arange(n) % k


@pytest.mark.parametrize("mixup, cutmix", [(0.4, 0.0), (0.0, 1.0), (0.2, 1.0)])
def test_mixed_targets_sum_to_one_and_each_step_draws_its_own_fixed_mix(mixup, cutmix):
    x, y = _batch()
    mixer = BatchMixer(4, mixup, cutmix, prob=1.0, switch_prob=0.5, seed=3)
    torch.manual_seed(99)
    before = torch.rand(3)
    torch.manual_seed(99)
    mixed, targets = mixer(x, y, epoch=2, step=5)
    assert torch.equal(torch.rand(3), before)  # the caller's RNG stream is untouched
    assert targets.shape == (8, 4) and torch.allclose(targets.sum(1), torch.ones(8))
    assert (targets.max(1).values < 1).all() and mixed.shape == x.shape and not torch.equal(mixed, x)
    lam = targets[torch.arange(8), y]  # the share of each image's own class
    rolled = x.roll(1, 0)
    if cutmix == 0:  # MixUp: the pixels are mixed with the same weight as the labels
        assert torch.allclose(mixed, lam.view(-1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1)) * rolled, atol=1e-6)
    again, targets_again = mixer(x.clone(), y, epoch=2, step=5)  # a resume recomputes the same mix
    assert torch.equal(again, mixed) and torch.equal(targets_again, targets)
    others = [mixer(x, y, epoch=e, step=s)[1] for e, s in ((2, 6), (3, 5))]
    assert all(not torch.equal(o, targets) for o in others)
    assert not torch.equal(mixer(x, y, epoch=2, step=5, rank=1)[1], targets)  # each DDP rank its own draw


def test_cutmix_pastes_a_box_and_weights_labels_by_its_area():
    x, y = _batch()
    mixed, targets = BatchMixer(4, cutmix=1.0, seed=0)(x, y, epoch=0, step=1)
    from_other = (mixed != x).any(1)  # pixels taken from the rolled image
    area = from_other[0].float().mean()
    assert 0 < area < 1 and torch.allclose(targets[0, y[0]], 1 - area, atol=1e-6)


def test_an_unmixed_batch_gets_one_hot_targets():
    x, y = _batch()
    mixed, targets = BatchMixer(4, mixup=0.4, prob=0.0)(x, y, epoch=0, step=0)
    assert torch.equal(mixed, x) and torch.equal(targets, F.one_hot(y, 4).float())


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("weighted", [False, True])
def test_soft_target_loss_equals_torch_cross_entropy(smoothing, weighted):
    g = torch.Generator().manual_seed(1)
    logits, y = torch.randn(10, 4, generator=g), torch.tensor([0, 1, 2, 3, 3, 3, 1, 0, 2, 3])
    w = torch.tensor([0.5, 2.0, 1.0, 3.0]) if weighted else None
    ours = SoftTargetCrossEntropy(w, smoothing)
    want = F.cross_entropy(logits, y, weight=w, label_smoothing=smoothing)
    assert torch.allclose(ours(logits, y), want, atol=1e-6)
    assert torch.allclose(ours(logits, F.one_hot(y, 4).float()), want, atol=1e-6)  # one-hot rows: the same
    soft = torch.softmax(torch.randn(10, 4, generator=g), 1)
    if not weighted:
        assert torch.allclose(ours(logits, soft), F.cross_entropy(logits, soft, label_smoothing=smoothing), atol=1e-6)
    logits.requires_grad_(True)
    ours(logits, soft).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, 4))


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_equals_a_hand_update_and_averages_batchnorm_statistics(warmup):
    net = _net()
    ema = WeightEMA(net, 0.9, warmup)
    hand = {k: v.detach().clone() for k, v in net.state_dict().items()}
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = _batch()
    for step in range(1, 5):
        opt.zero_grad()
        F.cross_entropy(net(x + step), y).backward()  # a new input each step moves the BatchNorm statistics
        opt.step()
        ema.update(net)
        d = min(0.9, (1 + step) / (10 + step)) if warmup else 0.9
        for k, v in net.state_dict().items():
            hand[k] = d * hand[k] + (1 - d) * v if v.is_floating_point() else v.clone()
    got = ema.module.state_dict()
    for k, v in hand.items():
        assert torch.allclose(got[k], v, atol=1e-6), k
    assert not torch.allclose(got["1.running_mean"], net.state_dict()["1.running_mean"])
    assert int(got["1.num_batches_tracked"]) == 4  # integer buffers are copied
    assert not any(p.requires_grad for p in ema.module.parameters()) and not ema.module.training

    restored = WeightEMA(_net(), 0.9, warmup)  # a resumed run continues the same average
    restored.load_state_dict(ema.state_dict())
    for e in (ema, restored):
        e.update(net)
    for k, v in ema.module.state_dict().items():
        assert torch.equal(restored.module.state_dict()[k], v), k
    with pytest.raises(ValueError, match="decay 0.9"):
        WeightEMA(_net(), 0.99, warmup).load_state_dict(ema.state_dict())


def test_tta_is_the_mean_softmax_over_the_views():
    net = _net().eval()
    x, _ = _batch()
    with torch.no_grad():
        views = [x, x.flip(-1), x.flip(-2)]
        want = torch.stack([torch.softmax(net(v), 1) for v in views]).mean(0)
        assert torch.allclose(TTA(net, ["hflip", "vflip"])(x), want, atol=1e-6)
        assert torch.allclose(TTA(net)(x), torch.softmax(net(x), 1))
    assert torch.allclose(TTA(net, ["hflip"])(x).sum(1), torch.ones(8))
    with pytest.raises(ValueError, match="'rot90'"):
        TTA(net, ["rot90"])


def test_regulariser_keys_are_checked():
    cfg = load_config(None, ["train.mixup=0.2", "train.cutmix=1.0", "train.label_smoothing=0.1", "train.ema=0.999",
                             "eval.tta=[hflip]"])
    assert isinstance(BatchMixer.from_config(cfg, 4), BatchMixer)
    assert BatchMixer.from_config(load_config(None), 4) is None
    for bad, match in (("train.mixup=-1", "train.mixup must be in"), ("train.ema=1.5", "train.ema must be in"),
                       ("train.label_smoothing=1.0", "train.label_smoothing"), ("eval.tta=[hflip,hflip]", "twice"),
                       ("train.mixup_prob=2", "train.mixup_prob"), ("eval.tta=[rot90]", "eval.tta.*'rot90'")):
        with pytest.raises(ConfigError, match=match):
            load_config(None, [bad])
