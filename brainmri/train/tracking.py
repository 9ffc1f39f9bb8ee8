"""Logging and Weights & Biases (rank 0 only); the run directory itself is brainmri.rundir."""

from __future__ import annotations

import logging
import os
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

from brainmri.rundir import RunDir

log = logging.getLogger("brainmri")


def setup_logging(log_file: Path | None, is_main: bool) -> None:
    """Log to stderr and ``log_file`` (the run's ``RunDir.log_file``) on rank 0; other ranks log warnings only."""
    for handler in list(log.handlers):  # a second fit() in one process must not leak file handles
        handler.close()
        log.removeHandler(handler)
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    log.propagate = False
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(fmt)
    log.addHandler(stream)
    if log_file is not None and is_main:
        fh = _LogFile(log_file)
        fh.setFormatter(fmt)
        log.addHandler(fh)


class _LogFile(logging.FileHandler):
    """The run's log file; when it cannot be written (full disk) it falls silent instead of printing
    a traceback per record (the run's own error says what happened)."""

    def handleError(self, record: logging.LogRecord) -> None:
        self.setLevel(logging.CRITICAL + 1)


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


_prepared: threading.Thread | None = None  # the thread that imports W&B and starts its service


def _wandb_wanted(cfg, enabled: bool = True) -> bool:
    return enabled and cfg.wandb.enabled and os.environ.get("WANDB_MODE") != "disabled"


def _prepare_environment() -> None:
    """With no WANDB_MODE and no API key a run is written offline; the run's W&B service is its own.

    W&B tells child processes where its service listens through ``WANDB_SERVICE`` (the token names the
    process that started the service). A run started from a process that had used W&B (a notebook, a
    script that trains in-process, sbatch's copy of the submitter's environment) would otherwise put its
    stream in that process's service, which outlives a SIGKILL of the run and then refuses the resumed
    run's id ("run ID ... is in use") or drops its connection on pre-emption.
    """
    if not os.environ.get("WANDB_MODE") and not _has_api_key():
        os.environ["WANDB_MODE"] = "offline"
    token = os.environ.get("WANDB_SERVICE", "").split("-")
    if token != [""] and (len(token) < 2 or token[1] != str(os.getpid())):
        del os.environ["WANDB_SERVICE"]


_LAUNCH_INPUTS = "wandb.sdk.launch.inputs.internal"


def _skip_unstaged_launch_inputs() -> None:
    """``wandb.init`` ends by applying the W&B Launch inputs this process staged. They can only have been
    staged through that module, and importing it pulls in all of W&B Launch and its public API (about
    0.45 s per run, measured in benchmarks/RESULTS.md). Where the module was never imported there is
    nothing to apply, so the import is skipped; a process that did import it gets W&B's own behaviour."""
    from wandb.sdk.wandb_run import Run

    original = Run._detect_and_apply_job_inputs
    if getattr(original, "_brainmri", False):
        return

    def detect_and_apply_job_inputs(self) -> None:  # noqa: ANN001 -- W&B's Run
        if _LAUNCH_INPUTS in sys.modules:
            original(self)

    detect_and_apply_job_inputs._brainmri = True  # type: ignore[attr-defined]
    Run._detect_and_apply_job_inputs = detect_and_apply_job_inputs  # type: ignore[method-assign]


def _start_service() -> None:
    try:
        import wandb

        _skip_unstaged_launch_inputs()
        wandb.setup()
    except Exception as exc:  # noqa: BLE001 -- wandb.init says what is wrong, in the main thread
        log.debug("W&B could not be prepared ahead: %s", exc)


def prepare_wandb(cfg) -> None:
    """Import W&B and start its service in the background, so that :class:`WandbRun` does not wait for
    them (a run's set-up, meanwhile, reads its data and builds its model)."""
    global _prepared
    if not _wandb_wanted(cfg) or (_prepared is not None and _prepared.is_alive()):
        return
    _prepare_environment()
    _prepared = threading.Thread(target=_start_service, name="brainmri-wandb-setup", daemon=True)
    _prepared.start()


def wandb_prepared() -> None:
    """Wait for :func:`prepare_wandb`'s background work (before a process leaves)."""
    if _prepared is not None:
        _prepared.join()


def logged_epochs(wandb_dir: Path, run_id: str) -> set[int]:
    """Epochs in the history of the pieces of W&B run ``run_id`` under ``wandb_dir`` (a torn tail is ignored)."""
    from brainmri.results.wandb_offline import find_wandb_files, read_wandb_file

    epochs: set[int] = set()
    for path in find_wandb_files(wandb_dir) if wandb_dir.is_dir() else []:
        if path.name == f"run-{run_id}.wandb":
            epochs.update(int(r["epoch"]) for r in read_wandb_file(path)["history"] if "epoch" in r)
    return epochs


