"""The training engine: one loop for every recipe, on top of accelerate.

``fit(cfg)`` trains the phases of a config (DDP on any number of processes, bf16/fp16 mixed
precision, gradient accumulation, ReduceLROnPlateau, early stopping, best and last checkpoints,
mid-epoch checkpoints on a timer or a stop signal), evaluates the best checkpoint on val and test
(``brainmri.train.evaluate``), and writes the run directory. A run directory that already holds
``checkpoints/last.pt`` is resumed exactly (inside the epoch when it stopped there); one that holds
a finished ``summary.json`` is returned as is, or extended when the config only adds epochs to its
last phase. What a checkpoint holds is ``brainmri.train.checkpoint``'s. The engine knows nothing about
SLURM or sweeps.
"""

from __future__ import annotations

import itertools
import math
import os
import signal
import sys
import time
import traceback
from pathlib import Path

import torch
from accelerate.utils import gather_object, set_seed
from tqdm.auto import tqdm

from brainmri.train.accel import make_accelerator, reset_accelerator
from brainmri.train.checkpoint import (
    TrainerState, capture_position, make_checkpoint, restore_optimization, seed_epoch, set_rng_state,
)
from brainmri.config import ConfigError, RunConfig
from brainmri.train.evaluate import evaluate_split
from brainmri.data.datasets import (
    EpochSampler, EpochSeeded, ImageDataset, build_split, class_weights, make_loader, resolve_data_root,
)
from brainmri.models.registry import (
    assign_groups, build_model, freeze_frozen_norms, resolve_groups, set_trainable, supports_feature_cache,
)
from brainmri.optim import build_optimizer, build_scheduler, replan_cosine
from brainmri.train.resume import check_resumable, default_run_dir, extends_finished
from brainmri.rundir import CheckpointError, RunDir, acquire_lock
from brainmri.train.signals import StopSignals, TrainingInterrupted
from brainmri.train.tracking import WandbRun, log, setup_logging
from brainmri.data.transforms import Decoder, batch_normalizer, eval_transform, train_transform


