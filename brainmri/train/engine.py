"""The training engine: one loop for every recipe, on top of accelerate.

``fit(cfg)`` trains the phases of a config (DDP on any number of processes, bf16/fp16 mixed
precision, gradient accumulation, best and last checkpoints, mid-epoch checkpoints on a timer or a
stop signal) and evaluates the best checkpoint on val and test (``brainmri.train.evaluate``).

The loop reads top-down: ``fit`` → ``Engine.fit`` (the run) → ``_train_phase`` (one phase, its
epochs) → ``_train_epoch`` (the steps) → ``optimizer.step``. What the phases share (data, network,
loss, weight average) is a :class:`RunParts`, built once; what one phase trains with (the prepared
module, loaders, input transform, optimizer, schedule) a :class:`brainmri.train.phases.Phase`; both
are passed down, never kept on the engine. Around the loop: the data
(``brainmri.data.datasets.build_training_data``), the epoch-end decisions — best epoch, early stop,
schedule — (``brainmri.train.policy``), what a checkpoint holds and where inside an epoch it stopped
(``brainmri.train.checkpoint``) and the run's bookkeeping in its directory and W&B
(``brainmri.train.record``). A run directory that already holds a last checkpoint is resumed exactly
(inside the epoch when it stopped there); a search driver's prune request stops it at the next epoch
end (``TrialPruned``, status ``pruned``); one that holds a finished summary is returned as is, or
extended when the config only adds epochs to its last phase. The engine knows nothing about SLURM
or sweeps.
"""

from __future__ import annotations

import gc
import itertools
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from accelerate.utils import gather_object, set_seed
from torch import nn
from tqdm.auto import tqdm

from brainmri.config import PhaseConfig, RunConfig
from brainmri.data.datasets import TrainingData, build_training_data, class_weights
from brainmri.models.registry import build_model, freeze_frozen_norms
from brainmri.optim import replan_cosine
from brainmri.rundir import RunDir
from brainmri.train import policy
from brainmri.train.accel import TrainingForward, make_accelerator, reset_accelerator, to_channels_last
from brainmri.train.checkpoint import (
    EpochTotals,
    capture_position,
    make_checkpoint,
    restore_optimization,
    resume_inside_epoch,
    resume_position,
    seed_epoch,
    set_rng_state,
)
from brainmri.train.evaluate import evaluate_split
from brainmri.train.phases import Phase, prepare_phase
from brainmri.train.policy import TrainerState
from brainmri.train.record import RunRecord
from brainmri.train.regularise import BatchMixer, WeightEMA, objective
from brainmri.train.resume import default_run_dir
from brainmri.train.signals import StopSignals, TrainingInterrupted, TrialPruned, agree
from brainmri.train.tracking import log


@dataclass
class RunParts:
    """What every phase of a run shares: the data, the whole network and what trains it."""

    data: TrainingData
    model: nn.Module  # the whole network, never wrapped (each phase prepares what it trains)
    mixer: BatchMixer | None  # MixUp/CutMix (train.mixup, train.cutmix)
    criterion: nn.Module
    ema: WeightEMA | None  # the weights' moving average (train.ema)

    @property
    def classes(self) -> list[str]:
        return self.data.classes


