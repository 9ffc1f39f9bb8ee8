"""The run record: a training run's bookkeeping in its run directory and W&B, on rank 0.

The engine trains; :class:`RunRecord` keeps the books, so the loop never asks which rank it is
on: the run directory's lock, the log file, whether the directory already holds a finished run
(returned as is, or extended) or an interrupted one (resumable with this config?), the resolved
config, the split record and the skipped-file report, the run's status (running, with in-epoch
progress; interrupted / preempted with the signal; pruned by a search driver; failed with the error;
finished), the search driver's prune request, the metrics rows, the W&B run (resumed, backfilled,
finished) and the summary. Every method is a no-op on ranks other than 0 where it writes.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from typing import TYPE_CHECKING, Any

from brainmri.atomic import EX_TEMPFAIL, free_bytes, human_bytes, is_disk_full
from brainmri.optim import OPTIMIZER_STATES
from brainmri.rundir import NO_SPACE, RunDir, acquire_lock
from brainmri.train.resume import check_resumable, extends_finished
from brainmri.train.signals import TrainingInterrupted, TrialPruned
from brainmri.train.tracking import WandbRun, log, prepare_wandb, setup_logging
from brainmri.version import code_version

if TYPE_CHECKING:
    from filelock import BaseFileLock

    from brainmri.train.checkpoint import EpochTotals

PROGRESS_EVERY_S = 1.0  # the status's in-epoch progress is rewritten at most this often (and at an epoch's first step)


def duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else (f"{m}m{s:02d}s" if m else f"{s}s")


def epoch_etas(cfg, epoch: int, batch: int, total: int | None, elapsed: float) -> dict:
    """Seconds left in this epoch and in the run (later epochs assumed as long as this one's training part)."""
    if not total or batch <= 0 or elapsed <= 0:
        return {}
    epoch_s = elapsed / batch * total
    left = max(epoch_s - elapsed, 0.0)
    epochs_after = max(sum(p.epochs for p in cfg.phases) - epoch, 0)
    return {"epoch_eta_s": round(left, 1), "run_eta_s": round(left + epochs_after * epoch_s, 1)}


def progress_line(cfg, epoch: int, batch: int, total: int | None, elapsed: float, totals: EpochTotals,
                  world_size: int) -> str:
    """``epoch 2/10 batch 120/400: 85.3 images/s, loss 0.4321, epoch ETA 3m20s, run ETA 41m05s``."""
    loss_sum, count = float(totals.loss_sum), float(totals.images)  # this rank's; a sync point, when a line is due
    images = count * world_size
    eta = epoch_etas(cfg, epoch, batch, total, elapsed)
    epochs = sum(p.epochs for p in cfg.phases)
    return (f"epoch {epoch}/{epochs} batch {batch}/{total or '?'}: {images / max(elapsed, 1e-9):.1f} images/s, "
            f"loss {loss_sum / max(count, 1):.4f}"
            + (f", epoch ETA {duration(eta['epoch_eta_s'])}, run ETA {duration(eta['run_eta_s'])}" if eta else ""))


class RunRecord:
    def __init__(self, cfg, run: RunDir, is_main: bool):
        self.cfg, self.run, self.is_main = cfg, run, is_main
        self.lock: BaseFileLock | None = None  # the run directory's, while held
        self.wb: WandbRun | None = None
        self._progress_at, self._progress_epoch = time.perf_counter(), 0
        self._line_at = time.perf_counter()  # when the last progress line was logged
        self._space_checked = False
        self._manifest: dict | None = None  # the split record's manifest, for the summary (computed once)

    @property
    def wandb(self) -> WandbRun:
        """The run's W&B side (set by ``start``)."""
        if self.wb is None:
            raise RuntimeError("RunRecord.start() has not run")
        return self.wb

    # ------------------------------------------------------------------ opening
    def acquire(self) -> None:
        """Create the directory and take its lock (rank 0): one writer per run directory."""
        if self.is_main:
            self.run.create()
            self.lock = acquire_lock(self.run)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def finished(self) -> tuple[dict | None, bool]:
        """(the summary of a finished run to return as is, or None; whether to extend a finished run)."""
        setup_logging(self.run.log_file, self.is_main)
        extend = self.run.is_finished() and extends_finished(self.cfg, self.run)
        if self.run.is_finished() and not extend:
            log.info("%s is finished; returning its summary", self.run.summary_file)
            return self.run.read_summary(), False
        return None, extend

    def begin(self, extend: bool) -> None:
        """After every rank decided: keep an extended run's summary aside, check a resume, save the config."""
        if self.is_main:
            prepare_wandb(self.cfg)  # W&B's import and service start overlap the data and model set-up
        if extend and self.is_main:
            self.run.archive_summary()
            log.info("extending the finished run %s (its previous summary is kept beside it)", self.run.path)
        if self.run.has_checkpoint():
            check_resumable(self.cfg, self.run)
            if self.is_main and self.run.read_status().get("status") == "pruned":
                # the driver's request was carried out; resuming a pruned run by hand continues it
                self.run.withdraw_prune()

    def save_config(self) -> None:
        if self.is_main:
            self.run.save_config(self.cfg.to_dict())

    def data(self, split, root) -> None:
        """The split record (every file of every part) and the skipped-file report."""
        log.info("data %s: %d train / %d val / %d test images, classes %s", root, len(split.train),
                 len(split.val), len(split.test), split.classes)
        if not self.is_main:
            return
        self.run.write_skipped(split.skipped)
        record = split.record()
        self._manifest = record["manifest"]
        self.run.write_split(record)
        if split.skipped:
            what = "manifest row(s)" if split.source else "unreadable image(s)"
            log.warning("skipped %d %s; see %s: %s", len(split.skipped), what, self.run.skipped_file,
                        ", ".join(s["path"] for s in split.skipped[:5]))

    def skipped_at_end(self, split) -> None:
        """Every skipped file or manifest row (row number, path, reason), at the end of the log."""
        if split.skipped:
            log.warning("%d file(s) or manifest row(s) were skipped (also in %s):", len(split.skipped),
                        self.run.skipped_file)
            for s in split.skipped:
                log.warning("  %s%s: %s", f"row {s['row']} " if s.get("row") is not None else "", s["path"],
                            s["error"])

    def start(self, state) -> None:
        """Rows after the checkpoint we start from are redone; W&B resumes its run and logs what it missed."""
        if self.is_main:
            self.run.truncate_metrics(state.epoch)
        self.wb = WandbRun(self.cfg, self.run, state.wandb_id, self.is_main)
        state.wandb_id = self.wb.run_id
        if self.is_main:
            self.wb.backfill(self.run.read_metrics())
            self.run.set_status("running", state.epoch)

    # ------------------------------------------------------------------ training
    def progress(self, state, epoch: int, batch: int, total: int | None = None, elapsed: float = 0.0,
                 totals: EpochTotals | None = None, world_size: int = 1) -> None:
        """The run's status: where the epoch stands (about once a second), with its batch count and ETAs; away
        from a terminal also a log line every ``train.log_interval_s`` (:func:`progress_line`)."""
        now = time.perf_counter()
        if not self.is_main:
            return
        if self._progress_epoch != epoch or now - self._progress_at >= PROGRESS_EVERY_S:
            if self._progress_epoch != epoch:
                self._line_at = now
            self._progress_epoch, self._progress_at = epoch, now
            where: dict[str, Any] = {"in_epoch": epoch, "batch": batch, "step": state.step,
                                     "epochs": sum(p.epochs for p in self.cfg.phases)}
            if total:
                where["batches"] = total
            where.update(epoch_etas(self.cfg, epoch, batch, total, elapsed))
            self.run.set_status("running", state.epoch, **where)
        every = self.cfg.train.log_interval_s
        if every > 0 and totals is not None and not sys.stderr.isatty() and now - self._line_at >= every:
            self._line_at = now
            log.info("%s", progress_line(self.cfg, epoch, batch, total, elapsed, totals, world_size))

    def epoch(self, row: dict) -> None:
        if self.is_main:
            self.run.append_metrics(row)
        self.wandb.log(row, step=row["epoch"])

    def prune_requested(self, epoch: int) -> bool:
        """Did a search driver ask this run to stop after ``epoch`` (rank 0 reads it; the ranks agree on
        it)? Not after the last planned epoch: a run that trained them all finishes."""
        last = sum(phase.epochs for phase in self.cfg.phases)
        return self.is_main and epoch < last and self.run.prune_request() is not None

    # ------------------------------------------------------------------ endings
    def summary(self, state, split, world_size: int, wall_s: float) -> dict:
        """The summary's run facts (the evaluation's metrics and the config are added to it)."""
        cfg = self.cfg
        return {"status": "finished", "run_id": self.run.path.name, "run_dir": str(self.run.path),
                "recipe": cfg.recipe, "seed": cfg.seed, "wandb_id": state.wandb_id, "classes": split.classes,
                "monitor": cfg.train.monitor, "best_epoch": state.best_epoch, "epochs_run": state.epoch,
                "steps": state.step, "world_size": world_size, "wall_time_s": wall_s,
                "train_time_s": state.train_time_s, "images_per_s": state.images_seen / max(state.train_time_s, 1e-9),
                "skipped_files": len(split.skipped), "data_manifest": self._manifest or split.record()["manifest"],
                "best_weights": state.best_weights, "code_version": code_version(), **self._best_epoch_val(state)}

    def _best_epoch_val(self, state) -> dict:
        """With train.ema: the monitored validation metric of the raw and of the averaged weights at the best epoch."""
        if not self.cfg.train.ema:
            return {}
        key = self.cfg.train.monitor.split("/", 1)[1]
        row = next((r for r in self.run.epoch_rows() if r["epoch"] == state.best_epoch), {})
        return {"best_epoch_val": {"raw": row.get(f"val/{key}"), "ema": row.get(f"val_ema/{key}")}}

    def finish(self, summary: dict, state) -> None:
        """The best checkpoint's evaluation: W&B media and summary, the closing metrics row, the summary."""
        if self.is_main:
            for split in ("val", "test"):
                if f"{split}/acc" in summary:
                    self.wandb.log_image(f"{split}/confusion_matrix", self.run.confusion_png(split))
            self.wandb.log_results(self.run, summary)
            self.wandb.summary({k: v for k, v in summary.items() if k != "config"})
            self.run.append_metrics({"evaluation": "best_checkpoint", "best_epoch": state.best_epoch,
                                     "epochs_run": state.epoch,
                                     **{k: v for k, v in summary.items() if k.startswith(("val/", "test/"))}})
            self.run.write_summary(summary)
            self.run.set_status("finished", state.epoch)
            log.info("finished %s: val/acc %.4f%s", self.run.path, summary["val/acc"],
                     f" test/acc {summary['test/acc']:.4f}" if "test/acc" in summary else "")

    def close(self) -> None:
        self.wandb.finish()

    def stopped(self, stop: TrainingInterrupted | TrialPruned, state) -> None:
        """A clean stop: a stop signal (``TrainingInterrupted``) or a search driver's prune (``TrialPruned``)."""
        if isinstance(stop, TrialPruned):
            self.pruned(state)
        else:
            self.interrupted(stop.signum, stop.exit_code, state)

    def interrupted(self, signum: int, exit_code: int, state) -> None:
        name = signal.Signals(signum).name
        if self.is_main:
            self.run.set_status("preempted" if os.environ.get("SLURM_JOB_ID") else "interrupted",
                                state.epoch, signal=name)
        log.warning("%s: stopped after step %d; resume with --resume %s", name, state.step, self.run.path)
        self._finish_wandb(exit_code, name)

    def pruned(self, state) -> None:
        """The run's status says pruned after the epoch just written (its checkpoints are kept); W&B finishes."""
        request = self.run.prune_request() if self.is_main else None
        if self.is_main:
            self.run.set_status("pruned", state.epoch, request=request)
        log.info("pruned by the search driver after epoch %d (%s)", state.epoch, (request or {}).get("reason", ""))
        self._finish_wandb(0, "pruning")

    def failed(self, error: BaseException, state) -> None:
        """The run's status says failed with the error; a full disk or quota says why in one line
        (``cause: no space``), written after the partial file is gone, in place as a last resort."""
        if is_disk_full(error):
            reason = getattr(error, "reason", None) or str(error)
            if self.is_main:
                try:
                    self.run.set_status("failed", state.epoch, str(error), last_resort=True, cause=NO_SPACE,
                                        reason=reason)
                except OSError as e:  # said with the run's one error line (brainmri.cli.train)
                    note = f"{self.run.status_file.name} could not be written either ({e})"
                    error.status_note = note  # type: ignore[attr-defined]  # brainmri.cli.errors reads it
            self._finish_wandb(EX_TEMPFAIL, "a full disk")
            return
        if self.is_main:
            self.run.set_status("failed", state.epoch, f"{type(error).__name__}: {error}\n{traceback.format_exc()}")
        self._finish_wandb(1, type(error).__name__)

    def check_space(self, model, optim_name: str) -> None:
        """Before the first epoch: warn when the run directory's file system has less free space than
        one checkpoint pair needs (the new last checkpoint beside the previous one, and the best checkpoint)."""
        if not self.is_main or self._space_checked:
            return
        self._space_checked = True
        weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        trained = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
        per_param = OPTIMIZER_STATES.get(optim_name, 2)  # state tensors per trained parameter
        need = 2 * (weights + per_param * trained) + weights
        free = free_bytes(self.run.path)
        if free < need:
            log.warning("the file system of %s has %s free; one checkpoint pair needs about %s: the run may stop "
                        "with 'no space left' (exit %d) and resume once space is freed", self.run.path,
                        human_bytes(free), human_bytes(need), EX_TEMPFAIL)

    def _finish_wandb(self, exit_code: int, why: str) -> None:
        try:
            if self.wb is not None:
                self.wb.finish(exit_code=exit_code)
        except Exception as cleanup:  # e.g. W&B's service already got the pre-emption SIGTERM
            log.warning("W&B finish failed after %s: %s", why, cleanup)
