"""A search's Optuna studies (one per recipe) on the sweep's journal, and the check that a re-run is the same study.

One writer. The study lives in ``<sweep dir>/study.journal``: Optuna's journal storage (every
change is one JSON line; opening replays them) on :class:`StudyJournal`, a backend that appends
through ``brainmri.atomic.append_line`` (fsynced; a failed write is cut back, a line torn by a kill
is dropped when the journal is opened). Only the driver opens it, and the driver holds the sweep's
lock (``brainmri.sweep.search.lock_driver``; a second driver is one line, exit 2); trials never
touch the study: they write their own run directory, as every run does. Optuna's SQLite storage
corrupts on NFS (its locking) and its file journal has lost lines with several hosts appending to
one file over NFS; with a single appending process, and each write fsynced, neither can happen.

:class:`SearchStudy` is everything the driver asks of Optuna: the studies with their samplers
(reseeded past the trials already drawn, so a restarted driver draws new values) and pruner, the
search space as Optuna distributions, asking, reporting and telling trials, and the completed copy
of a failed trial whose run finished after all (marked ``reconciles``: Optuna never reopens an ended
trial). Rows of ``trials.json`` name a trial by its recipe and number.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from brainmri.atomic import append_line
from brainmri.sweep.expand import Sweep, SweepError
from brainmri.sweep.search import identity_differences, read_trials, study_file
from brainmri.sweepdir import TrialState

RECONCILES = "reconciles"  # user attribute of the completed copy of a failed trial whose run finished after all


def quiet_optuna():
    """Optuna, imported on first use, with its info logging and experimental-feature warnings off."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def _journal_backend():
    from optuna.storages.journal import BaseJournalBackend

    class StudyJournal(BaseJournalBackend):
        """Optuna's journal in one file, appended by one process through ``brainmri.atomic.append_line``."""

        def __init__(self, path: Path):
            self.path = Path(path)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            data = self.path.read_bytes() if self.path.exists() else b""
            if data and not data.endswith(b"\n"):  # a line torn by a kill mid-write: never applied, dropped
                with open(self.path, "r+b") as f:
                    f.truncate(data.rfind(b"\n") + 1)
                    os.fsync(f.fileno())
            self._offsets = [0]  # byte offset of each log line seen so far

        def read_logs(self, log_number_from: int):
            start = min(log_number_from, len(self._offsets) - 1)
            if not self.path.exists():
                return
            with open(self.path, "rb") as f:
                f.seek(self._offsets[start])
                for number, line in enumerate(f, start):
                    if not line.endswith(b"\n"):
                        break
                    if number + 1 == len(self._offsets):
                        self._offsets.append(self._offsets[number] + len(line))
                    if number >= log_number_from:
                        yield json.loads(line)

        def append_logs(self, logs: list[dict[str, Any]]) -> None:
            append_line(self.path, "\n".join(json.dumps(log, separators=(",", ":")) for log in logs))

    return StudyJournal


def open_storage(sweep_dir: Path):
    """The study's storage: Optuna's journal storage on the driver-only journal file."""
    from optuna.storages.journal import JournalStorage

    return JournalStorage(_journal_backend()(study_file(sweep_dir)))


