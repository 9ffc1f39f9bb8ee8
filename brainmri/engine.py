"""The training engine: one loop for every recipe, on top of accelerate.

``fit(cfg)`` trains the phases of a config (DDP on any number of processes, bf16/fp16 mixed
precision, gradient accumulation, ReduceLROnPlateau, early stopping, best and last checkpoints),
evaluates the best checkpoint on val and test, and writes the run directory. A run directory
that already holds ``checkpoints/last.pt`` is resumed exactly; one that holds a finished
``summary.json`` is returned as is. This is the only module that talks to accelerate; it knows
nothing about SLURM or sweeps.
"""

from __future__ import annotations

import itertools
from collections import Counter
import math
import os
import random
import signal
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from filelock import FileLock
from tqdm.auto import tqdm

from brainmri import metrics as M
from brainmri.config import (EXTENDABLE_KEYS, RUNTIME_KEYS, ConfigError, RunConfig, differing_keys, run_hash,
                             save_config)
from brainmri.leakage import BANDS, band_columns
from brainmri.data import EpochSampler, ImageDataset, build_split, class_weights, make_loader
from brainmri.models import (assign_groups, build_model, freeze_frozen_norms, resolve_groups, set_trainable,
                             supports_feature_cache)
from brainmri.optim import build_optimizer, build_scheduler
from brainmri.rundir import RunDir, acquire_lock, read_json, write_json
from brainmri.tracking import WandbRun, log, setup_logging
from brainmri.transforms import Decoder, batch_normalizer, eval_transform, train_transform


@dataclass
class TrainerState:
    """Every counter a resume needs; saved in each checkpoint."""

    epoch: int = 0  # epochs completed over all phases
    phase: int = 0
    phase_epoch: int = 0  # epochs completed in the current phase
    phase_stopped: bool = False  # early stopping ended the current phase
    step: int = 0  # optimizer steps
    best_metric: float | None = None
    best_epoch: int = 0
    es_best: float | None = None
    es_bad_epochs: int = 0
    wandb_id: str | None = None
    images_seen: int = 0
    train_time_s: float = 0.0


def _better(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    if value is None or math.isnan(value):
        return False
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


def default_run_dir(cfg: RunConfig) -> Path:
    """``runs/<recipe>-seed<seed>-<hash>``: the same run (``config.run_hash``) always maps to the same directory."""
    return Path("runs") / f"{cfg.recipe}-seed{cfg.seed}-{run_hash(cfg)}"


def resolve_data_root(cfg: RunConfig) -> Path:
    """The configured data root, or the embedded synthetic phantoms (generated once, under a lock)."""
    if cfg.data.root:
        return Path(cfg.data.root)
    from brainmri.phantoms import generate_phantoms

    s = cfg.data.synthetic
    root = Path(cfg.data.synthetic_dir) / f"n{s.n_per_class}-t{s.n_test_per_class}-px{s.render_size}-seed{s.seed}"
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root) + ".lock"):  # parallel sweep tasks share one copy
        generate_phantoms(root, n_per_class=s.n_per_class, n_test_per_class=s.n_test_per_class,
                          image_size=s.render_size, seed=s.seed)
    return root


# keys that never change what a run computes, and what a resume may change besides (brainmri.config)
NEVER_MATTERS = RUNTIME_KEYS
RESUME_MAY_CHANGE = RUNTIME_KEYS + EXTENDABLE_KEYS


