"""Batch-level regularisers and test-time augmentation: MixUp/CutMix, soft-target cross-entropy, EMA, TTA.

How the engine calls each piece (``cfg`` is the run's ``RunConfig``, ``acc`` accelerate's Accelerator)
-----------------------------------------------------------------------------------------------------
1. **MixUp / CutMix** (``train.mixup``, ``train.cutmix``, ``train.mixup_prob``, ``train.mixup_switch_prob``).
   Once per run: ``mixer = BatchMixer.from_config(cfg, num_classes)`` (None when both alphas are 0).
   In the training step, after the batch is on the device and normalised to float (``to_input``):
   ``inputs, targets = mixer(inputs, labels, epoch=epoch, step=i, rank=acc.process_index)``, ``i`` the
   batch's index within the epoch (counting the batches a mid-epoch resume skips, so a resumed
   epoch mixes the same way). Every draw comes from a CPU generator seeded by
   (seed, epoch, step, rank) inside ``torch.random.fork_rng``, so the run's other RNG streams are
   untouched and a resume is exact. Without a mixer, ``targets = labels``. Train accuracy stays
   ``argmax(logits) == labels`` (the unmixed labels). With the frozen-backbone feature cache the
   backbone is not run per step: mix the cached features or refuse the combination.
2. **Loss** (``train.label_smoothing``, ``data.class_weights``):
   ``criterion = SoftTargetCrossEntropy(weight=class_weights, label_smoothing=cfg.train.label_smoothing)``
   replaces ``nn.CrossEntropyLoss``; it takes class indices or (mixed) probability rows. For hard
   labels it equals ``F.cross_entropy(logits, y, weight=w, label_smoothing=s)``. Validation loss:
   ``SoftTargetCrossEntropy(weight)`` (no smoothing), i.e. today's ``val/loss``.
3. **EMA of the weights** (``train.ema``, ``train.ema_warmup``). After building the model:
   ``ema = WeightEMA(model, cfg.train.ema, cfg.train.ema_warmup)`` (the unwrapped model; its copy
   lives on the model's device, outside DDP). After every optimizer step (``acc.sync_gradients``):
   ``ema.update(acc.unwrap_model(model))``. Each epoch evaluate ``ema.module`` (eval mode) beside
   the raw model, record both (e.g. ``val/acc`` and ``val_ema/acc``), keep whichever is better on
   the monitor in the best checkpoint under ``"model"`` (the same keys as the raw model, so predict/export
   read it unchanged) and say which in the summary. Checkpoint: ``ckpt["ema"] = ema.state_dict()``;
   resume: ``ema.load_state_dict(ckpt["ema"])``. Under DDP every rank updates its own copy from
   identical weights and broadcast buffers, so the copies stay equal. Float buffers (BatchNorm
   running statistics) are averaged like the weights, integer ones (``num_batches_tracked``) copied.
4. **TTA** (``eval.tta: [hflip, vflip]``): ``TTA(model, cfg.eval.tta)`` is a module returning the
   mean softmax over the identity and each view (the same with no views). Evaluation and predict
   use ``probs = TTA(model, views)(x)`` in place of ``softmax(model(x))`` (loss: ``nll(log(probs))``);
   ``brainmri.use.export`` already puts it inside the exported graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torchvision.transforms import v2


# ------------------------------------------------------------------------------ MixUp / CutMix
class BatchMixer:
    """MixUp and/or CutMix of a float batch (torchvision v2), seeded per (seed, epoch, step, rank).

    ``prob`` is the share of batches mixed at all; with both alphas set, ``switch_prob`` of the
    mixed batches use CutMix and the rest MixUp. Returns probability targets (B, K) whose rows sum
    to 1, one-hot rows for a batch left unmixed.
    """

    def __init__(self, num_classes: int, mixup: float = 0.0, cutmix: float = 0.0, prob: float = 1.0,
                 switch_prob: float = 0.5, seed: int = 0):
        if mixup <= 0 and cutmix <= 0:
            raise ValueError("BatchMixer needs mixup > 0 or cutmix > 0")
        self.num_classes, self.prob, self.switch_prob, self.seed = num_classes, prob, switch_prob, seed
        self.mixup = v2.MixUp(alpha=mixup, num_classes=num_classes) if mixup > 0 else None
        self.cutmix = v2.CutMix(alpha=cutmix, num_classes=num_classes) if cutmix > 0 else None

    @classmethod
    def from_config(cls, cfg, num_classes: int) -> BatchMixer | None:
        t = cfg.train
        if t.mixup <= 0 and t.cutmix <= 0:
            return None
        return cls(num_classes, t.mixup, t.cutmix, t.mixup_prob, t.mixup_switch_prob, cfg.seed)

    def step_seed(self, epoch: int, step: int, rank: int = 0) -> int:
        return (self.seed * 1_000_003 + epoch * 100_019 + step * 7919 + rank * 104_729 + 17) % (2**63)

    def __call__(self, inputs: torch.Tensor, labels: torch.Tensor, epoch: int, step: int,
                 rank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        if not inputs.is_floating_point():
            raise TypeError("BatchMixer mixes normalised float batches, got " + str(inputs.dtype))
        with torch.random.fork_rng(devices=[]):  # the draws are on the CPU generator only
            torch.manual_seed(self.step_seed(epoch, step, rank))
            if float(torch.rand(())) >= self.prob or len(labels) < 2:
                return inputs, F.one_hot(labels, self.num_classes).to(inputs.dtype)
            use_cutmix = self.mixup is None or (self.cutmix is not None and float(torch.rand(())) < self.switch_prob)
            mix = self.cutmix if use_cutmix else self.mixup
            assert mix is not None  # at least one of mixup and cutmix is on
            mixed, targets = mix(inputs, labels)
        return mixed, targets.to(inputs.dtype)


# ------------------------------------------------------------------------------ the loss
class SoftTargetCrossEntropy(nn.Module):
    """Cross-entropy for class indices or probability targets, with label smoothing and class weights.

    With targets t (one-hot for indices), smoothed q = (1 − s)·t + s/K and class weights w:
    ``loss = Σ_i Σ_c w_c q_ic (−log p_ic) / Σ_i Σ_c w_c t_ic``. For class indices this is exactly
    ``F.cross_entropy(logits, y, weight=w, label_smoothing=s)`` (mean reduction); for probability
    targets without weights it is ``F.cross_entropy(logits, t, label_smoothing=s)``; a mixed row
    counts with the weight mass of its classes.
    """

    weight: torch.Tensor | None

    def __init__(self, weight: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = float(label_smoothing)
        self.register_buffer("weight", None if weight is None else weight.detach().float().clone())

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1)
        k = logits.shape[1]
        t = F.one_hot(target, k).float() if not target.is_floating_point() else target.float()
        q = t * (1 - self.label_smoothing) + self.label_smoothing / k
        w = self.weight if self.weight is not None else logp.new_ones(k)
        return -(q * logp * w).sum() / (t * w).sum()


# ------------------------------------------------------------------------------ EMA
class WeightEMA:
    """Exponential moving average of a model's weights and float buffers (``torch.optim.swa_utils.AveragedModel``).

    Starts as a copy of ``model``; each ``update(model)`` sets e ← d·e + (1 − d)·w for every
    parameter and floating buffer, with d = ``decay`` (with ``warmup``: min(decay, (1 + n)/(10 + n))
    at the n-th update, n from 1); integer buffers are copied. ``module`` is the averaged network
    (eval mode, no gradients), ``state_dict``/``load_state_dict`` carry it and the update count.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay, self.warmup, self.updates = float(decay), bool(warmup), 0
        self.averaged = AveragedModel(model, multi_avg_fn=self._average, use_buffers=True)
        self.averaged.n_averaged.fill_(1)  # the copy is the first average: every update blends
        self.averaged.requires_grad_(False)
        self.averaged.eval()

    @property
    def module(self) -> nn.Module:
        return self.averaged.module

    def decay_at(self, update: int) -> float:
        """The decay used by the ``update``-th update (1-based)."""
        return min(self.decay, (1 + update) / (10 + update)) if self.warmup else self.decay

    def _average(self, averaged: tuple[torch.Tensor, ...] | list[torch.Tensor],
                 current: tuple[torch.Tensor, ...] | list[torch.Tensor], _n: torch.Tensor | int) -> None:
        weight = 1.0 - self.decay_at(self.updates)
        for a, c in zip(averaged, current, strict=True):
            if a.is_floating_point() or a.is_complex():
                a.lerp_(c, weight)
            else:
                a.copy_(c)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        self.averaged.update_parameters(model)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "warmup": self.warmup, "updates": self.updates,
                "model": self.averaged.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if float(state["decay"]) != self.decay or bool(state["warmup"]) != self.warmup:
            raise ValueError(f"the EMA state was saved with decay {state['decay']} (warmup {state['warmup']}), "
                             f"this run uses {self.decay} (warmup {self.warmup})")
        self.averaged.module.load_state_dict(state["model"])
        self.updates = int(state["updates"])
        self.averaged.n_averaged.fill_(self.updates + 1)


