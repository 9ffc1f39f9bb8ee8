import copy
import math

import pytest
import torch
from torch import nn

from brainmri.config import OptimConfig, SchedulerConfig
from brainmri.optim import (
    Lookahead,
    Ranger,
    WarmupCosine,
    build_optimizer,
    build_scheduler,
    centralize_gradient,
    replan_cosine,
)


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3)
    )


def _batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 3, 6, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(n)]


def _backward(model, batch):
    model.zero_grad()
    x, y = batch
    nn.functional.cross_entropy(model(x), y).backward()


def _train(model, opt, batches):
    for batch in batches:
        _backward(model, batch)
        opt.step()


def _assert_same_params(a, b):
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)


def test_ranger_without_lookahead_and_gc_is_radam():
    m1, m2 = _model(), _model()
    ranger = Ranger(
        m1.parameters(), lr=1e-2, weight_decay=0.1, gc_conv=False, gc_fc=False, use_lookahead=False
    )
    radam = torch.optim.RAdam(m2.parameters(), lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True)
    assert isinstance(ranger.base_optimizer, torch.optim.RAdam)
    for batch in _batches(20):
        for m, opt in ((m1, ranger), (m2, radam)):
            _backward(m, batch)
            opt.step()
        _assert_same_params(m1, m2)


def test_centralize_gradient_zero_mean_per_filter():
    model = _model()
    _backward(model, _batches(1)[0])
    conv_w, conv_b, fc_w = model[0].weight.grad, model[0].bias.grad, model[4].weight.grad
    before = conv_w.clone()
    out = centralize_gradient(conv_w)
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), torch.zeros(4), atol=1e-7, rtol=0)
    assert not torch.allclose(out, conv_w)
    torch.testing.assert_close(conv_w, before, rtol=0, atol=0)  # pure: input untouched
    torch.testing.assert_close(centralize_gradient(fc_w).mean(dim=1), torch.zeros(3), atol=1e-7, rtol=0)
    assert centralize_gradient(conv_b) is conv_b
    assert centralize_gradient(conv_w, use_conv=False) is conv_w
    assert centralize_gradient(fc_w, use_fc=False) is fc_w


def test_ranger_applies_gc_before_radam_step():
    m1, m2 = _model(), _model()
    ranger = Ranger(m1.parameters(), lr=1e-2, weight_decay=0.1, use_lookahead=False)
    radam = torch.optim.RAdam(m2.parameters(), lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True)
    for batch in _batches(10):
        _backward(m1, batch)
        ranger.step()
        _backward(m2, batch)
        for p in m2.parameters():
            p.grad = centralize_gradient(p.grad)
        radam.step()
        _assert_same_params(m1, m2)


def test_lookahead_syncs_slow_weights_every_k_steps():
    k, alpha = 3, 0.5
    model = _model()
    base = torch.optim.RAdam(model.parameters(), lr=1e-2)
    opt = Lookahead(base, k=k, alpha=alpha)
    fast = []
    base.register_step_post_hook(lambda *_: fast.append([p.detach().clone() for p in model.parameters()]))
    slow = [p.detach().clone() for p in model.parameters()]
    for step, batch in enumerate(_batches(2 * k + 1), start=1):
        _backward(model, batch)
        opt.step()
        if step % k == 0:
            slow = [s + alpha * (f - s) for s, f in zip(slow, fast[-1], strict=True)]
            for p, s in zip(model.parameters(), slow, strict=True):
                torch.testing.assert_close(opt.state[p]["lookahead_slow"], s)
        expected = slow if step % k == 0 else fast[-1]
        for p, e in zip(model.parameters(), expected, strict=True):
            torch.testing.assert_close(p.detach(), e)
    assert opt.param_groups[0]["lookahead_step"] == 2 * k + 1