def _check_same_config(cfg: RunConfig, saved: Path, may_change: tuple[str, ...] = NEVER_MATTERS,
                       what: str = "a finished run") -> None:
    """A run directory is never reused for a different config (a resume may only extend training)."""
    try:
        old = yaml.safe_load(saved.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return  # no readable config to compare with: the checkpoint itself decides
    diff = differing_keys(old, cfg.to_dict(), may_change)
    if diff:
        raise ConfigError(f"{saved.parent} already holds {what} with a different config "
                          f"(differs in {', '.join(diff[:5])}); choose another run_dir")


def _seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Reseed every RNG from (seed, epoch, rank): epoch N draws the same numbers after a resume."""
    s = (seed * 1_000_003 + epoch * 1009 + rank) % (2**31)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def _make_accelerator(cfg: RunConfig) -> Accelerator:
    precision = cfg.train.mixed_precision
    if precision == "fp16" and not torch.cuda.is_available():
        # fp16 autocast is a no-op on CPU; say so rather than silently training in fp32 under a "fp16" label
        log.warning("train.mixed_precision=fp16 needs a GPU; training in fp32 (use bf16 for CPU autocast)")
        precision = "no"
    return Accelerator(mixed_precision=precision, gradient_accumulation_steps=cfg.train.grad_accum)


class TrainingInterrupted(Exception):
    """SIGTERM/SIGINT/SIGUSR2 stopped training after a finished step; ``exit_code`` is 128+signum."""

    def __init__(self, signum: int):
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)


class Engine:
    """Holds what one ``fit`` needs; ``fit(cfg)`` below is the public entry point."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.acc = _make_accelerator(cfg)
        self.run = RunDir(cfg.run_dir or default_run_dir(cfg))
        self.state = TrainerState()
        self.feature_train = None  # the FeatureDataset while a phase trains the head on cached features

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
            from brainmri.cache import DecodedCache

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
        self.train_loader = make_loader(self.datasets["train"], bs, cfg.data.num_workers, self.sampler)
        self.val_loader = make_loader(self.datasets["val"], ebs, cfg.data.num_workers)
        self.test_loader = make_loader(self.datasets["test"], ebs, cfg.data.num_workers) if self.split.test else None
        if acc.is_main_process:
            write_json(self.run.path / "skipped_files.json",
                       {"count": len(self.split.skipped), "files": self.split.skipped})
            write_json(self.run.path / "split.json", {
                "data_root": str(root), "classes": self.classes,
                "train": len(self.split.train), "val": len(self.split.val), "test": len(self.split.test),
                "group_by": self.split.group_by, "groups": self.split.groups,
                "bands": {part: dict(Counter(s.band for s in getattr(self.split, part)))
                          for part in ("val", "test")},
            })
            if self.split.skipped:
                log.warning("skipped %d unreadable image(s); see %s: %s", len(self.split.skipped),
                            self.run.path / "skipped_files.json",
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
    def _save_checkpoint(self, path: Path, optimizer=None, scheduler=None) -> None:
        """Rank 0 writes ``path`` atomically; every rank waits for it."""
        acc = self.acc
        if acc.is_main_process:
            ckpt = {
                "model": self.model.state_dict(),  # the whole net, even while only the head is wrapped
                "trainer": asdict(self.state),
                "classes": self.classes,
                "config": self.cfg.to_dict(),
            }
            if optimizer is not None:
                ckpt["optimizer"] = optimizer.state_dict()
                ckpt["scheduler"] = scheduler.state_dict() if scheduler is not None else None
                ckpt["scaler"] = acc.scaler.state_dict() if acc.scaler is not None else None
            self.run.save_checkpoint(ckpt, path)  # last.pt keeps its predecessor as last.prev.pt
        acc.wait_for_everyone()

    def _load_last(self) -> dict | None:
        ckpt = self.run.load_checkpoint()  # falls back to last.prev.pt; CheckpointError if none is valid
        if ckpt is None:
            return None
        self.model.load_state_dict(ckpt["model"])
        self.state = TrainerState(**ckpt["trainer"])
        log.info("resuming %s from epoch %d (phase %d)", self.run.path, self.state.epoch, self.state.phase)
        return ckpt

    # --------------------------------------------------------------- loops
    def _train_epoch(self, optimizer, phase_name: str) -> dict[str, float]:
        cfg, acc = self.cfg, self.acc
        self.ddp_model.train()
        freeze_frozen_norms(self.ddp_model)
        loss_sum = torch.zeros((), device=acc.device)
        correct = torch.zeros((), device=acc.device)
        count = torch.zeros((), device=acc.device)
        max_micro = cfg.train.max_steps_per_epoch * cfg.train.grad_accum if cfg.train.max_steps_per_epoch else None
        batches = itertools.islice(self.train_loader_p, max_micro)  # islice(…, None) is the whole epoch
        bar = tqdm(batches, disable=not (acc.is_main_process and sys.stderr.isatty()), leave=False,
                   desc=f"epoch {self.state.epoch + 1} [{phase_name}]", total=max_micro or len(self.train_loader_p))
        start = time.perf_counter()
        for x, y, _ in bar:
            with acc.accumulate(self.ddp_model):
                logits = self.ddp_model(self.to_input(x))
                loss = self.criterion(logits.float(), y)
                acc.backward(loss)
                if acc.sync_gradients and cfg.optim.clip_grad_norm:
                    acc.clip_grad_norm_(self.ddp_model.parameters(), cfg.optim.clip_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if acc.sync_gradients:
                self.state.step += 1
                # on a stop signal the partial epoch is dropped: last.pt (end of the previous
                # epoch) stays, and a resume redoes this epoch exactly (per-epoch reseeding)
                self._check_stop()
            # detach: accumulating graph-bearing tensors would keep every graph alive
            loss_sum += loss.detach() * y.size(0)
            correct += (logits.detach().argmax(1) == y).sum()
            count += y.size(0)
        elapsed = time.perf_counter() - start
        totals = acc.reduce(torch.stack([loss_sum, correct, count]), reduction="sum").tolist()
        images = int(totals[2])
        self.state.images_seen += images
        self.state.train_time_s += elapsed
        return {"train/loss": totals[0] / max(images, 1), "train/acc": totals[1] / max(images, 1),
                "time/epoch_s": elapsed, "throughput/images_per_s": images / max(elapsed, 1e-9)}

    @torch.no_grad()
    def _predict(self, loader) -> tuple[np.ndarray, np.ndarray]:
        """Softmax probabilities and dataset indices, each sample counted once across ranks."""
        self.ddp_model.eval()
        probs, indices = [], []
        for x, _, idx in loader:
            logits = self.ddp_model(self.to_input(x))
            # gather_for_metrics drops the samples that even batching duplicated on the last step
            logits, idx = self.acc.gather_for_metrics((logits.float().contiguous(), idx.contiguous()))
            probs.append(torch.softmax(logits, dim=1).cpu())
            indices.append(idx.cpu())
        probs_np = torch.cat(probs).numpy()
        idx_np = torch.cat(indices).numpy()
        n = len(loader.dataset)
        if len(idx_np) != n or len(np.unique(idx_np)) != n:
            raise RuntimeError(f"evaluation covered {len(np.unique(idx_np))} unique of {n} samples "
                               f"({len(idx_np)} predictions)")
        return idx_np, probs_np

    def _evaluate(self, split: str, loader) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
        idx, probs = self._predict(loader)
        dataset = self.datasets[split]
        samples = [dataset.samples[i] for i in idx]
        labels = np.array([s.label for s in samples])
        values = M.classification_metrics(labels, probs, self.classes, split)
        # how the model does by similarity to its training images (brainmri.leakage bands)
        values.update(M.band_metrics(labels, probs, [s.band for s in samples], self.classes, split, BANDS))
        return values, idx, probs

    # ----------------------------------------------------------------- fit
    def fit(self) -> dict:
        cfg, acc, run = self.cfg, self.acc, self.run
        self.lock = None
        self._stop_signal = 0
        previous = self._install_handlers()
        try:
            return self._fit_with_handlers()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _install_handlers(self) -> dict:
        """Stop signals only set a flag; the loop stops after the current optimizer step."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            return {}
        signums = [s for s in STOP_SIGNALS
                   if not (s == signal.SIGUSR2 and os.environ.get("SUBMITIT_EXECUTOR"))]  # submitit owns USR2

        def handler(signum, frame):
            self._stop_signal = self._stop_signal or signum
            if signum == signal.SIGINT:
                signal.signal(signal.SIGINT, signal.SIG_DFL)  # a second Ctrl-C exits at once

        return {s: signal.signal(s, handler) for s in signums}

    def _check_stop(self) -> None:
        """Every rank agrees on the step at which it stops (all-reduce of the flag)."""
        flag = self._stop_signal
        if self.acc.num_processes > 1:
            t = torch.tensor([float(flag)], device=self.acc.device)
            flag = int(self.acc.reduce(t, reduction="sum").item() > 0) and (self._stop_signal or int(signal.SIGTERM))
        if flag:
            raise TrainingInterrupted(int(flag))

    def _fit_with_handlers(self) -> dict:
        cfg, acc, run = self.cfg, self.acc, self.run
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
        setup_logging(run.path, acc.is_main_process)
        if run.summary_file.exists():
            _check_same_config(cfg, run.path / "config.yaml")
            log.info("%s is finished; returning its summary", run.summary_file)
            return read_json(run.summary_file)
        if run.has_checkpoint():
            _check_same_config(cfg, run.path / "config.yaml", RESUME_MAY_CHANGE, "an interrupted run")
        self.wb = None
        wall_start = time.perf_counter()
        try:  # from here on, a failure is recorded in status.json (the sweep reads it)
            if acc.is_main_process:
                save_config(cfg, run.path / "config.yaml")
            set_seed(cfg.seed, deterministic=cfg.train.deterministic)
            self._setup_data()
            self._setup_model()
            ckpt = self._load_last()
            if acc.is_main_process:  # rows logged after the checkpoint we start from are redone
                run.truncate_metrics(self.state.epoch)
            self.wb = WandbRun(cfg, run.path, self.state.wandb_id, acc.is_main_process)
            self.state.wandb_id = self.wb.run_id
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
            # accelerate's state is a per-process singleton: reset it so another fit() in this
            # process (--cluster debug, notebooks) may use other settings
            AcceleratorState._reset_state(reset_partial_state=True)
        self.wb.finish()
        return summary

    def _run_phases(self, ckpt: dict | None) -> None:
        cfg, acc = self.cfg, self.acc
        phases = cfg.phases
        while self.state.phase < len(phases):
            phase = phases[self.state.phase]
            if self.state.phase_epoch >= phase.epochs or self.state.phase_stopped:
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
            if ckpt is not None and "optimizer" in ckpt and self.state.phase_epoch > 0:
                optimizer.load_state_dict(ckpt["optimizer"])
                if scheduler is not None and ckpt.get("scheduler"):
                    scheduler.load_state_dict(ckpt["scheduler"])
                if acc.scaler is not None and ckpt.get("scaler"):
                    acc.scaler.load_state_dict(ckpt["scaler"])
            ckpt = None
            log.info("phase %d/%d %r: training %s for %d epoch(s)", self.state.phase + 1, len(phases),
                     phase.name, ", ".join(g["name"] for g in optimizer.param_groups), phase.epochs)
            while self.state.phase_epoch < phase.epochs and not self.state.phase_stopped:
                self._run_epoch(phase, optimizer, scheduler)
                self._check_stop()  # a signal during evaluation: stop at this epoch's checkpoint
            self._next_phase()

    def _uses_feature_cache(self, phase) -> bool:
        return (self.cfg.model.feature_cache_views > 0 and supports_feature_cache(self.model)
                and resolve_groups(self.model, phase.train) == ["head"])

    def _feature_loaders(self):
        """Loaders over cached backbone features (computed once per image view, then read from disk)."""
        from brainmri.features import FeatureDataset, cached_features

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

    def _run_epoch(self, phase, optimizer, scheduler) -> None:
        cfg, acc, st = self.cfg, self.acc, self.state
        epoch = st.epoch + 1
        if cfg.train.fail_at_epoch is not None and epoch == cfg.train.fail_at_epoch:
            raise RuntimeError(f"train.fail_at_epoch={epoch}: simulated crash")
        _seed_epoch(cfg.seed, epoch, acc.process_index)
        # accelerate's loader re-sets the sampler epoch from its own iteration counter on every
        # __iter__, and that counter restarts at 0 after a resume: pin it to the true epoch.
        self.train_loader_p.set_epoch(epoch)
        if self.feature_train is not None:
            self.feature_train.set_epoch(epoch)
        row = {"epoch": epoch, "phase": phase.name}
        row.update(self._train_epoch(optimizer, phase.name))
        val, _, _ = self._evaluate("val", self.val_loader_p)
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
        if not run.best_checkpoint.exists():
            raise RuntimeError(f"no best checkpoint in {run.checkpoints}: did any epoch run?")
        best = torch.load(run.best_checkpoint, map_location="cpu", weights_only=True)
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
            values, idx, probs = self._evaluate(split, acc.prepare_data_loader(loader))
            summary.update(values)
            if acc.is_main_process:
                samples = [self.datasets[split].samples[i] for i in idx]
                labels = np.array([s.label for s in samples])
                run.write_predictions(split, samples, labels, probs, self.classes, extra=band_columns(samples))
                png = run.path / f"confusion_{split}.png"
                M.save_confusion_png(labels, probs.argmax(1), self.classes, png,
                                     f"{cfg.recipe} seed {cfg.seed}: {split} (best epoch {st.best_epoch})")
                self.wb.log_image(f"{split}/confusion_matrix", png)
        summary["config"] = cfg.to_dict()
        if acc.is_main_process:
            self.wb.summary({k: v for k, v in summary.items() if k != "config"})
            write_json(run.summary_file, summary)
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


def load_run_config(run_dir: str | Path) -> dict:
    """The resolved config saved in a run directory (for ``--resume``)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no config.yaml in {run_dir}")
    return yaml.safe_load(path.read_text())
