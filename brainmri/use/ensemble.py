"""An ensemble of trained runs: a recipe's chosen configuration, all its folds × seeds as one model.

``Ensemble.from_runs(run_dirs, recipe, home)`` picks the members as the collector does
(``brainmri.results.collect.compare``: the configuration with the best validation metric averaged
over its (fold, seed) replicates, complete fold sets only) and loads each as a
:class:`brainmri.use.trained.TrainedRun`. The members must share classes, input size and channels
and preprocessing (else one line naming two runs). The ensemble's probabilities are the mean of
its members' softmax probabilities (:class:`EnsembleModel`).

An :class:`Ensemble` offers what prediction, evaluation and export use of a TrainedRun
(``classes``, ``cfg``, ``decoder``, ``normalize``, ``model``, ``inference()``,
``training_reference()``, ``run``), so the same code paths serve one run and an ensemble. Its
model's ``forward`` returns the log of the averaged probabilities, so the softmax those paths
apply gives the average back; its nearest-training-image search uses the union of the members'
training images (for K-fold members: the whole training pool).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from brainmri.data.files import DataError
from brainmri.results.collect import MixedDataError, compare, read_run_dir, value_label
from brainmri.rundir import RunDir
from brainmri.sweepdir import SweepDir
from brainmri.train.regularise import VIEWS, check_views
from brainmri.use.trained import Inferable, RunError, TrainedRun, TrainingReference, reference_from_splits


class EnsembleError(RunError):
    """An ensemble cannot be built (no finished configuration, members that differ); one line."""


class EnsembleModel(torch.nn.Module):
    """The members' models; ``probabilities(x)`` is the mean of their softmax outputs and
    ``forward(x)`` its log (logits whose softmax is that mean)."""

    def __init__(self, models: list[torch.nn.Module]):
        super().__init__()
        self.members = torch.nn.ModuleList(models)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.softmax(m(x).float(), dim=1) for m in self.members]).mean(dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.probabilities(x)
        return torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))


class MeanProbabilities(torch.nn.Module):
    """``EnsembleModel.probabilities`` as a module's forward (what an export computes), averaged over
    the image and the members' test-time views (``eval.tta``, ``brainmri.train.regularise.VIEWS``)."""

    def __init__(self, ensemble: EnsembleModel, views=()):
        super().__init__()
        self.ensemble, self.views = ensemble, check_views(views)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        probs = self.ensemble.probabilities(image)
        for name in self.views:
            probs = probs + self.ensemble.probabilities(VIEWS[name](image))
        return probs / (1 + len(self.views))


@dataclass
class Member:
    trained: TrainedRun
    fold: int | None
    seed: object
    summary: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.trained.run_dir.name


def _preprocessing(trained: TrainedRun) -> tuple:
    """Input size, channels, normalisation, head crop, background, margin and test-time views."""
    d = trained.cfg.data
    return (d.input_size, d.input_channels, repr(d.normalize), d.crop, d.background, d.head_margin,
            tuple(trained.cfg.eval.tta))


def check_members(members: list[Member]) -> None:
    """One ``EnsembleError`` line naming two runs when members differ in classes or preprocessing."""
    first = members[0]
    for m in members[1:]:
        for what, get in (("classes", lambda t: t.classes),
                          ("preprocessing (input size, channels, normalisation, crop, background, margin, TTA views)",
                           _preprocessing)):
            if get(m.trained) != get(first.trained):
                raise EnsembleError(f"ensemble members differ in {what}: runs {first.trained.run_dir} "
                                    f"({get(first.trained)}) and {m.trained.run_dir} ({get(m.trained)})")


class Ensemble(Inferable):
    """A recipe's chosen configuration over all its (fold, seed) replicates, used as one model."""

    model: EnsembleModel

    def __init__(self, members: list[Member], recipe: str, config: str, home: Path, result=None):
        check_members(members)
        self.members, self.recipe, self.config = members, recipe, config
        self.home = Path(home)  # the sweep directory
        self.result = result  # the collector's RecipeResult for the recipe (ensemble test metrics)
        lead = members[0].trained
        self.cfg, self.classes, self.decoder, self.normalize = lead.cfg, lead.classes, lead.decoder, lead.normalize
        self.model = EnsembleModel([m.trained.model for m in members]).eval()
        self.best_epoch = None

    # where an evaluation of the ensemble goes by default: <sweep>/ensembles/<recipe>/eval/<root>
    @property
    def run(self) -> RunDir:  # type: ignore[override]  # a TrainedRun's run is a field
        return SweepDir(self.home).ensemble_dir(self.recipe)

    @property
    def name(self) -> str:
        return f"{self.recipe} ensemble of {len(self.members)} ({self.home.name})"

    @classmethod
    def from_runs(cls, run_dirs: Sequence[str | Path], recipe: str, home: str | Path,
                  metric: str = "val/acc") -> Ensemble:
        """The ensemble of ``recipe``'s configuration chosen on ``metric`` among ``run_dirs`` (a sweep's runs)."""
        runs = [read_run_dir(d) for d in run_dirs if RunDir.is_run_dir(d)]
        try:
            cmp = compare([r for r in runs if r.recipe == recipe], metric=metric)
        except MixedDataError as e:
            raise EnsembleError(str(e)) from None
        rr = next((r for r in cmp.recipes if r.recipe == recipe), None)
        if rr is None:
            raise EnsembleError(f"recipe {recipe} has no finished configuration with a complete set of folds in "
                                f"{home} (launch/sweep.py status {home})")
        if any(r.run_dir is None for r in rr.runs):
            raise EnsembleError(f"recipe {recipe} in {home}: a replicate has no run directory")
        members = [Member(TrainedRun.load(r.run_dir), r.fold, r.seed, r.summary) for r in rr.runs
                   if r.run_dir is not None]
        return cls(members, recipe, value_label(rr.keys, rr.chosen), Path(home), rr)

    # ------------------------------------------------------------------ the members' data
    def _find_reference(self) -> tuple[TrainingReference | None, str]:
        """The union of the members' training images (for K-fold members: the whole training pool)."""
        splits = []
        for m in self.members:
            try:
                splits.append(m.trained.split())
            except DataError as e:
                return None, f"{m.name}: {e}"
        return reference_from_splits(splits, self.cfg.data.cache_dir)

    def describe_members(self) -> list[dict]:
        """Each member's run, fold, seed, best epoch and val/test metrics (its summary)."""
        keys = ("val/acc", "val/macro_f1", "test/acc", "test/macro_f1", "test/auc", "test/band/novel/acc")
        return [{"run": m.name, "run_dir": str(m.trained.run_dir), "fold": m.fold, "seed": m.seed,
                 "best_epoch": m.trained.best_epoch,
                 "metrics": {k: m.summary[k] for k in keys if m.summary.get(k) is not None},
                 "data_manifest": m.summary.get("data_manifest")} for m in self.members]
