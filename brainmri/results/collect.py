"""Collect finished brainmri runs and compare recipes honestly: the collector's public names in one place.

The work is split by concept:

- ``runs``: finding runs (brainmri run dirs, W&B offline files, the W&B public API), de-duplication,
  a run's test predictions;
- ``selection``: model selection on the validation metric over complete replicates (a replicate is
  a (fold, seed) pair), the data-provenance check, ``compare``;
- ``stats``: intervals over replicates, the corrected resampled t-test over folds, McNemar per
  replicate, Holm's adjustment, calibration;
- ``ensembles``: the ensemble of a chosen configuration's replicates;
- ``cost``: wall time, throughput and device-hours;
- ``comparison``: the typed records all of them return and the writers draw.

Rendering (Markdown/CSV/LaTeX, plots, HTML, W&B report) lives in ``report*`` and ``wandb_report``.
"""

from __future__ import annotations

from brainmri.metric_names import lower_is_better
from brainmri.results.comparison import (
    Comparison,
    EnsembleResult,
    IncompleteFolds,
    McNemar,
    McNemarTest,
    PairedTest,
    RecipeResult,
    ReplicateMcNemar,
    Stat,
    TTest,
    ValuePoint,
    value_label,
)
from brainmri.results.cost import recipe_cost, run_cost
from brainmri.results.ensembles import ensemble_predictions, ensemble_result
from brainmri.results.runs import (
    Run,
    api_filters,
    collect_runs,
    deduplicate,
    find_run_dirs,
    load_predictions,
    read_run_dir,
    runs_from_api,
    runs_from_offline,
)
from brainmri.results.selection import (
    METRICS,
    MixedDataError,
    check_data,
    compare,
    complete_folds,
    flatten,
    not_swept,
    selection_stats,
    swept_keys,
)
from brainmri.results.stats import (
    compare_predictions,
    corrected_ttest,
    fold_overlap,
    holm,
    is_count,
    mcnemar,
    mean_ci,
    metric_bounds,
)

__all__ = [
    "METRICS", "Comparison", "EnsembleResult", "IncompleteFolds", "McNemar", "McNemarTest", "MixedDataError",
    "PairedTest", "RecipeResult", "ReplicateMcNemar", "Run", "Stat", "TTest", "ValuePoint", "api_filters",
    "check_data", "collect_runs", "compare", "compare_predictions", "complete_folds", "corrected_ttest",
    "deduplicate", "ensemble_predictions", "ensemble_result", "find_run_dirs", "flatten", "fold_overlap", "holm",
    "is_count", "load_predictions", "lower_is_better", "mcnemar", "mean_ci", "metric_bounds", "not_swept",
    "read_run_dir", "recipe_cost", "run_cost", "runs_from_api", "runs_from_offline", "selection_stats",
    "swept_keys", "value_label",
]