def _better(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    if value is None or math.isnan(value):
        return False
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


PROGRESS_EVERY_S = 1.0  # status.json's in-epoch progress is rewritten at most this often (and at an epoch's first step)


class Engine:
    """Holds what one ``fit`` needs; ``fit(cfg)`` below is the public entry point."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.acc = make_accelerator(cfg.train.mixed_precision, cfg.train.grad_accum)
        self.run = RunDir(cfg.run_dir or default_run_dir(cfg))
        self.state = TrainerState()
        self.feature_train = None  # the FeatureDataset while a phase trains the head on cached features
        self.signals = StopSignals()
        self._last_save = self._last_progress = time.perf_counter()  # last last.pt / status.json progress write
        self._progress_epoch = 0

    # ----------------------------------------------------------------- setup
    def _setup_data(self) -> None:
        cfg, acc = self.cfg, self.acc
        with acc.main_process_first():  # rank 0 generates/indexes; the others then read its cache
            root = resolve_data_root(cfg)
            self.split = build_split(cfg.data, root)
        self.classes = self.split.classes
        decoder = Decoder(cfg.data.input_size, cfg.data.input_channels)
        sources = {}
        if cfg.data.cache == "decoded":
            from brainmri.data.cache import DecodedCache

            with acc.main_process_first():
                for name in ("train", "val", "test"):
                    samples = getattr(self.split, name)
                    if samples:
                        sources[name] = DecodedCache.build(samples, decoder, cfg.data.cache_dir)
        self.datasets = {
            "train": ImageDataset(self.split.train, decoder, train_transform(cfg.data), sources.get("train")),
            "val": ImageDataset(self.split.val, decoder, eval_transform(cfg.data), sources.get("val")),
            "test": ImageDataset(self.split.test, decoder, eval_transform(cfg.data), sources.get("test")),
        }
        if not self.split.val:
            raise ValueError("data.val_fraction=0 leaves no validation split; the engine needs one")
        self.normalize = batch_normalizer(cfg.data)
        self.to_input = self.normalize
        self.sampler = EpochSampler(len(self.split.train), cfg.seed)
        bs = cfg.data.batch_size
        ebs = cfg.data.eval_batch_size or bs
        self.train_seeded = EpochSeeded(self.datasets["train"], cfg.seed)  # augmentation seeded per (epoch, image)
        self.train_loader = make_loader(self.train_seeded, bs, cfg.data.num_workers, self.sampler)
        self.val_loader = make_loader(self.datasets["val"], ebs, cfg.data.num_workers)
        self.test_loader = make_loader(self.datasets["test"], ebs, cfg.data.num_workers) if self.split.test else None
        if acc.is_main_process:
            self.run.write_skipped(self.split.skipped)
            self.run.write_split(self.split.record())
            if self.split.skipped:
                log.warning("skipped %d unreadable image(s); see %s: %s", len(self.split.skipped),
                            self.run.skipped_file,
                            ", ".join(s["path"] for s in self.split.skipped[:5]))
        log.info("data %s: %d train / %d val / %d test images, classes %s", root, len(self.split.train),
                 len(self.split.val), len(self.split.test), self.classes)

    def _setup_model(self) -> None:
        cfg = self.cfg
        self.model = build_model(cfg.model, len(self.classes), cfg.data.input_channels, cfg.data.input_size)
        weight = class_weights(self.split.train, len(self.classes)) if cfg.data.class_weights else None
        self.criterion = torch.nn.CrossEntropyLoss(weight=weight.to(self.acc.device) if weight is not None else None)
        self.model.to(self.acc.device)

    def _build_optimizer(self, phase):
        cfg = self.cfg
        groups = assign_groups(self.model, phase.train)
        trained = list(groups)
        unknown = sorted(set(phase.lr_mult) - set(trained))
        if unknown:
            raise ConfigError(f"phase {phase.name!r}: lr_mult for {unknown[0]!r}, which the phase does not train "
                              f"(it trains {', '.join(trained)})")
        param_groups = []
        for name in trained:
            lr = cfg.optim.lr * phase.lr_mult.get(name, 1.0)
            param_groups.append({"name": name, "params": groups[name], "lr": lr})
        optimizer = build_optimizer(cfg.optim, param_groups)
        scheduler = build_scheduler(cfg.scheduler, optimizer, epochs=phase.epochs)
        return optimizer, scheduler

    # ------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, path: Path, optimizer=None, scheduler=None, position: dict | None = None) -> None:
        """Rank 0 writes ``path`` atomically; every rank waits for it."""
        if self.acc.is_main_process:  # the whole net, even while only the head is wrapped
            self.run.save_checkpoint(make_checkpoint(self.model, self.state, self.classes, self.cfg.to_dict(),
                                                     optimizer, scheduler, self.acc.scaler, position), path)
        self.acc.wait_for_everyone()
        if path == self.run.last_checkpoint:
            self._last_save = time.perf_counter()

    def _load_last(self) -> dict | None:
        ckpt = self.run.load_checkpoint()  # falls back to last.prev.pt; CheckpointError if none is valid
        if ckpt is None:
            return None
        self.model.load_state_dict(ckpt["model"])
        self.state = TrainerState.from_dict(ckpt["trainer"])
        log.info("resuming %s from epoch %d (phase %d)", self.run.path, self.state.epoch, self.state.phase)
        return ckpt

    # --------------------------------------------------------------- loops
    def _train_epoch(self, optimizer, scheduler, phase_name: str, position: dict | None) -> dict[str, float]:
        """One epoch (or the rest of one, from a mid-epoch ``position``); returns its train metrics."""
        cfg, acc, st = self.cfg, self.acc, self.state
        epoch = st.epoch + 1
        self.ddp_model.train()
        freeze_frozen_norms(self.ddp_model)
        sums = torch.zeros(3, dtype=torch.float64, device=acc.device)  # loss sum, correct, count
        done, before, rng = 0, 0.0, None
        loader = self.train_loader_p
        if position is not None:  # continue inside the epoch: skip what was trained, restore the rest
            mine = position["ranks"][acc.process_index]
            done, before, rng = position["batches"], position["elapsed_s"], mine["rng"]
            sums = mine["accumulators"].to(device=acc.device, dtype=torch.float64)
            loader = acc.skip_first_batches(self.train_loader_p, done)
            acc.step = position["accum_step"]
            log.info("resuming epoch %d after %d batch(es) (step %d)", epoch, done, st.step)
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
                logits = self.ddp_model(self.to_input(x))
                loss = self.criterion(logits.float(), y)
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
                self._after_step(optimizer, scheduler, epoch, done, before + time.perf_counter() - start, sums)
        elapsed = before + time.perf_counter() - start
        totals = acc.reduce(sums, reduction="sum").tolist()
        images = int(totals[2])
        st.images_seen += images
        st.train_time_s += elapsed
        return {"train/loss": totals[0] / max(images, 1), "train/acc": totals[1] / max(images, 1),
                "time/epoch_s": elapsed, "throughput/images_per_s": images / max(elapsed, 1e-9)}

    def _after_step(self, optimizer, scheduler, epoch: int, done: int, elapsed: float, sums) -> None:
        """After an optimizer step: on a stop signal or when due, write a mid-epoch ``last.pt``."""
        every = self.cfg.train.checkpoint_every_min * 60
        due = every > 0 and time.perf_counter() - self._last_save >= every  # rank 0's clock decides
        stop, due = self._agree(due and self.acc.is_main_process)
        if stop or due:
            position = capture_position(epoch, done, self.acc.step, elapsed, sums, gather_object)
            self._save_checkpoint(self.run.last_checkpoint, optimizer, scheduler, position)
        if stop:
            raise TrainingInterrupted(stop)
        now = time.perf_counter()
        if self.acc.is_main_process and (self._progress_epoch != epoch or now - self._last_progress >= PROGRESS_EVERY_S):
            self._progress_epoch, self._last_progress = epoch, now  # status.json: where the epoch stands
            self.run.set_status("running", self.state.epoch, in_epoch=epoch, batch=done, step=self.state.step)

    def _validate(self) -> dict[str, float]:
        return evaluate_split("val", self.ddp_model, self.val_loader_p, self.acc, self.classes,
                              self.val_loader_p.dataset.samples, to_input=self.to_input)

    # ----------------------------------------------------------------- fit
    def fit(self) -> dict:
        self.lock = None
        with self.signals:  # a stop signal only sets a flag, read after each optimizer step
            return self._fit_with_handlers()

    def _agree(self, due: bool = False) -> tuple[int, bool]:
        """(stop signal, checkpoint due) agreed by every rank at this step (one all-reduce of the flags)."""
        if self.acc.num_processes == 1:
            return self.signals.signum, due
        flags = torch.tensor([float(self.signals.signum), float(due)], device=self.acc.device)
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        return int(flags[0].item()), bool(flags[1].item())

    def _check_stop(self) -> None:
        """A signal that came during evaluation: stop at this epoch's checkpoint."""
        stop, _ = self._agree()
        if stop:
            raise TrainingInterrupted(stop)

    def _fit_with_handlers(self) -> dict:
        acc, run = self.acc, self.run
        if acc.is_main_process:
            run.create()
            self.lock = acquire_lock(run)  # one writer per run directory
        acc.wait_for_everyone()
        try:
            return self._fit_locked()
        finally:
            if self.lock is not None:
                self.lock.release()

    def _fit_locked(self) -> dict:
        cfg, acc, run = self.cfg, self.acc, self.run
        setup_logging(run.log_file, acc.is_main_process)
        extend = run.is_finished() and extends_finished(cfg, run)
        if run.is_finished() and not extend:
            log.info("%s is finished; returning its summary", run.summary_file)
            return run.read_summary()
        acc.wait_for_everyone()  # every rank has decided before rank 0 moves the old summary aside
        if extend and acc.is_main_process:
            run.archive_summary()
            log.info("extending the finished run %s (its previous summary is kept beside it)", run.path)
        if run.has_checkpoint():
            check_resumable(cfg, run)
        self.wb = None
        wall_start = time.perf_counter()
        try:  # from here on, a failure is recorded in status.json (the sweep reads it)
            if acc.is_main_process:
                run.save_config(cfg.to_dict())
            set_seed(cfg.seed, deterministic=cfg.train.deterministic)
            self._setup_data()
            self._setup_model()
            ckpt = self._load_last()
            if acc.is_main_process:  # rows logged after the checkpoint we start from are redone
                run.truncate_metrics(self.state.epoch)
            self.wb = WandbRun(cfg, run, self.state.wandb_id, acc.is_main_process)
            self.state.wandb_id = self.wb.run_id
            if acc.is_main_process:
                self.wb.backfill(run.read_metrics())
            if acc.is_main_process:
                run.set_status("running", self.state.epoch)
            self._run_phases(ckpt)
            summary = self._finish(time.perf_counter() - wall_start)
        except TrainingInterrupted as e:
            name = signal.Signals(e.signum).name
            if acc.is_main_process:
                run.set_status("preempted" if os.environ.get("SLURM_JOB_ID") else "interrupted",
                               self.state.epoch, signal=name)
            log.warning("%s: stopped after step %d; resume with --resume %s", name, self.state.step, run.path)
            try:
                if self.wb is not None:
                    self.wb.finish(exit_code=e.exit_code)
            except Exception as cleanup:
                log.warning("W&B finish failed after %s: %s", name, cleanup)
            raise
        except BaseException as e:
            if acc.is_main_process:
                run.set_status("failed", self.state.epoch, f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
            try:
                if self.wb is not None:
                    self.wb.finish(exit_code=1)
            except Exception as cleanup:  # e.g. W&B's service already got the pre-emption SIGTERM
                log.warning("W&B finish failed after %s: %s", type(e).__name__, cleanup)
            raise
        finally:
            acc.end_training()  # destroys the process group, so gloo/NCCL exit cleanly
            reset_accelerator()  # another fit() in this process may use other settings
        self.wb.finish()
        return summary

    def _run_phases(self, ckpt: dict | None) -> None:
        cfg, acc = self.cfg, self.acc
        phases = cfg.phases
        # the last phase is never left: a finished run keeps its counters, so it can be extended
        while self.state.phase < len(phases):
            phase = phases[self.state.phase]
            if self.state.phase_epoch >= phase.epochs or self.state.phase_stopped:
                if self.state.phase + 1 == len(phases):
                    break
                self._next_phase()
                continue
            set_trainable(self.model, phase.train)
            optimizer, scheduler = self._build_optimizer(phase)
            acc.free_memory()  # drop the previous phase's wrappers before preparing new ones
            net, train_loader, val_loader = self.model, self.train_loader, self.val_loader
            self.feature_train, self.to_input = None, self.normalize
            if self._uses_feature_cache(phase):
                # the backbone is frozen for the whole phase: train and validate the head on its features
                net, self.to_input = self.model.fc, (lambda x: x)
                train_loader, val_loader = self._feature_loaders()
            self.ddp_model, optimizer, self.train_loader_p, self.val_loader_p = acc.prepare(
                net, optimizer, train_loader, val_loader)
            position = self._position(ckpt)
            if ckpt is not None and "optimizer" in ckpt and (self.state.phase_epoch > 0 or position is not None):
                restore_optimization(ckpt, optimizer, scheduler, acc.scaler)
                replan_cosine(scheduler, optimizer, phase.epochs)
            ckpt = None
            log.info("phase %d/%d %r: training %s for %d epoch(s)", self.state.phase + 1, len(phases),
                     phase.name, ", ".join(g["name"] for g in optimizer.param_groups), phase.epochs)
            while self.state.phase_epoch < phase.epochs and not self.state.phase_stopped:
                self._run_epoch(phase, optimizer, scheduler, position)
                position = None
                self._check_stop()  # a signal during evaluation: stop at this epoch's checkpoint

    def _position(self, ckpt: dict | None) -> dict | None:
        """The mid-epoch position of the checkpoint we resume from, if it stopped inside an epoch."""
        position = (ckpt or {}).get("position")
        if position is None or position["epoch"] != self.state.epoch + 1:
            return None
        if len(position["ranks"]) != self.acc.num_processes:
            raise CheckpointError(f"{self.run.last_checkpoint} stopped inside epoch {position['epoch']} with "
                                  f"{len(position['ranks'])} process(es); resume it with that many (now "
                                  f"{self.acc.num_processes})")
        return position

    def _uses_feature_cache(self, phase) -> bool:
        return (self.cfg.model.feature_cache_views > 0 and supports_feature_cache(self.model)
                and resolve_groups(self.model, phase.train) == ["head"])

    def _feature_loaders(self):
        """Loaders over cached backbone features (computed once per image view, then read from disk)."""
        from brainmri.train.features import FeatureDataset, cached_features

        cfg, acc = self.cfg, self.acc
        ebs = cfg.data.eval_batch_size or cfg.data.batch_size
        kw = {"batch_size": ebs, "device": acc.device, "seed": cfg.seed, "cache_dir": cfg.data.cache_dir,
              "num_workers": cfg.data.num_workers, "to_input": self.normalize}
        with acc.main_process_first():  # rank 0 computes and saves; the others load its file
            train = cached_features(self.model, self.datasets["train"], cfg.model.feature_cache_views, **kw)
            val = cached_features(self.model, self.datasets["val"], 1, **kw)
        self.feature_train = FeatureDataset(train, self.split.train)
        return (make_loader(self.feature_train, cfg.data.batch_size, 0, self.sampler),
                make_loader(FeatureDataset(val, self.split.val), ebs, 0))

    def _next_phase(self) -> None:
        self.state.phase += 1
        self.state.phase_epoch = 0
        self.state.phase_stopped = False
        self.state.es_best = None
        self.state.es_bad_epochs = 0

    def _run_epoch(self, phase, optimizer, scheduler, position: dict | None = None) -> None:
        cfg, acc, st = self.cfg, self.acc, self.state
        epoch = st.epoch + 1
        if cfg.train.fail_at_epoch is not None and epoch == cfg.train.fail_at_epoch:
            raise RuntimeError(f"train.fail_at_epoch={epoch}: simulated crash")
        seed_epoch(cfg.seed, epoch, acc.process_index)
        # accelerate's loader re-sets the sampler epoch from its own iteration counter on every
        # __iter__, and that counter restarts at 0 after a resume: pin it to the true epoch.
        self.sampler.set_epoch(epoch)
        self.train_seeded.set_epoch(epoch)
        if self.feature_train is not None:
            self.feature_train.set_epoch(epoch)
        row = {"epoch": epoch, "phase": phase.name}
        row.update(self._train_epoch(optimizer, scheduler, phase.name, position))
        val = self._validate()
        row.update({k: v for k, v in val.items() if k.count("/") == 1})
        for group in optimizer.param_groups:
            row[f"lr/{group['name']}"] = group["lr"]
        row["lr"] = optimizer.param_groups[0]["lr"]
        row["step"] = st.step

        if scheduler is not None:
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(row[cfg.scheduler.monitor])
            else:
                scheduler.step()
        improved = _better(row[cfg.train.monitor], st.best_metric, cfg.train.monitor_mode)
        if improved:
            st.best_metric, st.best_epoch = row[cfg.train.monitor], epoch
        es = cfg.train.early_stop
        if es.enabled:
            if _better(row[es.monitor], st.es_best, es.mode, es.min_delta):
                st.es_best, st.es_bad_epochs = row[es.monitor], 0
            else:
                st.es_bad_epochs += 1
                if st.es_bad_epochs >= es.patience:
                    st.phase_stopped = True
                    log.info("early stopping phase %r at epoch %d (%s did not improve for %d epochs)",
                             phase.name, epoch, es.monitor, es.patience)
        st.epoch += 1
        st.phase_epoch += 1
        if acc.is_main_process:
            self.run.append_metrics(row)
        self.wb.log(row, step=epoch)
        if improved:
            self._save_checkpoint(self.run.best_checkpoint)
        # last.pt is written after the metrics row, so a resume never loses a logged epoch
        self._save_checkpoint(self.run.last_checkpoint, optimizer, scheduler)
        log.info("epoch %d %s: train/loss %.4f train/acc %.4f val/loss %.4f val/acc %.4f%s", epoch, phase.name,
                 row["train/loss"], row["train/acc"], row["val/loss"], row["val/acc"], " *" if improved else "")

    def _finish(self, wall_s: float) -> dict:
        """Evaluate the best checkpoint on val and test; write predictions, PNGs and the summary."""
        cfg, acc, run, st = self.cfg, self.acc, self.run, self.state
        best = run.load_best()
        self.model.load_state_dict(best["model"])
        acc.free_memory()
        loaders = {"val": self.val_loader}
        if self.test_loader is not None:
            loaders["test"] = self.test_loader
        self.ddp_model, self.to_input = acc.prepare(self.model), self.normalize
        summary = {"status": "finished", "run_id": run.path.name, "run_dir": str(run.path),
                   "recipe": cfg.recipe, "seed": cfg.seed, "wandb_id": st.wandb_id, "classes": self.classes,
                   "monitor": cfg.train.monitor, "best_epoch": st.best_epoch, "epochs_run": st.epoch,
                   "steps": st.step, "world_size": acc.num_processes, "wall_time_s": wall_s, "train_time_s": st.train_time_s,
                   "images_per_s": st.images_seen / max(st.train_time_s, 1e-9),
                   "skipped_files": len(self.split.skipped)}
        for split, loader in loaders.items():
            summary.update(evaluate_split(split, self.ddp_model, loader, acc, self.classes, loader.dataset.samples,
                                          run, self.normalize, f"{cfg.recipe} seed {cfg.seed}: {split} "
                                          f"(best epoch {st.best_epoch})"))
            if acc.is_main_process:
                self.wb.log_image(f"{split}/confusion_matrix", run.confusion_png(split))
        summary["config"] = cfg.to_dict()
        if acc.is_main_process:
            self.wb.log_results(run, summary)
            self.wb.summary({k: v for k, v in summary.items() if k != "config"})
            run.append_metrics({"evaluation": "best_checkpoint", "best_epoch": st.best_epoch, "epochs_run": st.epoch,
                                **{k: v for k, v in summary.items() if k.startswith(("val/", "test/"))}})
            run.write_summary(summary)
            run.set_status("finished", st.epoch)
            log.info("finished %s: val/acc %.4f%s", run.path, summary["val/acc"],
                     f" test/acc {summary['test/acc']:.4f}" if "test/acc" in summary else "")
        acc.wait_for_everyone()
        return summary


def fit(cfg: RunConfig) -> dict:
    """Train ``cfg`` to completion (resuming its run directory if it has a checkpoint).

    Returns:
        The summary dict also written to ``<run_dir>/summary.json``.
    Example:
        >>> summary = fit(load_config("configs/baseline_cnn.yaml", ["train.epochs=2"]))
    """
    return Engine(cfg).fit()