class SearchStudy:
    """The Optuna studies of one search sweep, one per recipe, opened by :meth:`open`."""

    def __init__(self, sweep: Sweep):
        self.sweep, self.spec = sweep, sweep.search_spec
        self.studies: dict[str, Any] = {}
        self.distributions: dict[str, Any] = {}
        self.trial_objs: dict[tuple, Any] = {}

    def check_identity(self) -> dict | None:
        """The trial table of the study the sweep directory holds (None: none yet); a SweepError naming every
        difference when this search is another study (nothing is written before this check)."""
        old = read_trials(self.sweep.dir)
        diffs = identity_differences(old, self.spec) if old is not None else []
        if diffs:
            raise SweepError(f"{self.sweep.dir} holds another study: {'; '.join(diffs)}; nothing was changed "
                             "(run it with the study's settings, or give the sweep another name: name=...)")
        return old

    def open(self) -> dict:
        """Open (or create) one study per recipe on the journal; the space's distributions as JSON (for the
        report's importance)."""
        optuna = quiet_optuna()
        storage = open_storage(self.sweep.dir)
        self.studies = {}
        for i, recipe in enumerate(self.spec.fixed):
            study = optuna.create_study(storage=storage, study_name=f"{self.sweep.name}/{recipe}",
                                        direction=self.spec.direction, pruner=self._pruner(), load_if_exists=True)
            study.sampler = self._sampler(i, len(study.trials))
            self.studies[recipe] = study
        self.distributions = {k: self._distribution(p) for k, p in self.spec.space.items()}
        return {k: optuna.distributions.distribution_to_json(d) for k, d in self.distributions.items()}

    def _sampler(self, index: int, drawn: int):
        optuna = quiet_optuna()
        seed = self.spec.seed + 1000 * index + drawn  # a restarted driver draws past the trials it already has
        if self.spec.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.spec.startup_trials, constant_liar=True)

    def _pruner(self):
        optuna, spec = quiet_optuna(), self.spec
        if spec.pruner == "asha":
            return optuna.pruners.SuccessiveHalvingPruner(min_resource=spec.min_epochs,
                                                          reduction_factor=spec.reduction_factor)
        if spec.pruner == "median":
            return optuna.pruners.MedianPruner(n_startup_trials=spec.pruner_startup, n_warmup_steps=spec.min_epochs - 1)
        return optuna.pruners.NopPruner()

    @staticmethod
    def _distribution(param):
        d = quiet_optuna().distributions
        if param.kind == "choice":
            return d.CategoricalDistribution(list(param.choices))
        if param.kind == "int":
            return d.IntDistribution(param.low, param.high)
        return d.FloatDistribution(param.low, param.high, log=param.kind == "loguniform")

    def ask(self, recipe: str):
        """A new trial of ``recipe``'s study (the journal has it before anything else happens)."""
        trial = self.studies[recipe].ask(self.distributions)
        self.trial_objs[(recipe, trial.number)] = trial
        return trial

    def trial(self, row: dict):
        """The live Optuna trial of a row (to report to and ask the pruner)."""
        key = (row["recipe"], row["number"])
        if key not in self.trial_objs:
            optuna, study = quiet_optuna(), self.studies[row["recipe"]]
            self.trial_objs[key] = optuna.trial.Trial(study, row["trial_id"])
        return self.trial_objs[key]

    def asked(self, recipe: str) -> int:
        """Trials asked of ``recipe``'s study (a reconciled trial's completed copy is none)."""
        return sum(RECONCILES not in t.user_attrs for t in self.studies[recipe].get_trials(deepcopy=False))

    def frozen(self, row: dict):
        """The study's record of a row's trial (its state, parameters, intermediate values)."""
        return self.studies[row["recipe"]].get_trials(deepcopy=False)[row["number"]]

    def unlisted(self, known: set[tuple[str, int]]):
        """(recipe, trial) of each trial asked and not ended that ``known`` (the table's rows) lacks."""
        for recipe, study in self.studies.items():
            for t in study.get_trials(deepcopy=False):
                if (recipe, t.number) not in known and not t.state.is_finished():
                    yield recipe, t

    def tell(self, row: dict, state: str, value: float | None) -> None:
        """End a row's trial in the study: completed with ``value``, else pruned or failed (as ``state`` says);
        a trial the study already ended (a restarted driver) is left as it is."""
        optuna = quiet_optuna()
        if self.frozen(row).state.is_finished():
            return
        study = self.studies[row["recipe"]]
        if value is not None:
            study.tell(row["number"], value)
        else:
            study.tell(row["number"], state=optuna.trial.TrialState.PRUNED if state == TrialState.PRUNED
                       else optuna.trial.TrialState.FAIL)

    def failed(self, row: dict) -> bool:
        """Whether the study recorded the row's trial failed."""
        return self.frozen(row).state == quiet_optuna().trial.TrialState.FAIL

    def add_completed_copy(self, row: dict, value: float) -> None:
        """A failed trial whose run finished after all: the study gets a completed copy of it, with the row's
        epochs' values, marked ``reconciles`` (Optuna never reopens an ended trial)."""
        optuna, frozen = quiet_optuna(), self.frozen(row)
        self.studies[row["recipe"]].add_trial(optuna.trial.create_trial(
            params=frozen.params, distributions=frozen.distributions, value=value,
            intermediate_values={int(k): v for k, v in row["intermediate"].items()},
            user_attrs={RECONCILES: row["number"]}))