# ------------------------------------------------------------------------------ TTA
VIEWS = {"hflip": lambda x: x.flip(-1), "vflip": lambda x: x.flip(-2)}


def check_views(views) -> tuple[str, ...]:
    """``views`` as a tuple; an unknown view is a ValueError naming it and the choices."""
    unknown = [v for v in views if v not in VIEWS]
    if unknown:
        raise ValueError(f"unknown TTA view {unknown[0]!r} (choose from {', '.join(VIEWS)})")
    return tuple(views)


class TTA(nn.Module):
    """Mean softmax of ``model`` over the input and each named view (``eval.tta``); exportable."""

    def __init__(self, model: nn.Module, views=()):
        super().__init__()
        self.model, self.views = model, check_views(views)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(self.model(x).float(), dim=1)  # float even under autocast
        for name in self.views:
            probs = probs + torch.softmax(self.model(VIEWS[name](x)).float(), dim=1)
        return probs / (1 + len(self.views))


def objective(cfg, num_classes: int, class_weight: torch.Tensor | None, device):
    """``(mixer or None, criterion)`` of a run: MixUp/CutMix train on probability targets with
    :class:`SoftTargetCrossEntropy`; without them ``nn.CrossEntropyLoss`` (same label smoothing and
    class weights)."""
    mixer = BatchMixer.from_config(cfg, num_classes)
    weight = class_weight.to(device) if class_weight is not None else None
    loss = SoftTargetCrossEntropy if mixer is not None else nn.CrossEntropyLoss
    return mixer, loss(weight=weight, label_smoothing=cfg.train.label_smoothing)
