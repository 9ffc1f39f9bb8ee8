"""Optimizers and LR schedulers for brainmri.

Owns Gradient Centralization (``centralize_gradient``), the ``Lookahead`` wrapper, ``Ranger``
(RAdam with decoupled weight decay + GC + Lookahead), the optimizer and scheduler registries
(``OPTIMIZERS``, ``SCHEDULERS``), how much state each optimizer keeps (``OPTIMIZER_STATES``) and the
``build_optimizer`` / ``build_scheduler`` factories the engine calls with named parameter groups and
the config's ``optim`` / ``scheduler`` sections.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, ReduceLROnPlateau


def centralize_gradient(
    grad: torch.Tensor, use_conv: bool = True, use_fc: bool = True
) -> torch.Tensor:
    """Gradient Centralization (Yong et al., 2020): give each output filter's gradient zero mean.

    Conv weights (dim > 2) are centralized when ``use_conv``, fc weights (dim == 2) when ``use_fc``;
    the mean is taken over every dim but dim 0. Anything else (biases, norms) is returned as is.
    Returns a new tensor and never modifies ``grad``.
    """
    if (grad.dim() > 2 and use_conv) or (grad.dim() == 2 and use_fc):
        return grad - grad.mean(dim=tuple(range(1, grad.dim())), keepdim=True)
    return grad


class Lookahead(Optimizer):
    """Lookahead (Zhang et al., 2019): every k base steps, slow += alpha * (fast - slow); fast = slow.

    The wrapper shares the base optimizer's ``param_groups`` and ``state``, so LR schedulers and
    per-group learning rates act on the base optimizer directly, and ``state_dict()`` holds the base
    state plus the slow weights (``state[p]["lookahead_slow"]``) and the per-group hyper-parameters
    ``lookahead_k``, ``lookahead_alpha``, ``lookahead_step`` and ``lookahead`` (on/off switch).
    """

    def __init__(
        self, base_optimizer: Optimizer, k: int = 6, alpha: float = 0.5, enabled: bool = True
    ) -> None:
        if not isinstance(base_optimizer, Optimizer):
            raise TypeError(f"base_optimizer must be a torch Optimizer, got {type(base_optimizer)!r}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"Invalid lookahead k: {k!r} (must be an int >= 1)")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"Invalid lookahead alpha: {alpha!r} (must be in [0, 1])")
        defaults = {
            **base_optimizer.defaults,
            "lookahead_k": k,
            "lookahead_alpha": alpha,
            "lookahead_step": 0,
            "lookahead": enabled,
        }
        super().__init__(base_optimizer.param_groups, defaults)
        self.param_groups = base_optimizer.param_groups
        self.state = base_optimizer.state
        self.base_optimizer = base_optimizer

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "base_optimizer": self.base_optimizer}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # load_state_dict() ends here with fresh state/param_groups objects: hand them to the base
        # optimizer so both keep sharing one copy (and the base applies its own upgrade fix-ups).
        self.base_optimizer.__setstate__({"state": self.state, "param_groups": self.param_groups})

    def _before_base_step(self) -> None:
        """Hook for subclasses to transform gradients before the base step."""

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        # (torch declares Optimizer.step as two overloads on ``closure``; this one signature covers both)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._before_base_step()
        # Slow weights start from the pre-step params but are stored only after the base step: Adam-like
        # optimizers initialise their state when it is empty, so it must still be empty on their first step.
        fresh = [
            (p, p.detach().clone())
            for group in self.param_groups
            if group["lookahead"]
            for p in group["params"]
            if p.grad is not None and "lookahead_slow" not in self.state.get(p, {})
        ]
        self.base_optimizer.step()
        for p, slow in fresh:
            self.state[p]["lookahead_slow"] = slow
        for group in self.param_groups:
            if not group["lookahead"]:
                continue
            group["lookahead_step"] += 1
            if group["lookahead_step"] % group["lookahead_k"]:
                continue
            for p in group["params"]:
                slow = self.state.get(p, {}).get("lookahead_slow")
                if slow is not None:
                    slow.lerp_(p, group["lookahead_alpha"])
                    p.copy_(slow)
        return loss


class Ranger(Lookahead):
    """Ranger: ``torch.optim.RAdam`` (decoupled weight decay) + Gradient Centralization + Lookahead.

    GC is applied to the gradients before every RAdam step (per-group switches ``gc_conv``/``gc_fc``).
    With ``use_lookahead=False`` and GC off it is exactly ``RAdam(..., decoupled_weight_decay=True)``.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        k: int = 6,
        alpha: float = 0.5,
        gc_conv: bool = True,
        gc_fc: bool = True,
        use_lookahead: bool = True,
    ) -> None:
        base = torch.optim.RAdam(
            params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, decoupled_weight_decay=True
        )
        super().__init__(base, k=k, alpha=alpha, enabled=use_lookahead)
        self.defaults.update(gc_conv=gc_conv, gc_fc=gc_fc)
        for group in self.param_groups:
            group.setdefault("gc_conv", gc_conv)
            group.setdefault("gc_fc", gc_fc)

    def _before_base_step(self) -> None:
        for group in self.param_groups:
            if not (group["gc_conv"] or group["gc_fc"]):
                continue
            for p in group["params"]:
                if p.grad is not None and not p.grad.is_sparse:
                    centered = centralize_gradient(p.grad, group["gc_conv"], group["gc_fc"])
                    if centered is not p.grad:
                        p.grad.copy_(centered)