class WandbRun:
    """A W&B run on rank 0; a no-op elsewhere or when disabled.

    Honours ``WANDB_MODE``; with no mode set and no API key the run is written offline.
    ``run_id`` is stored in the checkpoint so a resumed job continues the same W&B run.

    History is one row per epoch at ``step = epoch``. A resumed run first reads the pieces of its
    run already on disk (``<run_dir>/wandb/*/run-<id>.wandb``, written in online mode too): epochs
    they hold are never logged again, and :meth:`backfill` logs the run directory's metrics rows they miss
    (a SIGKILL can cut the W&B service off before it wrote them). So every epoch appears exactly
    once, in increasing steps.
    """

    def __init__(self, cfg, run: RunDir, run_id: str | None, enabled: bool):
        self.run = None
        self.run_id = run_id
        self.logged: set[int] = set()  # epochs the W&B run already holds
        if not _wandb_wanted(cfg, enabled):
            return
        if _prepared is not None:
            _prepared.join()
        import wandb

        _skip_unstaged_launch_inputs()
        _prepare_environment()
        self.run_id = run_id or uuid.uuid4().hex[:8]
        if run_id:
            self.logged = logged_epochs(run.wandb_dir, run_id)
        self.run = wandb.init(
            project=cfg.wandb.project, entity=cfg.wandb.entity, group=cfg.wandb.group,
            job_type=cfg.wandb.job_type or cfg.recipe, name=cfg.wandb.name or run.path.name,
            tags=list(cfg.wandb.tags), config=cfg.to_dict(), id=self.run_id, resume="allow",
            dir=str(run.path), settings=wandb.Settings(console="off", x_disable_stats=True,
                                                       silent=not cfg.wandb.verbose),
        )
        # the run's summary shows the best value of the monitored metric while it trains; at the end
        # the engine writes the best checkpoint's metrics over it (the same number for the monitor)
        self.run.define_metric(cfg.train.monitor, summary=cfg.train.monitor_mode)
        log.info("%s", self.where())

    def where(self) -> str:
        """One line: the run id, the mode and where its data goes (``wandb.verbose: true`` for W&B's own output)."""
        mode, run = os.environ.get("WANDB_MODE", "online"), self.run
        if run is None:
            return f"W&B off (run {self.run_id})"
        if mode in ("offline", "dryrun"):
            sync_dir = getattr(run.settings, "sync_dir", None) or run.dir
            return f"W&B run {self.run_id} (offline): wandb sync {sync_dir}"
        return f"W&B run {self.run_id} ({mode}): {getattr(run, 'url', None) or run.dir}"

    def log(self, row: dict[str, Any], step: int) -> None:
        """Log an epoch's row at ``step`` (its epoch) unless the run already holds that epoch.

        The row is committed by the next epoch's row or at the end (so the finished run's result
        media join the last epoch's row instead of taking a step of their own, and a later extension
        continues at epoch + 1); a row a kill cut off is backfilled on resume (:meth:`backfill`).
        """
        if self.run is not None and step not in self.logged:
            self.run.log({k: v for k, v in row.items() if v is not None}, step=step, commit=False)
            self.logged.add(step)

    def backfill(self, rows: list[dict[str, Any]]) -> int:
        """Log the run directory's epoch rows the W&B run is missing, in order; returns how many."""
        missing = [r for r in rows if "epoch" in r and r["epoch"] not in self.logged]
        if self.run is None or not missing:
            return 0
        for row in sorted(missing, key=lambda r: r["epoch"]):
            self.log(row, step=row["epoch"])
        log.info("W&B run %s: logged %d epoch row(s) it had missed", self.run_id, len(missing))
        return len(missing)

    def log_image(self, key: str, path: Path) -> None:
        """An image in the run's summary (it takes no history step, so a later extension continues at epoch + 1)."""
        if self.run is not None:
            import wandb

            self.run.summary[key] = wandb.Image(str(path))

    def log_results(self, run: RunDir, summary: dict[str, Any]) -> None:
        """Confusion-matrix plots, per-class and predictions tables of a finished run (brainmri.results.wandb_results).

        Tables with images are W&B run artifacts; their files are staged under ``run.wandb_dir``
        (unless ``WANDB_DATA_DIR`` says otherwise), so an offline run directory holds everything
        ``wandb sync`` needs. A failure here is a warning: the run directory is the record.
        """
        if self.run is None:
            return
        from brainmri.results.wandb_results import results_media

        default_dir = "WANDB_DATA_DIR" not in os.environ
        if default_dir:
            os.environ["WANDB_DATA_DIR"] = str(run.wandb_dir)
        try:
            step = summary.get("epochs_run") or (max(self.logged) if self.logged else None)
            self.run.log(results_media(run, summary), step=step, commit=True)
        except Exception as exc:  # media are a view of the run directory, never worth failing a run over
            log.warning("W&B result tables not logged: %s: %s", type(exc).__name__, exc)
        finally:
            if default_dir:
                os.environ.pop("WANDB_DATA_DIR", None)

    def summary(self, values: dict[str, Any]) -> None:
        if self.run is not None:
            for k, v in values.items():
                if isinstance(v, (int, float, str, bool)) or v is None:
                    self.run.summary[k] = v

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None
