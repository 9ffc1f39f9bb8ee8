"""The comparison's records: what the collector computes and the writers draw, as typed fields.

``Comparison`` holds one ``RecipeResult`` per recipe (its chosen configuration's replicates, their
statistics, every swept value as a ``ValuePoint`` and the replicates' ``EnsembleResult``), the
``PairedTest`` of every other recipe against the best (a ``TTest`` and a ``McNemar`` per common
replicate), the incomplete runs and fold sets, and notes. No logic beyond labels and lookups.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from brainmri.results.runs import Run


@dataclass(frozen=True)
class Stat:
    """Mean, sample std and the 95 % interval of one metric over ``n`` replicates (NaN where undefined)."""

    mean: float = math.nan
    std: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    n: int = 0

    @classmethod
    def one(cls, value: float) -> Stat:
        """One value, no spread (an ensemble's metric)."""
        return cls(mean=float(value), n=1)


EMPTY = Stat()


@dataclass(frozen=True)
class McNemarTest:
    """McNemar on per-image correctness: discordant counts ``b`` (only A right), ``c`` (only B right)."""

    b: int
    c: int
    method: str  # "exact" (binomial) or "chi2-cc" (chi-square, continuity-corrected)
    statistic: float
    p: float


@dataclass(frozen=True)
class ReplicateMcNemar:
    """McNemar of two recipes on one common replicate (fold, seed); ``error`` when it could not be run."""

    seed: Any
    fold: Any
    n: int = 0                       # matched test images
    unmatched: int = 0               # images of either run without a match, dropped
    acc_a: float = math.nan
    acc_b: float = math.nan
    test: McNemarTest | None = None
    error: str | None = None


@dataclass
class McNemar:
    """One McNemar test per common replicate of recipes ``a`` and ``b`` (never pooled)."""

    a: str
    b: str
    replicates: list[ReplicateMcNemar] = field(default_factory=list)
    reason: str | None = None        # why there is no test at all

    @property
    def ps(self) -> list[float]:
        return [r.test.p for r in self.replicates if r.test is not None]


@dataclass(frozen=True)
class TTest:
    """Corrected resampled t-test (Nadeau & Bengio, 2003) of ``a`` vs ``b`` on ``metric``; ``reason``
    says why there is none (then the numbers are NaN)."""

    a: str
    b: str
    metric: str
    reason: str | None = None
    pairs: int = 0
    diff: float = math.nan
    std: float = math.nan
    rho: float = math.nan
    t: float = math.nan
    df: int = 0
    p: float = math.nan
    mean_a: float = math.nan
    mean_b: float = math.nan


@dataclass(frozen=True)
class PairedTest:
    """Recipe ``b`` against the best recipe ``a``: the corrected t over folds and McNemar per replicate."""

    a: str
    b: str
    ttest: TTest
    mcnemar: McNemar


@dataclass(frozen=True)
class PairwiseMcNemar:
    """One row of McNemar between every pair of recipes, per common replicate, Holm-adjusted."""

    a: str
    b: str
    fold: Any
    seed: Any
    n: int
    acc_a: float
    acc_b: float
    test: McNemarTest
    p_holm: float = math.nan


@dataclass
class EnsembleResult:
    """The mean of a chosen configuration's replicates' test probabilities, scored as one model."""

    members: int
    runs: list[str]
    replicates: list[list[Any]]
    metrics: dict[str, float] = field(default_factory=dict)  # ``test/...`` as a run's summary has them
    stats: dict[str, Stat] = field(default_factory=dict)     # metric -> ``Stat.one``, as the tables print
    reason: str | None = None                                # why there is none (then no metrics)

    @property
    def scored(self) -> bool:
        return self.reason is None and bool(self.stats)


@dataclass
class ValuePoint:
    """One swept value of a recipe: its complete replicates and their statistics."""

    value: tuple
    runs: list[Run]
    folds: int | None                # K of its K-fold runs (None: one split)
    seeds: int
    rho: float                       # n_test/n_train of its folds (corrected resampled t); 0 without folds
    selection: Stat                  # the selection metric over the replicates
    stats: dict[str, Stat]           # reported-split metric -> over the replicates


@dataclass(frozen=True)
class IncompleteFolds:
    """A configuration's seed with fewer finished folds than ``data.folds``: listed, never averaged."""

    recipe: str
    config: str
    seed: Any
    folds: int
    finished: list[int]
    missing: list[int]


@dataclass
class RecipeResult:
    recipe: str
    keys: list[str]                  # swept config keys
    chosen: tuple                    # their values for the chosen configuration
    split: str                       # "test", or "val" when no run has a test split
    runs: list[Run]                  # the chosen configuration, one run per replicate (fold, seed)
    stats: dict[str, Stat]           # metric name -> over the replicates
    per_value: list[ValuePoint]      # one entry per swept value
    folds: int | None = None         # K of the chosen configuration's K-fold runs (None: one split)
    rho: float = 0.0                 # n_test/n_train of its folds (corrected resampled t); 0 without folds
    ensemble: EnsembleResult | None = None  # the replicates' ensemble on the test split

    @property
    def seeds(self) -> int:
        return len({repr(r.seed) for r in self.runs})

    @property
    def point(self) -> ValuePoint:
        """The chosen configuration's ``ValuePoint``."""
        return next(v for v in self.per_value if v.value == self.chosen)

    @property
    def selection(self) -> Stat:
        """The selection metric of the chosen configuration over its replicates."""
        return self.point.selection

    def stat(self, metric: str) -> Stat:
        return self.stats.get(metric, EMPTY)

    def scored_ensemble(self) -> EnsembleResult | None:
        """The ensemble when it has test metrics."""
        return self.ensemble if self.ensemble is not None and self.ensemble.scored else None


@dataclass(frozen=True)
class LosoRow:
    """Leave one site out: a recipe's test metrics with ``held_out_site`` held out (averaged over seeds),
    or their mean over the sites (``held_out_site == "mean"``); None where no run logged the metric."""

    recipe: str
    held_out_site: str
    runs: int
    acc: float | None
    macro_f1: float | None
    auc: float | None
    n: float | None


@dataclass
class Comparison:
    metric: str
    recipes: list[RecipeResult]      # best first (by the validation metric of the choice)
    incomplete: list[Run]
    mcnemar: McNemar | None = None   # McNemar of the best two recipes (= paired[0].mcnemar)
    notes: list[str] = field(default_factory=list)
    paired: list[PairedTest] = field(default_factory=list)  # every other recipe vs the best
    incomplete_folds: list[IncompleteFolds] = field(default_factory=list)
    loso: list[LosoRow] = field(default_factory=list)  # leave-one-site-out: each held-out site and the mean

    def paired_of(self, recipe: str) -> PairedTest | None:
        return next((p for p in self.paired if p.b == recipe), None)


@dataclass(frozen=True)
class RunCost:
    """Wall time (sum of epoch times), mean images/s and device-hours of one run."""

    wall_s: float
    images_per_s: float
    hours: float
    kind: str  # "GPU-h" or "CPU-h"


@dataclass(frozen=True)
class RecipeCost:
    """Every finished run of a recipe (all swept values) together."""

    recipe: str
    runs: int
    wall_s: float
    images_per_s: float
    hours: float
    kind: str


def value_label(keys: list[str], value: tuple) -> str:
    return ", ".join(f"{k}={v}" for k, v in zip(keys, value, strict=True)) or "-"


def replicate_label(fold: Any, seed: Any) -> str:
    return f"seed {seed}" if fold is None else f"fold {fold} seed {seed}"