class Engine:
    """One run of a config, used as ``with Engine(cfg) as engine: engine.fit()`` (see :func:`fit`): the
    ``with`` block holds the stop-signal handlers and the run directory's lock."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.acc = make_accelerator(cfg.train.mixed_precision, cfg.train.grad_accum)
        self.run = RunDir(cfg.run_dir or default_run_dir(cfg))
        self.record = RunRecord(cfg, self.run, self.acc.is_main_process)
        self.state = TrainerState()
        self.signals = StopSignals()  # a stop signal only sets a flag, read after each optimizer step
        self._last_save = time.perf_counter()  # when the last checkpoint was last written

    def __enter__(self) -> Engine:
        self.signals.__enter__()
        try:
            self.record.acquire()
            self.acc.wait_for_everyone()
        except BaseException:
            self.signals.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.record.release()
        finally:
            self.signals.__exit__(*exc)

    # ----------------------------------------------------------------- the run
    def fit(self) -> dict:
        """Train the phases left (resuming the run directory's last checkpoint) and evaluate the best
        checkpoint; a finished run's summary is returned as is."""
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
            parts = self.build()
            # what the imports and the set-up made lives to the end: the garbage collections accelerate's
            # free_memory() runs (each phase, the end) skip it instead of walking every imported module
            gc.freeze()
            ckpt = self._load_last(parts)
            self.record.start(self.state)
            forward = None  # the last phase's training forward: what train.compile got
            for spec in self._phases_left():
                forward = self._train_phase(parts, spec, ckpt, forward)
                ckpt = None  # only the first phase trained resumes from it
            summary = self._finish(parts, time.perf_counter() - wall_start, forward)
        except (TrainingInterrupted, TrialPruned) as e:  # a clean stop: checkpoints kept
            self.record.stopped(e, self.state)
            raise
        except BaseException as e:
            self.record.failed(e, self.state)
            raise
        finally:
            gc.unfreeze()
            acc.end_training()  # destroys the process group, so gloo/NCCL exit cleanly
            reset_accelerator()  # another fit() in this process may use other settings
        self.record.close()
        return summary

    def build(self) -> RunParts:
        """Read the data (and record its split), build the network, its loss and its weight average."""
        cfg, acc = self.cfg, self.acc
        data = build_training_data(cfg, acc.main_process_first)
        self.record.data(data.split, data.root)
        model = build_model(cfg.model, len(data.classes), cfg.data.input_channels, cfg.data.input_size)
        weight = class_weights(data.split.train, len(data.classes)) if cfg.data.class_weights else None
        mixer, criterion = objective(cfg, len(data.classes), weight, acc.device)
        model.to(acc.device)
        if cfg.train.channels_last:
            model.to(memory_format=torch.channels_last)
        ema = WeightEMA(model, cfg.train.ema, cfg.train.ema_warmup) if cfg.train.ema else None
        return RunParts(data, model, mixer, criterion, ema)

    def _phases_left(self) -> Iterator[PhaseConfig]:
        """The phases still to train, from the state's on; the last phase is never left: a finished run
        keeps its counters, so it can be extended."""
        phases, st = self.cfg.phases, self.state
        while st.phase < len(phases):
            if not policy.phase_done(st, phases[st.phase].epochs):
                yield phases[st.phase]  # trained to its end (or early stop) before the next look
            elif st.phase + 1 == len(phases):
                break
            else:
                policy.next_phase(st)

    # ------------------------------------------------------------------ a phase
    def _train_phase(self, parts: RunParts, spec: PhaseConfig, ckpt: dict | None,
                     previous: TrainingForward | None) -> TrainingForward:
        """Train ``spec`` to its end, from ``ckpt``'s optimizer state and position when it stopped inside it."""
        cfg, acc, st = self.cfg, self.acc, self.state
        ph = prepare_phase(parts.model, parts.data, spec, cfg, acc, previous)
        self.record.check_space(parts.model, cfg.optim.name)  # once, before the first epoch it trains
        position = resume_position(ckpt, st.epoch + 1, acc.num_processes, self.run.last_checkpoint)
        if ckpt is not None and "optimizer" in ckpt and (st.phase_epoch > 0 or position is not None):
            restore_optimization(ckpt, ph.optimizer, ph.scheduler, acc.scaler)
            replan_cosine(ph.scheduler, ph.optimizer, spec.epochs)
        log.info("phase %d/%d %r: training %s for %d epoch(s)", st.phase + 1, len(cfg.phases), spec.name,
                 ", ".join(g["name"] for g in ph.optimizer.param_groups), spec.epochs)
        while not policy.phase_done(st, spec.epochs):
            epoch = st.epoch + 1
            if cfg.train.fail_at_epoch is not None and epoch == cfg.train.fail_at_epoch:
                raise RuntimeError(f"train.fail_at_epoch={epoch}: simulated crash")
            seed_epoch(cfg.seed, epoch, acc.process_index)
            # accelerate's loader re-sets the sampler epoch from its own iteration counter on every
            # __iter__, and that counter restarts at 0 after a resume: pin it to the true epoch.
            parts.data.set_epoch(epoch)
            if ph.features is not None:
                ph.features.set_epoch(epoch)
            row = {"epoch": epoch, "phase": spec.name, **self._train_epoch(parts, ph, epoch, position)}
            position = None
            self._end_epoch(parts, ph, row)
            # a signal during evaluation, or a search driver's prune request: stop here
            stop, prune = agree(self.signals.signum, self.record.prune_requested(st.epoch), acc)
            if stop or prune:
                raise TrainingInterrupted(stop) if stop else TrialPruned(st.epoch)
        return ph.forward

    # ------------------------------------------------------------------ an epoch
    def _train_epoch(self, parts: RunParts, ph: Phase, epoch: int, position: dict | None) -> dict[str, float]:
        """One epoch (or the rest of one, from a mid-epoch ``position``); returns its train metrics."""
        cfg, acc, st = self.cfg, self.acc, self.state
        ph.net.train()
        freeze_frozen_norms(ph.net)
        begin = resume_inside_epoch(position, acc, ph.train_loader)  # inside an epoch: skip what was trained
        totals, done, rng = begin.totals, begin.batches_done, begin.rng
        begin.loader.set_epoch(epoch)
        left = max(ph.epoch_batches - done, 0) if cfg.train.max_steps_per_epoch else None
        bar = tqdm(itertools.islice(begin.loader, left), disable=not (acc.is_main_process and sys.stderr.isatty()),
                   leave=False, desc=f"epoch {epoch} [{ph.spec.name}]", initial=done, total=ph.epoch_batches)
        start = time.perf_counter()
        for x, y, _ in bar:
            if rng is not None:  # after the skipping loader drew its seed: the stream of the interrupted run
                set_rng_state(rng)
                rng = None
            with acc.accumulate(ph.net):
                inputs, target = ph.to_input(x), y
                if parts.mixer is not None and ph.features is None:  # cached features are not mixed
                    inputs, target = parts.mixer(inputs, y, epoch=epoch, step=done, rank=acc.process_index)
                if cfg.train.channels_last:
                    inputs = to_channels_last(inputs)
                logits = ph.forward(inputs)
                loss = parts.criterion(logits.float(), target)
                acc.backward(loss)
                if acc.sync_gradients and cfg.optim.clip_grad_norm:
                    acc.clip_grad_norm_(ph.net.parameters(), cfg.optim.clip_grad_norm)
                ph.optimizer.step()
                ph.optimizer.zero_grad(set_to_none=True)
            totals.add(loss, logits, y)
            done += 1
            if acc.sync_gradients:
                st.step += 1
                if parts.ema is not None:
                    parts.ema.update(parts.model)
                self._after_step(parts, ph, epoch, done, begin.elapsed_s + time.perf_counter() - start, totals)
        elapsed = begin.elapsed_s + time.perf_counter() - start
        loss_sum, correct, images = acc.reduce(totals.as_tensor(), reduction="sum").tolist()
        st.images_seen += int(images)
        st.train_time_s += elapsed
        return {"train/loss": loss_sum / max(images, 1), "train/acc": correct / max(images, 1),
                "time/epoch_s": elapsed, "throughput/images_per_s": int(images) / max(elapsed, 1e-9)}

    def _after_step(self, parts: RunParts, ph: Phase, epoch: int, done: int, elapsed: float,
                    totals: EpochTotals) -> None:
        """After an optimizer step: on a stop signal or when due, write a mid-epoch last checkpoint."""
        every = self.cfg.train.checkpoint_every_min * 60
        due = every > 0 and time.perf_counter() - self._last_save >= every  # rank 0's clock decides
        stop, due = agree(self.signals.signum, due and self.acc.is_main_process, self.acc)
        if stop or due:
            position = capture_position(epoch, done, self.acc.step, elapsed, totals, gather_object)
            self._save_checkpoint(parts, self.run.last_checkpoint, ph, position)
        if stop:
            raise TrainingInterrupted(stop)
        self.record.progress(self.state, epoch, done, total=ph.epoch_batches, elapsed=elapsed, totals=totals,
                             world_size=self.acc.num_processes)

    def _end_epoch(self, parts: RunParts, ph: Phase, row: dict) -> None:
        """Validate, step the schedule, decide best and early stop, log the row and write the checkpoints."""
        cfg, st = self.cfg, self.state
        row.update(self._validate(parts, ph, "val/", ph.net))
        if parts.ema is not None:  # the averaged weights, validated beside the raw ones
            averaged = parts.ema.module
            row.update(self._validate(parts, ph, "val_ema/", cast(nn.Module, averaged.fc) if ph.features else averaged))
        row.update({f"lr/{g['name']}": g["lr"] for g in ph.optimizer.param_groups})
        row.update(lr=ph.optimizer.param_groups[0]["lr"], step=st.step)
        policy.step_scheduler(ph.scheduler, row, cfg.scheduler.monitor)
        weights = policy.better_weights(row, cfg.train.monitor, cfg.train.monitor_mode)
        improved = policy.after_epoch(st, {**row, cfg.train.monitor: row[weights["monitor"]]}, cfg.train.monitor,
                                      cfg.train.monitor_mode, cfg.train.early_stop, ph.spec.name)
        self.record.epoch(row)
        if improved:
            st.best_weights = weights["name"]
            self._save_checkpoint(parts, self.run.best_checkpoint,
                                  weights=parts.ema.module if weights["name"] == "ema" and parts.ema else None)
        # the last checkpoint is written after the metrics row, so a resume never loses a logged epoch
        self._save_checkpoint(parts, self.run.last_checkpoint, ph)
        log.info("epoch %d %s: train/loss %.4f train/acc %.4f val/loss %.4f val/acc %.4f%s", row["epoch"],
                 ph.spec.name, row["train/loss"], row["train/acc"], row["val/loss"], row["val/acc"],
                 " *" if improved else "")

    def _validate(self, parts: RunParts, ph: Phase, prefix: str, net: nn.Module) -> dict[str, float]:
        val = evaluate_split("val", net, ph.val_loader, self.acc, parts.classes, ph.val_loader.dataset.samples,
                             to_input=ph.to_input)
        return {prefix + k[4:]: v for k, v in val.items() if k.count("/") == 1}

    # ------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, parts: RunParts, path: Path, ph: Phase | None = None, position: dict | None = None,
                         weights: nn.Module | None = None) -> None:
        """Rank 0 writes ``path`` atomically (with ``ph``: its optimizer and schedule, so it resumes;
        ``weights``: another net's, e.g. the EMA); every rank waits for it."""
        if self.acc.is_main_process:  # the whole net, even while only the head is wrapped
            optimizer, scheduler = (ph.optimizer, ph.scheduler) if ph is not None else (None, None)
            self.run.save_checkpoint(make_checkpoint(weights or parts.model, self.state, parts.classes,
                                                     self.cfg.to_dict(), optimizer, scheduler, self.acc.scaler,
                                                     position, parts.ema), path)
        self.acc.wait_for_everyone()
        if path == self.run.last_checkpoint:
            self._last_save = time.perf_counter()

    def _load_last(self, parts: RunParts) -> dict | None:
        ckpt = self.run.load_checkpoint()  # falls back to the previous checkpoint; CheckpointError if none is valid
        if ckpt is not None:
            parts.model.load_state_dict(ckpt["model"])
            self.state = TrainerState.from_dict(ckpt["trainer"])
            if parts.ema is not None and "ema" in ckpt:
                parts.ema.load_state_dict(ckpt["ema"])
            log.info("resuming %s from epoch %d (phase %d)", self.run.path, self.state.epoch, self.state.phase)
        return ckpt

    # -------------------------------------------------------------- finish
    def _finish(self, parts: RunParts, wall_s: float, forward: TrainingForward | None) -> dict:
        """Evaluate the best checkpoint on val and test; write predictions, PNGs and the summary."""
        cfg, acc, st, data = self.cfg, self.acc, self.state, parts.data
        parts.model.load_state_dict(self.run.load_best()["model"])
        if cfg.train.channels_last:  # evaluated as brainmri-predict and -evaluate load it: the default layout
            parts.model.to(memory_format=torch.contiguous_format)
        acc.free_memory()
        net = acc.prepare(parts.model)
        summary = self.record.summary(st, data.split, acc.num_processes, wall_s)
        for split in ("val", "test"):
            loader = data.loaders.get(split)
            if loader is not None:
                summary.update(evaluate_split(split, net, loader, acc, parts.classes,
                                              cast(Any, loader.dataset).samples, self.run, data.normalize,
                                              f"{cfg.recipe} seed {cfg.seed}: {split} (best epoch {st.best_epoch})",
                                              cfg.eval.tta))
        summary["config"] = cfg.to_dict()
        if cfg.train.compile:  # what the run got: compiled, or eager after the warning
            summary["compiled"] = forward is not None and forward.compiled
        self.record.skipped_at_end(data.split)
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
    with Engine(cfg) as engine:
        return engine.fit()
