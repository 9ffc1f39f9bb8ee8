"""What one training phase trains and how: its parameter groups, optimizer and LR schedule.

A phase is data (``train.phases``: name, epochs, groups it trains, per-group LR multipliers);
brainmri.models.registry names the groups of a model.
"""

from __future__ import annotations

from brainmri.models.registry import assign_groups, resolve_groups, set_trainable, supports_feature_cache
from brainmri.optim import build_optimizer, build_scheduler


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
