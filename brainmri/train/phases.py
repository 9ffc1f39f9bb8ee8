"""What one training phase trains and how: its parameter groups, optimizer and LR schedule, and the
:class:`Phase` the engine's loop receives (the module, loaders, input transform, optimizer and
schedule, prepared by accelerate for that phase).

A phase is data (``train.phases``: name, epochs, groups it trains, per-group LR multipliers);
brainmri.models.registry names the groups of a model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from brainmri.models.registry import assign_groups, resolve_groups, set_trainable, supports_feature_cache
from brainmri.optim import build_optimizer, build_scheduler
from brainmri.train.accel import TrainingForward

if TYPE_CHECKING:
    from brainmri.config import PhaseConfig, RunConfig
    from brainmri.data.datasets import TrainingData
    from brainmri.train.features import FeatureDataset


def phase_optimization(model, phase, cfg):
    """Make ``model`` train what ``phase`` trains; return the phase's optimizer and LR schedule.

    A group's LR is ``optim.lr × phase.lr_mult[group]`` (1 when not named), so a sweep over
    ``optim.lr`` scales every phase.
    """
    set_trainable(model, phase.train)
    groups = assign_groups(model, phase.train)
    # an lr_mult for a group the phase does not train was refused when the config was validated
    param_groups = [{"name": name, "params": params, "lr": cfg.optim.lr * phase.lr_mult.get(name, 1.0)}
                    for name, params in groups.items()]
    optimizer = build_optimizer(cfg.optim, param_groups)
    return optimizer, build_scheduler(cfg.scheduler, optimizer, epochs=phase.epochs)


def trains_head_only_on_features(model, phase, cfg) -> bool:
    """Does ``phase`` train only the head of a frozen backbone whose features can be cached?"""
    return (cfg.model.feature_cache_views > 0 and supports_feature_cache(model)
            and resolve_groups(model, phase.train) == ["head"])


@dataclass
class Phase:
    """One phase, ready to train: everything the loop uses in it, prepared by accelerate."""

    spec: PhaseConfig  # name, epochs, groups trained, LR multipliers
    net: nn.Module  # the trained module, prepared: the whole model, or its head on cached features
    forward: TrainingForward  # the training forward of ``net`` (torch.compile'd with train.compile)
    train_loader: Any  # prepared loaders
    val_loader: Any
    to_input: Callable[[torch.Tensor], torch.Tensor]  # loader batch → ``net``'s input
    optimizer: Any
    scheduler: Any  # None: a constant LR
    epoch_batches: int  # micro-batches in one of its epochs (train.max_steps_per_epoch caps them)
    features: FeatureDataset | None = None  # the cached-feature training set while the head trains alone


def prepare_phase(model: nn.Module, data: TrainingData, spec: PhaseConfig, cfg: RunConfig, acc,
                  previous: TrainingForward | None = None) -> Phase:
    """Make ``model`` train what ``spec`` trains and prepare the phase with accelerator ``acc``.

    ``previous``: the last phase's training forward; once it fell back to eager, later phases stay eager
    (warned once).
    """
    optimizer, scheduler = phase_optimization(model, spec, cfg)
    acc.free_memory()  # drop the previous phase's wrappers before preparing new ones
    net, train_loader, val_loader = model, data.loaders["train"], data.loaders["val"]
    to_input, features = data.normalize, None
    if trains_head_only_on_features(model, spec, cfg):
        # the backbone is frozen for the whole phase: train and validate the head on its features
        from brainmri.train.features import feature_loaders

        net, to_input = cast(nn.Module, model.fc), (lambda x: x)
        features, train_loader, val_loader = feature_loaders(model, data, cfg, acc.device, acc.main_process_first)
    net, optimizer, train_loader, val_loader = acc.prepare(net, optimizer, train_loader, val_loader)
    # train.compile: the training forward only (validation and the final evaluation stay eager)
    fell_back = previous is not None and not previous.compiled
    forward = TrainingForward(net, cfg.train.compile and not fell_back)
    max_steps = cfg.train.max_steps_per_epoch
    return Phase(spec, net, forward, train_loader, val_loader, to_input, optimizer, scheduler,
                 max_steps * cfg.train.grad_accum if max_steps else len(train_loader), features)