# ------------------------------------------------------------------ registries
# One registry each: name → factory. The hyper-parameters are the config dataclasses'
# (brainmri.config.OptimConfig / SchedulerConfig), handed on as they are; config validation asks
# these registries which names exist.
OPTIMIZERS: dict[str, Callable[[list[dict[str, Any]], Any], Optimizer]] = {
    "adam": lambda groups, o: torch.optim.Adam(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                               weight_decay=o.weight_decay),
    "adamw": lambda groups, o: torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                                 weight_decay=o.weight_decay),
    "sgd": lambda groups, o: torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay),
    "ranger": lambda groups, o: Ranger(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay,
                                       k=o.lookahead_k, alpha=o.lookahead_alpha, gc_conv=o.gc_conv, gc_fc=o.gc_fc),
}
# Tensors the size of a trained parameter each optimizer keeps in its state (Adam: both moments; Ranger:
# those and Lookahead's slow weights; SGD: the momentum buffer): what a checkpoint's optimizer state weighs.
OPTIMIZER_STATES: dict[str, int] = {"adam": 2, "adamw": 2, "ranger": 3, "sgd": 1}

class WarmupCosine(LRScheduler):
    """Linear warmup, then cosine decay to ``min_lr``, stepped once per epoch (a closed form of the epoch).

    Epoch e < w (``warmup_epochs``) runs at base × (e + 1)/(w + 1); epochs w … ``epochs`` − 1 follow
    ``min_lr + (base − min_lr)(1 + cos(π (e − w)/(epochs − w)))/2``, so with w = 0 it is the
    ``cosine`` schedule. ``cosine=False`` holds the base LR after the warmup (``scheduler.name: none``).
    Setting ``epochs`` longer (a resumed, extended phase) re-plans the rest (see ``replan_cosine``).
    """

    def __init__(self, optimizer: Optimizer, epochs: int, warmup_epochs: int, min_lr: float = 0.0,
                 cosine: bool = True, last_epoch: int = -1):
        self.epochs, self.warmup_epochs, self.min_lr, self.cosine = max(epochs, 1), warmup_epochs, min_lr, cosine
        super().__init__(optimizer, last_epoch)

    def factor_lr(self, base: float, epoch: int) -> float:
        w = self.warmup_epochs
        if epoch < w:
            return base * (epoch + 1) / (w + 1)
        if not self.cosine:
            return base
        span = max(self.epochs - w, 1)
        return self.min_lr + (base - self.min_lr) * (1 + math.cos(math.pi * min(epoch - w, span) / span)) / 2

    def get_lr(self) -> list[float | torch.Tensor]:
        return [self.factor_lr(float(base), self.last_epoch) for base in self.base_lrs]