def test_state_dict_roundtrip_continues_identical_trajectory(tmp_path):
    model = _model()
    opt = Ranger(model.parameters(), lr=1e-2, weight_decay=0.05, k=3)
    batches = _batches(30)
    _train(model, opt, batches[:20])  # 20 % k != 0: the round trip has to keep the lookahead phase
    torch.save(opt.state_dict(), tmp_path / "opt.pt")

    model2 = copy.deepcopy(model)
    opt2 = Ranger(model2.parameters(), lr=1e-2, weight_decay=0.05, k=3)
    opt2.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    assert opt2.state is opt2.base_optimizer.state
    assert opt2.param_groups is opt2.base_optimizer.param_groups
    assert opt2.param_groups[0]["lookahead_step"] == 20

    _train(model, opt, batches[20:])
    _train(model2, opt2, batches[20:])
    _assert_same_params(model, model2)
    for p, p2 in zip(model.parameters(), model2.parameters(), strict=True):
        torch.testing.assert_close(opt.state[p], opt2.state[p2], rtol=0, atol=0)


def test_reduce_lr_on_plateau_acts_on_ranger_groups():
    model = _model()
    opt = build_optimizer(
        OptimConfig(name="ranger", lr=5e-3),
        [{"name": "backbone", "params": model[0].parameters(), "lr": 1e-3},
         {"name": "head", "params": model[4].parameters(), "lr": 1e-2}],
    )
    sched = build_scheduler(SchedulerConfig(name="plateau", mode="min", factor=0.5, patience=0), opt)
    sched.step(1.0)
    sched.step(1.0)
    assert [g["lr"] for g in opt.base_optimizer.param_groups] == pytest.approx([5e-4, 5e-3])
    assert [g["name"] for g in opt.param_groups] == ["backbone", "head"]


def test_build_optimizer_kinds_and_per_group_lr():
    model = _model()
    groups = [{"name": "backbone", "params": list(model[0].parameters()), "lr": 1e-4},
              {"name": "head", "params": list(model[4].parameters())}]
    for name, cls in [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                      ("sgd", torch.optim.SGD), ("ranger", Ranger)]:
        opt = build_optimizer(OptimConfig(name=name, lr=1e-3, weight_decay=0.01, momentum=0.8), groups)
        assert type(opt) is cls
        assert [(g["name"], g["lr"]) for g in opt.param_groups] == [("backbone", 1e-4), ("head", 1e-3)]
        assert opt.param_groups[1]["weight_decay"] == 0.01  # the config's hyper-parameters, handed on
        if name == "sgd":
            assert opt.param_groups[1]["momentum"] == 0.8
    assert "lr" not in groups[1]  # caller's dicts are not modified
    assert isinstance(build_scheduler(SchedulerConfig(name="cosine"), opt, epochs=5),
                      torch.optim.lr_scheduler.CosineAnnealingLR)
    assert build_scheduler(SchedulerConfig(name="none"), opt) is None


def test_cosine_schedule_ends_at_min_lr():
    """Each group's LR follows the cosine from its own start down to scheduler.min_lr at the last epoch."""
    model = _model()
    opt = build_optimizer(OptimConfig(name="adamw", lr=1e-2),
                          [{"name": "backbone", "params": model[0].parameters(), "lr": 1e-3},
                           {"name": "head", "params": model[4].parameters()}])
    sched = build_scheduler(SchedulerConfig(name="cosine", min_lr=1e-4), opt, epochs=4)
    seen = []
    for batch in _batches(4):
        _backward(model, batch)
        opt.step()
        sched.step()
        seen.append([g["lr"] for g in opt.param_groups])
    assert seen[-1] == pytest.approx([1e-4, 1e-4])
    assert seen[1][1] == pytest.approx(1e-4 + (1e-2 - 1e-4) * 0.5)  # half way: the mean of start and end


