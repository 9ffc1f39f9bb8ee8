"""A loaded config is read-only, and one definition of run identity serves the run directory, the
same-run check, sweep task ids and the collector."""

from __future__ import annotations

import dataclasses

import pytest

from brainmri.config import RUNTIME_KEYS, differing_keys, from_dict, identity, load_config, run_hash
from brainmri.results.collect import Run, swept_keys
from brainmri.sweep.expand import task_id

RUNTIME = ["data.num_workers=7", "wandb.name=other", "run_dir=/elsewhere", "data.cache_dir=/tmp/elsewhere",
           "data.eval_batch_size=3", "train.fail_at_epoch=4"]


def test_a_loaded_config_cannot_be_changed():
    cfg = load_config("configs/resnet50_finetune.yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.optim.lr = 0.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.phases[0].epochs = 9
    with pytest.raises(AttributeError):
        cfg.data.augment.append("vflip")  # lists are tuples
    with pytest.raises(TypeError, match="read-only"):
        cfg.train.phases[1].lr_mult["head"] = 1.0
    assert from_dict(cfg.to_dict()) == cfg  # plain dicts and lists round-trip


def test_runtime_keys_never_change_the_run():
    base = load_config("configs/resnet50_finetune.yaml")
    same = load_config("configs/resnet50_finetune.yaml", RUNTIME)
    other = load_config("configs/resnet50_finetune.yaml", ["optim.lr=0.5"])
    assert run_hash(same) == run_hash(base) != run_hash(other)
    assert differing_keys(base.to_dict(), same.to_dict()) == []
    assert differing_keys(base.to_dict(), other.to_dict()) == ["optim.lr"]
    overrides = dict(item.split("=", 1) for item in RUNTIME)
    assert task_id("r", {"seed": 0, **overrides}) == task_id("r", {"seed": 0}) != task_id("r", {"seed": 1})
    runs = [Run(id=str(i), status="finished", config=c.to_dict(), summary={}, sources=[])
            for i, c in enumerate([base, same, other])]
    assert swept_keys(runs) == ["optim.lr"]
    assert all(key.startswith(RUNTIME_KEYS) for key, _ in (item.split("=", 1) for item in RUNTIME))


def test_keys_added_at_their_default_leave_a_runs_identity_as_it_was():
    new = load_config("configs/baseline_cnn.yaml")
    old = new.to_dict()
    del old["eval"], old["data"]["aug"], old["data"]["crop"], old["train"]["ema"]  # written before these keys
    assert differing_keys(old, new.to_dict()) == [] and identity(old) == identity(new.to_dict())  # same run hash
    changed = load_config("configs/baseline_cnn.yaml", ["train.ema=0.99", "data.crop=head", "data.aug.noise=0.1"])
    assert differing_keys(old, changed.to_dict()) == ["data.aug.noise", "data.crop", "train.ema"]
    assert load_config("configs/baseline_cnn.yaml", ["data.crop=none", "data.background=keep"]) == new


def test_a_choice_named_none_is_that_choice_on_the_command_line():
    cfg = load_config("configs/baseline_cnn.yaml", ["data.cache=none", "data.normalize=none"])
    assert cfg.data.cache == "none" and cfg.data.normalize == "none"
    assert load_config("configs/baseline_cnn.yaml", ["data.cache=decoded"]).data.cache == "decoded"
    assert load_config("configs/baseline_cnn.yaml", ["train.fail_at_epoch=none"]).train.fail_at_epoch is None