def _warmup_or(plain):
    """The scheduler ``plain`` builds, or ``WarmupCosine`` when ``scheduler.warmup_epochs`` > 0."""
    def build(opt, s, epochs):
        if s.warmup_epochs > 0:
            return WarmupCosine(opt, epochs, s.warmup_epochs, s.min_lr, cosine=s.name == "cosine")
        return plain(opt, s, epochs)
    return build


SCHEDULERS: dict[str, Callable[[Optimizer, Any, int], LRScheduler | ReduceLROnPlateau | None]] = {
    # with scheduler.warmup_epochs > 0, none and cosine start with a linear warmup (WarmupCosine)
    "none": _warmup_or(lambda opt, s, epochs: None),
    # stepped once per epoch with the monitored metric
    "plateau": lambda opt, s, epochs: ReduceLROnPlateau(opt, mode=s.mode, factor=s.factor, patience=s.patience,
                                                        min_lr=s.min_lr),
    # from each group's LR down to min_lr over the phase's epochs (stepped once per epoch)
    "cosine": _warmup_or(lambda opt, s, epochs: CosineAnnealingLR(opt, T_max=max(epochs, 1), eta_min=s.min_lr)),
}


def _lookup(registry: dict, kind: str, name: str):
    if name not in registry:
        raise ValueError(f"Unknown {kind} {name!r}; valid: {', '.join(registry)}")
    return registry[name]


def build_optimizer(optim_cfg, param_groups: Sequence[dict[str, Any]]) -> Optimizer:
    """Build optimizer ``optim_cfg.name`` (see ``OPTIMIZERS``) with the hyper-parameters of ``optim_cfg``.

    ``param_groups`` is a list of dicts ``{"name": str, "params": [...], "lr": float}``; a group's own
    ``lr`` (or any other hyper-parameter) overrides the config's. The dicts are copied, and their extra
    keys such as ``"name"`` stay in ``optimizer.param_groups``.

    Example:
        >>> build_optimizer(OptimConfig(name="ranger", lr=1e-5), [{"name": "all", "params": net.parameters()}])
    """
    factory = _lookup(OPTIMIZERS, "optimizer", optim_cfg.name)
    return factory([dict(g) for g in param_groups], optim_cfg)


def build_scheduler(scheduler_cfg, optimizer: Optimizer, epochs: int = 1) -> LRScheduler | ReduceLROnPlateau | None:
    """Build LR scheduler ``scheduler_cfg.name`` (see ``SCHEDULERS``) for a phase of ``epochs`` epochs:
    none → None, plateau → ReduceLROnPlateau (``step(metric)``), cosine → CosineAnnealingLR to ``min_lr``;
    with ``warmup_epochs`` > 0, none and cosine → ``WarmupCosine`` (linear warmup first)."""
    return _lookup(SCHEDULERS, "scheduler", scheduler_cfg.name)(optimizer, scheduler_cfg, epochs)


def replan_cosine(scheduler, optimizer, epochs: int) -> None:
    """A cosine schedule resumed with a longer phase: T_max becomes the new length, and the LR jumps to the
    longer schedule's value at the current epoch (so the rest follows it; the epochs already trained
    followed the shorter one). A ``WarmupCosine`` is re-planned the same way."""
    if isinstance(scheduler, WarmupCosine) and scheduler.epochs != max(epochs, 1):
        scheduler.epochs = max(epochs, 1)
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
            group["lr"] = scheduler.factor_lr(float(base), scheduler.last_epoch)
        return
    if not isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR) or scheduler.T_max == max(epochs, 1):
        return
    scheduler.T_max = max(epochs, 1)
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
        group["lr"] = scheduler.eta_min + (base - scheduler.eta_min) * (
            1 + math.cos(math.pi * scheduler.last_epoch / scheduler.T_max)) / 2
