"""The submitit job of one sweep task: ``TrainJob(config)()`` trains it with ``engine.fit``.

The job carries only the resolved config dict (a small pickle, no model). The engine saves
its last checkpoint every epoch and resumes from it, so ``checkpoint()`` does no I/O: it
only requeues a fresh job with the same config. submitit calls it on USR2, which SLURM sends
``slurm.signal_delay_s`` before the time limit (a time-out: requeued up to ``slurm.max_requeues``
times) or on pre-emption; the requeued job resumes from the last epoch. A search trial pruned by
its driver ends the job normally (its run directory says ``pruned``), and so does a copy of a task
whose run directory another live process holds (result ``already running``: it writes nothing). When the task runs as
several SLURM tasks (one per GPU, over one or more nodes) the job exports torch.distributed's
variables from SLURM's first; accelerate picks them up. Knows nothing about sweeps or models.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import submitit

from brainmri.rundir import RunDir

ALREADY_RUNNING = "already running"  # a job's result when another process already trains its run directory


def export_distributed_env() -> None:
    """MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK from SLURM when the job has several tasks."""
    try:
        num_tasks = submitit.JobEnvironment().num_tasks
    except RuntimeError:  # not under submitit: run in-process (--cluster debug), one process
        return
    if num_tasks <= 1:
        return
    # accelerate maps LOCAL_RANK to a GPU itself; submitit's remapping of CUDA_VISIBLE_DEVICES
    # to the bare local rank would be wrong on a node whose allocated GPUs are e.g. "2,3"
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("ACCELERATE_USE_CPU", "1")  # else accelerate ignores WORLD_SIZE on CPU


class TrainJob(submitit.helpers.Checkpointable):
    """Train one resolved config to completion; requeue-safe.

    Example:
        >>> job = executor.submit(TrainJob(load_config("configs/baseline_cnn.yaml", ["run_dir=/r"]).to_dict()))
    """

    def __init__(self, config: dict[str, Any]):
        if not config.get("run_dir"):
            raise ValueError("TrainJob needs a config with run_dir set: a requeued job must find its checkpoints")
        self.config = config
        self._requeued = False

    def __call__(self) -> dict[str, Any]:
        summary = RunDir(self.config["run_dir"]).read_summary()
        if summary is not None:
            return summary
        export_distributed_env()
        from brainmri.config import from_dict
        from brainmri.rundir import RunLockedError
        from brainmri.train.engine import fit
        from brainmri.train.signals import TrialPruned

        try:
            return fit(from_dict(self.config))
        except RunLockedError as e:  # a copy of a task that is already running (its run directory's lock):
            # it ends cleanly and leaves the run to the process that holds it; whoever polls adopts that one
            return {"status": ALREADY_RUNNING, "run_dir": self.config["run_dir"], "holder": str(e)}
        except TrialPruned as e:  # a clean end: the job completes, the run directory says pruned
            return {"status": "pruned", "epochs_run": e.epoch, "run_dir": self.config["run_dir"]}
        except Exception:
            if self._requeued:
                # submitit's exit after a requeue unwinds through the engine, whose clean-up can
                # fail (e.g. W&B's service already got SIGTERM); recording that as the job's
                # result would mark a requeued job failed
                raise SystemExit(-1) from None
            raise

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        # runs in a signal handler on rank 0, mid-step: the engine's last checkpoint is the checkpoint.
        # Pre-emption sends SIGTERM to every process of the step alongside USR2, possibly just after it:
        # the requeue that follows (scontrol, a child of this process) must not die of it, and an
        # ignored signal stays ignored in a child. This process is leaving for its requeue anyway.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        self._requeued = True
        return submitit.helpers.DelayedSubmission(TrainJob(self.config))
