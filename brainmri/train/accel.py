"""The accelerator: one place that decides the precision a run really gets and resets accelerate,
and the training forward's speed options (``train.compile``, ``train.channels_last``).

accelerate's state is a per-process singleton, so every user (training, prediction, evaluation,
export) builds its Accelerator here and resets the state when done, so that another one in the
same process (``--cluster debug``, notebooks, tests) may use other settings.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch

log = logging.getLogger("brainmri")


def effective_precision(requested: str, warn: bool = True) -> str:
    """The mixed precision a run gets here: fp16 autocast (with a gradient scaler) needs a GPU, so on CPU
    it is fp32 ("no"); bf16 autocast runs on CPU and on GPUs that support bf16, elsewhere fp16."""
    if requested == "fp16" and not torch.cuda.is_available():
        if warn:  # say so rather than silently training in fp32 under a "fp16" label
            log.warning("mixed_precision=fp16 needs a GPU; running in fp32 (use bf16 for CPU autocast)")
        return "no"
    if requested == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        if warn:
            log.warning("mixed_precision=bf16: this GPU has no bf16; running fp16 autocast with a gradient scaler")
        return "fp16"
    return requested


def make_accelerator(precision: str, grad_accum: int = 1, warn: bool = True):
    from accelerate import Accelerator

    return Accelerator(mixed_precision=effective_precision(precision, warn), gradient_accumulation_steps=grad_accum)


def reset_accelerator() -> None:
    """Forget accelerate's process-wide state (after ``end_training`` when training)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


@contextlib.contextmanager
def inference_accelerator(precision: str) -> Iterator:
    """An Accelerator for inference in the run's precision; accelerate's state is reset afterwards."""
    acc = make_accelerator(precision, warn=False)
    try:
        yield acc
    finally:
        reset_accelerator()


def to_channels_last(x: Any) -> Any:
    """A batch of images (N, C, H, W) in channels-last memory layout; anything else as it is."""
    if isinstance(x, torch.Tensor) and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


class TrainingForward:
    """The training forward of ``module``: through ``torch.compile`` when ``compile`` is set.

    Where it cannot compile (no C++ compiler for the CPU backend, an unsupported Python or
    platform, an operation the compiler fails on), one warning says why and training goes on
    eagerly with the same module; :attr:`compiled` says what the run got.
    """

    def __init__(self, module: torch.nn.Module, compile: bool = False):
        self.module = module
        self.forward: Callable[..., Any] | None = None
        self.compiled = False
        if compile:
            try:
                self.forward = torch.compile(module)
                self.compiled = True
            except Exception as exc:  # noqa: BLE001 -- e.g. torch.compile is not supported on this Python
                self._fall_back(exc)

    def _fall_back(self, exc: BaseException) -> None:
        self.forward, self.compiled = None, False
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        log.warning("train.compile: torch.compile cannot compile here (%s: %s); training eagerly",
                    type(exc).__name__, first)

    def __call__(self, *args: Any) -> Any:
        if self.forward is not None:
            try:
                return self.forward(*args)
            except Exception as exc:  # noqa: BLE001 -- compiling happens on the first calls; an eager error recurs below
                self._fall_back(exc)
        return self.module(*args)
