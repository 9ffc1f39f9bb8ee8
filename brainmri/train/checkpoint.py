"""What a checkpoint contains, and how the training state goes in and comes back out.

A checkpoint is a plain dict (``torch.load(..., weights_only=True)`` reads it):

- ``model``: the whole network's state dict; ``classes``; ``config`` (the resolved config);
- ``trainer``: :class:`brainmri.train.policy.TrainerState`, every counter a resume needs;
- ``optimizer``, ``scheduler``, ``scaler``, ``ema`` (with ``train.ema``): state dicts (the last
  checkpoint only; the best one holds weights: the raw or the averaged ones, whichever validated better);
- ``position`` (mid-epoch checkpoints only): where inside the epoch training stopped — see
  :func:`capture_position`; :func:`resume_inside_epoch` turns it into an :class:`EpochStart`.

Files, atomic writes and the rotation of the last checkpoint are ``brainmri.rundir.RunDir``'s.
"""

from __future__ import annotations

import logging
import random
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from brainmri.train.policy import TrainerState

log = logging.getLogger("brainmri")


def make_checkpoint(model: torch.nn.Module, state: TrainerState, classes: list[str], config: dict,
                    optimizer=None, scheduler=None, scaler=None, position: dict | None = None, ema=None) -> dict:
    """The checkpoint dict; with ``optimizer`` it can resume training (and holds the EMA of the
    weights, ``ema``), without it holds weights only."""
    ckpt: dict[str, Any] = {"model": model.state_dict(), "trainer": asdict(state), "classes": classes, "config": config}
    if optimizer is not None:
        ckpt["optimizer"] = optimizer.state_dict()
        ckpt["scheduler"] = scheduler.state_dict() if scheduler is not None else None
        ckpt["scaler"] = scaler.state_dict() if scaler is not None else None
        if ema is not None:
            ckpt["ema"] = ema.state_dict()
    if position is not None:
        ckpt["position"] = position
    return ckpt


def restore_optimization(ckpt: dict, optimizer, scheduler=None, scaler=None) -> None:
    """Load the optimizer, scheduler and grad-scaler states saved by :func:`make_checkpoint`."""
    optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt.get("scheduler"):
        scheduler.load_state_dict(ckpt["scheduler"])
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])


# ------------------------------------------------------------------ RNG streams and mid-epoch position
def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Reseed every RNG from (seed, epoch, rank): epoch N draws the same numbers after a resume."""
    s = (seed * 1_000_003 + epoch * 1009 + rank) % (2**31)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def rng_state() -> dict:
    """This process's torch (CPU and CUDA), NumPy and Python RNG states, as weights-only-loadable values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, mt, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "state": list(mt), "gauss": py_gauss},
    }


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


@dataclass
class EpochTotals:
    """This rank's running sums over the training batches of an epoch (float64 tensors on the device,
    so a step never waits for them); a mid-epoch checkpoint carries them as one tensor (:meth:`as_tensor`)."""

    loss_sum: torch.Tensor  # the loss times the batch size, summed
    correct: torch.Tensor  # predictions equal to the (unmixed) label
    images: torch.Tensor

    @classmethod
    def zeros(cls, device: torch.device | str) -> EpochTotals:
        return cls.from_tensor(torch.zeros(3, dtype=torch.float64, device=device))

    @classmethod
    def from_tensor(cls, values: torch.Tensor) -> EpochTotals:
        return cls(*(v.clone() for v in values.to(dtype=torch.float64)))

    def as_tensor(self) -> torch.Tensor:
        return torch.stack([self.loss_sum, self.correct, self.images])

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """One batch; detached, since accumulating graph-bearing tensors would keep every graph alive."""
        self.loss_sum += loss.detach().double() * labels.size(0)
        self.correct += (logits.detach().argmax(1) == labels).sum()
        self.images += labels.size(0)


@dataclass
class EpochStart:
    """Where training (the rest of) an epoch starts: the whole loader with nothing done, or, after a
    mid-epoch checkpoint, a loader skipping the batches already trained, with their totals."""

    loader: Any
    totals: EpochTotals
    batches_done: int = 0  # micro-batches of the epoch already trained on this rank
    elapsed_s: float = 0.0  # training seconds of the epoch before the checkpoint
    rng: dict | None = None  # this rank's RNG states, restored after the skipping loader drew its seed


def capture_position(epoch: int, batches: int, accum_step: int, elapsed_s: float, totals: EpochTotals,
                     gather_object) -> dict:
    """Where inside ``epoch`` training stands, for every rank (call on all ranks at the same step).

    ``batches`` micro-batches of the epoch are done on each rank, ``accum_step`` is accelerate's
    gradient-accumulation counter, ``totals`` this rank's running sums of the epoch; each rank's RNG
    states come along, so the rest of the epoch draws the same numbers.
    ``gather_object`` is ``accelerate.utils.gather_object``.
    """
    mine = {"rng": rng_state(), "accumulators": totals.as_tensor().detach().cpu().clone()}
    return {"epoch": epoch, "batches": batches, "accum_step": accum_step, "elapsed_s": elapsed_s,
            "ranks": gather_object([mine])}


def resume_position(ckpt: dict | None, next_epoch: int, num_processes: int, where) -> dict | None:
    """The mid-epoch position of ``ckpt`` when it stopped inside ``next_epoch``, else None.

    A mid-epoch checkpoint resumes with the number of processes that wrote it (each rank's RNG
    states and accumulators are in it); another number is a CheckpointError naming ``where``.
    """
    from brainmri.rundir import CheckpointError

    position = (ckpt or {}).get("position")
    if position is None or position["epoch"] != next_epoch:
        return None
    if len(position["ranks"]) != num_processes:
        raise CheckpointError(f"{where} stopped inside epoch {position['epoch']} with {len(position['ranks'])} "
                              f"process(es); resume it with that many (now {num_processes})")
    return position


def resume_inside_epoch(position: dict | None, accelerator, loader) -> EpochStart:
    """Where to train (the rest of) an epoch from: without a mid-epoch ``position`` the whole loader
    and fresh totals; with one, the loader skipping the batches already trained, this rank's totals and
    RNG states (restored by the caller after the skipping loader drew its seed), and accelerate's
    gradient-accumulation position set back.
    """
    if position is None:
        return EpochStart(loader, EpochTotals.zeros(accelerator.device))
    mine = position["ranks"][accelerator.process_index]
    done = position["batches"]
    accelerator.step = position["accum_step"]
    log.info("resuming epoch %d after %d batch(es)", position["epoch"], done)
    return EpochStart(accelerator.skip_first_batches(loader, done),
                      EpochTotals.from_tensor(mine["accumulators"].to(device=accelerator.device)),
                      done, position["elapsed_s"], mine["rng"])
