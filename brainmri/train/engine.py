"""The training engine: one loop for every recipe, on top of accelerate.

``fit(cfg)`` trains the phases of a config (DDP on any number of processes, bf16/fp16 mixed
precision, gradient accumulation, best and last checkpoints, mid-epoch checkpoints on a timer or a
stop signal) and evaluates the best checkpoint on val and test (``brainmri.train.evaluate``). The
engine is the loop; around it: the data (``brainmri.data.datasets.build_training_data``), each
phase's optimizer (``brainmri.train.phases``), the epoch-end decisions — best epoch, early stop,
schedule — (``brainmri.train.policy``), what a checkpoint holds (``brainmri.train.checkpoint``) and
the run's bookkeeping in its directory and W&B (``brainmri.train.record``). A run directory that
already holds a last checkpoint is resumed exactly (inside the epoch when it stopped there); a
search driver's prune request stops it at the next epoch end (``TrialPruned``, status ``pruned``);
one that holds a finished summary is returned as is, or extended when the config only adds epochs
to its last phase. The engine knows nothing about SLURM or sweeps.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Callable
from typing import Any, cast

import torch
from accelerate.utils import gather_object, set_seed
from torch import nn
from tqdm.auto import tqdm

from brainmri.config import RunConfig
from brainmri.data.datasets import build_training_data, class_weights
from brainmri.models.registry import build_model, freeze_frozen_norms
from brainmri.optim import replan_cosine
from brainmri.rundir import RunDir
from brainmri.train import policy
from brainmri.train.accel import TrainingForward, make_accelerator, reset_accelerator, to_channels_last
from brainmri.train.checkpoint import (
    capture_position,
    make_checkpoint,
    restore_optimization,
    resume_inside_epoch,
    resume_position,
    seed_epoch,
    set_rng_state,
)
from brainmri.train.evaluate import evaluate_split
from brainmri.train.phases import phase_optimization, trains_head_only_on_features
from brainmri.train.policy import TrainerState
from brainmri.train.record import RunRecord
from brainmri.train.regularise import WeightEMA, objective
from brainmri.train.resume import default_run_dir
from brainmri.train.signals import StopSignals, TrainingInterrupted, TrialPruned, agree
from brainmri.train.tracking import log


class Engine:
    """Holds what one ``fit`` needs; ``fit(cfg)`` below is the public entry point."""

    to_input: Callable[[torch.Tensor], torch.Tensor]  # loader batch → the trained module's input

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.acc = make_accelerator(cfg.train.mixed_precision, cfg.train.grad_accum)
        self.run = RunDir(cfg.run_dir or default_run_dir(cfg))
        self.record = RunRecord(cfg, self.run, self.acc.is_main_process)
        self.state = TrainerState()
        self.feature_train = None  # the FeatureDataset while a phase trains the head on cached features
        self.forward: TrainingForward | None = None  # the phase's training forward (train.compile)
        self.signals = StopSignals()
        self._last_save = time.perf_counter()  # when the last checkpoint was last written

    # ----------------------------------------------------------------- setup
    def _setup_data(self) -> None:
        self.data = build_training_data(self.cfg, self.acc.main_process_first)
        self.classes, self.normalize, self.to_input = self.data.classes, self.data.normalize, self.data.normalize
        self.train_loader, self.val_loader = self.data.loaders["train"], self.data.loaders["val"]
        self.record.data(self.data.split, self.data.root)

    def _setup_model(self) -> None:
        cfg = self.cfg
        self.model = build_model(cfg.model, len(self.classes), cfg.data.input_channels, cfg.data.input_size)
        weight = class_weights(self.data.split.train, len(self.classes)) if cfg.data.class_weights else None
        self.mixer, self.criterion = objective(cfg, len(self.classes), weight, self.acc.device)
        self.model.to(self.acc.device)
        if cfg.train.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.ema = WeightEMA(self.model, cfg.train.ema, cfg.train.ema_warmup) if cfg.train.ema else None

    # ------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, path, optimizer=None, scheduler=None, position: dict | None = None,
                         weights=None) -> None:
        """Rank 0 writes ``path`` atomically (``weights``: another net's, e.g. the EMA); every rank waits for it."""
        if self.acc.is_main_process:  # the whole net, even while only the head is wrapped
            self.run.save_checkpoint(make_checkpoint(weights or self.model, self.state, self.classes,
                                                     self.cfg.to_dict(), optimizer, scheduler, self.acc.scaler,
                                                     position, self.ema), path)
        self.acc.wait_for_everyone()
        if path == self.run.last_checkpoint:
            self._last_save = time.perf_counter()

    def _load_last(self) -> dict | None:
        ckpt = self.run.load_checkpoint()  # falls back to the previous checkpoint; CheckpointError if none is valid
        if ckpt is not None:
            self.model.load_state_dict(ckpt["model"])
            self.state = TrainerState.from_dict(ckpt["trainer"])
            if self.ema is not None and "ema" in ckpt:
                self.ema.load_state_dict(ckpt["ema"])
            log.info("resuming %s from epoch %d (phase %d)", self.run.path, self.state.epoch, self.state.phase)
        return ckpt

    # ----------------------------------------------------------------- fit
    def fit(self) -> dict:
        with self.signals:  # a stop signal only sets a flag, read after each optimizer step
            self.record.acquire()
            self.acc.wait_for_everyone()
            try:
                return self._fit_locked()
            finally:
                self.record.release()

    def _fit_locked(self) -> dict:
        cfg, acc = self.cfg, self.acc
        summary, extend = self.record.finished()
        if summary is not None:
            return summary
        acc.wait_for_everyone()  # every rank has decided before rank 0 moves the old summary aside
        self.record.begin(extend)
        wall_start = time.perf_counter()
        try:  # from here on, a failure is recorded in the run's status (the sweep reads it)
            self.record.save_config()
            set_seed(cfg.seed, deterministic=cfg.train.deterministic)
            self._setup_data()
            self._setup_model()
            ckpt = self._load_last()
            self.record.start(self.state)
            self._run_phases(ckpt)
            summary = self._finish(time.perf_counter() - wall_start)
        except (TrainingInterrupted, TrialPruned) as e:  # a clean stop: checkpoints kept
            self.record.stopped(e, self.state)
            raise
        except BaseException as e:
            self.record.failed(e, self.state)
            raise
        finally:
            acc.end_training()  # destroys the process group, so gloo/NCCL exit cleanly
            reset_accelerator()  # another fit() in this process may use other settings
        self.record.close()
        return summary

    # -------------------------------------------------------------- phases
    def _run_phases(self, ckpt: dict | None) -> None:
        phases, st = self.cfg.phases, self.state
        # the last phase is never left: a finished run keeps its counters, so it can be extended
        while st.phase < len(phases):
            phase = phases[st.phase]
            if policy.phase_done(st, phase.epochs):
                if st.phase + 1 == len(phases):
                    break
                policy.next_phase(st)
                continue
            optimizer, scheduler = self._prepare_phase(phase)
            self.record.check_space(self.model, self.cfg.optim.name)  # once, before the first epoch it trains
            position = resume_position(ckpt, st.epoch + 1, self.acc.num_processes, self.run.last_checkpoint)
            if ckpt is not None and "optimizer" in ckpt and (st.phase_epoch > 0 or position is not None):
                restore_optimization(ckpt, optimizer, scheduler, self.acc.scaler)
                replan_cosine(scheduler, optimizer, phase.epochs)
            ckpt = None
            log.info("phase %d/%d %r: training %s for %d epoch(s)", st.phase + 1, len(phases), phase.name,
                     ", ".join(g["name"] for g in optimizer.param_groups), phase.epochs)
            while not policy.phase_done(st, phase.epochs):
                self._run_epoch(phase, optimizer, scheduler, position)
                position = None
                # a signal during evaluation, or a search driver's prune request: stop here
                stop, prune = agree(self.signals.signum, self.record.prune_requested(st.epoch), self.acc)
                if stop or prune:
                    raise TrainingInterrupted(stop) if stop else TrialPruned(st.epoch)

    def _prepare_phase(self, phase):
        """The phase's optimizer and schedule, and the model and loaders prepared for it."""
        optimizer, scheduler = phase_optimization(self.model, phase, self.cfg)
        self.acc.free_memory()  # drop the previous phase's wrappers before preparing new ones
        net, train_loader, val_loader = self.model, self.train_loader, self.val_loader
        self.feature_train, self.to_input = None, self.normalize
        if trains_head_only_on_features(self.model, phase, self.cfg):
            # the backbone is frozen for the whole phase: train and validate the head on its features
            from brainmri.train.features import feature_loaders

            net, self.to_input = cast(nn.Module, self.model.fc), (lambda x: x)
            self.feature_train, train_loader, val_loader = feature_loaders(
                self.model, self.data, self.cfg, self.acc.device, self.acc.main_process_first)
        self.ddp_model, optimizer, self.train_loader_p, self.val_loader_p = self.acc.prepare(
            net, optimizer, train_loader, val_loader)
        # train.compile: the training forward only (validation and the final evaluation stay eager)
        fell_back = self.forward is not None and not self.forward.compiled  # warned once: stay eager
        self.forward = TrainingForward(self.ddp_model, self.cfg.train.compile and not fell_back)
        return optimizer, scheduler

    def _run_epoch(self, phase, optimizer, scheduler, position: dict | None = None) -> None:
        cfg, st = self.cfg, self.state
        epoch = st.epoch + 1
        if cfg.train.fail_at_epoch is not None and epoch == cfg.train.fail_at_epoch:
            raise RuntimeError(f"train.fail_at_epoch={epoch}: simulated crash")
        seed_epoch(cfg.seed, epoch, self.acc.process_index)
        # accelerate's loader re-sets the sampler epoch from its own iteration counter on every
        # __iter__, and that counter restarts at 0 after a resume: pin it to the true epoch.
        self.data.set_epoch(epoch)
        if self.feature_train is not None:
            self.feature_train.set_epoch(epoch)
        row = {"epoch": epoch, "phase": phase.name, **self._train_epoch(optimizer, scheduler, phase.name, position)}
        row.update(self._validate("val/", self.ddp_model))
        if self.ema is not None:  # the averaged weights, validated beside the raw ones
            row.update(self._validate("val_ema/", self.ema.module.fc if self.feature_train else self.ema.module))
        row.update({f"lr/{g['name']}": g["lr"] for g in optimizer.param_groups})
        row.update(lr=optimizer.param_groups[0]["lr"], step=st.step)
        policy.step_scheduler(scheduler, row, cfg.scheduler.monitor)
        weights = policy.better_weights(row, cfg.train.monitor, cfg.train.monitor_mode)
        improved = policy.after_epoch(st, {**row, cfg.train.monitor: row[weights["monitor"]]}, cfg.train.monitor,
                                      cfg.train.monitor_mode, cfg.train.early_stop, phase.name)
        self.record.epoch(row)
        if improved:
            st.best_weights = weights["name"]
            self._save_checkpoint(self.run.best_checkpoint,
                                  weights=self.ema.module if weights["name"] == "ema" and self.ema else None)
        # the last checkpoint is written after the metrics row, so a resume never loses a logged epoch
        self._save_checkpoint(self.run.last_checkpoint, optimizer, scheduler)
        log.info("epoch %d %s: train/loss %.4f train/acc %.4f val/loss %.4f val/acc %.4f%s", epoch, phase.name,
                 row["train/loss"], row["train/acc"], row["val/loss"], row["val/acc"], " *" if improved else "")

    def _validate(self, prefix: str, net) -> dict[str, float]:
        val = evaluate_split("val", net, self.val_loader_p, self.acc, self.classes,
                             self.val_loader_p.dataset.samples, to_input=self.to_input)
        return {prefix + k[4:]: v for k, v in val.items() if k.count("/") == 1}

    # --------------------------------------------------------------- loop
    def _train_epoch(self, optimizer, scheduler, phase_name: str, position: dict | None) -> dict[str, float]:
        """One epoch (or the rest of one, from a mid-epoch ``position``); returns its train metrics."""
        cfg, acc, st = self.cfg, self.acc, self.state
        epoch = st.epoch + 1
        self.ddp_model.train()
        freeze_frozen_norms(self.ddp_model)
        # loss sum, correct, count; inside an epoch, continue from the position: skip what was trained
        loader, done, before, rng, sums = resume_inside_epoch(position, acc, self.train_loader_p)
        loader.set_epoch(epoch)
        max_micro = cfg.train.max_steps_per_epoch * cfg.train.grad_accum if cfg.train.max_steps_per_epoch else None
        left = None if max_micro is None else max(max_micro - done, 0)
        bar = tqdm(itertools.islice(loader, left), disable=not (acc.is_main_process and sys.stderr.isatty()),
                   leave=False, desc=f"epoch {epoch} [{phase_name}]", initial=done,
                   total=max_micro or len(self.train_loader_p))
        start = time.perf_counter()
        for x, y, _ in bar:
            if rng is not None:  # after the skipping loader drew its seed: the stream of the interrupted run
                set_rng_state(rng)
                rng = None
            with acc.accumulate(self.ddp_model):
                inputs, target = self.to_input(x), y
                if self.mixer is not None and self.feature_train is None:  # cached features are not mixed
                    inputs, target = self.mixer(inputs, y, epoch=epoch, step=done, rank=acc.process_index)
                if cfg.train.channels_last:
                    inputs = to_channels_last(inputs)
                logits = self.forward(inputs)
                loss = self.criterion(logits.float(), target)
                acc.backward(loss)
                if acc.sync_gradients and cfg.optim.clip_grad_norm:
                    acc.clip_grad_norm_(self.ddp_model.parameters(), cfg.optim.clip_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            # detach: accumulating graph-bearing tensors would keep every graph alive
            sums[0] += loss.detach().double() * y.size(0)
            sums[1] += (logits.detach().argmax(1) == y).sum()
            sums[2] += y.size(0)
            done += 1
            if acc.sync_gradients:
                st.step += 1
                if self.ema is not None:
                    self.ema.update(self.model)
                self._after_step(optimizer, scheduler, epoch, done, before + time.perf_counter() - start, sums)
        elapsed = before + time.perf_counter() - start
        totals = acc.reduce(sums, reduction="sum").tolist()
        images = int(totals[2])
        st.images_seen += images
        st.train_time_s += elapsed
        return {"train/loss": totals[0] / max(images, 1), "train/acc": totals[1] / max(images, 1),
                "time/epoch_s": elapsed, "throughput/images_per_s": images / max(elapsed, 1e-9)}

    def _after_step(self, optimizer, scheduler, epoch: int, done: int, elapsed: float, sums) -> None:
        """After an optimizer step: on a stop signal or when due, write a mid-epoch last checkpoint."""
        every = self.cfg.train.checkpoint_every_min * 60
        due = every > 0 and time.perf_counter() - self._last_save >= every  # rank 0's clock decides
        stop, due = agree(self.signals.signum, due and self.acc.is_main_process, self.acc)
        if stop or due:
            position = capture_position(epoch, done, self.acc.step, elapsed, sums, gather_object)
            self._save_checkpoint(self.run.last_checkpoint, optimizer, scheduler, position)
        if stop:
            raise TrainingInterrupted(stop)
        self.record.progress(self.state, epoch, done)

    # -------------------------------------------------------------- finish
    def _finish(self, wall_s: float) -> dict:
        """Evaluate the best checkpoint on val and test; write predictions, PNGs and the summary."""
        cfg, acc, run, st = self.cfg, self.acc, self.run, self.state
        self.model.load_state_dict(run.load_best()["model"])
        if cfg.train.channels_last:  # evaluated as brainmri-predict and -evaluate load it: the default layout
            self.model.to(memory_format=torch.contiguous_format)
        acc.free_memory()
        self.ddp_model, self.to_input = acc.prepare(self.model), self.normalize
        summary = self.record.summary(st, self.data.split, acc.num_processes, wall_s)
        for split in ("val", "test"):
            loader = self.data.loaders.get(split)
            if loader is not None:
                summary.update(evaluate_split(split, self.ddp_model, loader, acc, self.classes,
                                              cast(Any, loader.dataset).samples, run, self.normalize,
                                              f"{cfg.recipe} seed {cfg.seed}: {split} (best epoch {st.best_epoch})",
                                              cfg.eval.tta))
        summary["config"] = cfg.to_dict()
        if cfg.train.compile:  # what the run got: compiled, or eager after the warning
            summary["compiled"] = self.forward.compiled
        self.record.finish(summary, st)
        acc.wait_for_everyone()
        return summary


def fit(cfg: RunConfig) -> dict:
    """Train ``cfg`` to completion (resuming its run directory if it has a checkpoint).

    Returns:
        The summary dict, also written into the run directory (``RunDir.write_summary``).
    Example:
        >>> summary = fit(load_config("configs/baseline_cnn.yaml", ["train.epochs=2"]))
    """
    return Engine(cfg).fit()
