"""The accelerator: one place that decides the precision a run really gets and resets accelerate.

accelerate's state is a per-process singleton, so every user (training, prediction, evaluation,
export) builds its Accelerator here and resets the state when done, so that another one in the
same process (``--cluster debug``, notebooks, tests) may use other settings.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

log = logging.getLogger("brainmri")


def effective_precision(requested: str, warn: bool = True) -> str:
    """The mixed precision a run gets here: fp16 autocast needs a GPU, so on CPU it is fp32 ("no")."""
    if requested == "fp16" and not torch.cuda.is_available():
        if warn:  # say so rather than silently training in fp32 under a "fp16" label
            log.warning("mixed_precision=fp16 needs a GPU; running in fp32 (use bf16 for CPU autocast)")
        return "no"
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