def test_warmup_then_cosine_per_group_and_the_plain_cosine_without_warmup():
    """Linear warmup over warmup_epochs, then cosine from each group's LR to min_lr; warmup 0 is the cosine."""
    model = _model()
    groups = [{"name": "backbone", "params": model[0].parameters(), "lr": 1e-3},
              {"name": "head", "params": model[4].parameters()}]
    opt = build_optimizer(OptimConfig(name="sgd", lr=1e-2), groups)
    sched = build_scheduler(SchedulerConfig(name="cosine", warmup_epochs=2, min_lr=1e-4), opt, epochs=6)
    seen = [[g["lr"] for g in opt.param_groups]]
    for _ in range(5):
        opt.step()
        sched.step()
        seen.append([g["lr"] for g in opt.param_groups])
    cosine = [1e-4 + (1e-2 - 1e-4) * (1 + math.cos(math.pi * k / 4)) / 2 for k in range(4)]
    assert [lr for _, lr in seen] == pytest.approx([1e-2 / 3, 2e-2 / 3, *cosine])
    assert [lr for lr, _ in seen][:3] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3])
    again = [{"name": "backbone", "params": model[0].parameters(), "lr": 1e-3},
             {"name": "head", "params": model[4].parameters()}]
    restored = build_scheduler(SchedulerConfig(name="cosine", warmup_epochs=2, min_lr=1e-4),
                               build_optimizer(OptimConfig(name="sgd", lr=1e-2), again), epochs=6)
    restored.load_state_dict(sched.state_dict())  # a checkpoint carries where the schedule is
    assert restored.last_epoch == 5 and restored.get_last_lr() == pytest.approx(seen[-1])

    flat = build_scheduler(SchedulerConfig(name="none", warmup_epochs=3), torch.optim.SGD(model.parameters(), lr=0.3))
    lrs = []
    for _ in range(5):
        lrs.append(flat.get_last_lr()[0])
        flat.optimizer.step()
        flat.step()
    assert lrs == pytest.approx([0.075, 0.15, 0.225, 0.3, 0.3])

    plain, warm0 = (build_scheduler(SchedulerConfig(name="cosine", min_lr=1e-3),
                                    torch.optim.SGD(model.parameters(), lr=0.1), epochs=5) for _ in range(2))
    ours = WarmupCosine(torch.optim.SGD(model.parameters(), lr=0.1), 5, 0, 1e-3)
    for _ in range(5):
        assert ours.get_last_lr()[0] == pytest.approx(plain.get_last_lr()[0])
        for s in (plain, ours):
            s.optimizer.step()
            s.step()


def test_an_extended_warmup_cosine_phase_replans_the_rest():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = WarmupCosine(opt, epochs=4, warmup_epochs=1)
    for _ in range(2):
        opt.step()
        sched.step()
    replan_cosine(sched, opt, 8)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * (1 + math.cos(math.pi / 7)) / 2)
    longer = WarmupCosine(torch.optim.SGD(model.parameters(), lr=0.1), epochs=8, warmup_epochs=1)
    for _ in range(2):
        longer.optimizer.step()
        longer.step()
    for _ in range(5):  # from here on it follows the schedule planned 8 epochs long
        assert opt.param_groups[0]["lr"] == pytest.approx(longer.get_last_lr()[0])
        for s, o in ((sched, opt), (longer, longer.optimizer)):
            o.step()
            s.step()


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda ps: Lookahead(torch.optim.SGD(ps, lr=0.1), k=0), "0"),
        (lambda ps: Lookahead(torch.optim.SGD(ps, lr=0.1), alpha=1.5), "1.5"),
        (lambda ps: Ranger(ps, k=-2), "-2"),
        (lambda ps: Ranger(ps, lr=-0.25), "-0.25"),
        (lambda ps: build_optimizer(OptimConfig(name="adamx"), [{"name": "all", "params": ps}]), "'adamx'.*ranger"),
        (lambda ps: build_scheduler(SchedulerConfig(name="step"), torch.optim.SGD(ps, lr=0.1)), "'step'.*plateau"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(make, match):
    with pytest.raises(ValueError, match=match):
        make(list(_model().parameters()))


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "ranger"])
def test_optimizer_states_count_the_tensors_each_optimizer_keeps_per_parameter(name):
    from brainmri.optim import OPTIMIZER_STATES, OPTIMIZERS

    assert set(OPTIMIZER_STATES) == set(OPTIMIZERS)
    model = _model()
    opt = build_optimizer(OptimConfig(name=name), [{"name": "all", "params": list(model.parameters())}])
    _backward(model, _batches(1)[0])
    opt.step()
    weight = model[0].weight
    kept = [v for v in opt.state[weight].values() if torch.is_tensor(v) and v.shape == weight.shape]
    assert len(kept) == OPTIMIZER_STATES[name]
