"""Render a brainmri.results.comparison.Comparison: Markdown and CSV here, LaTeX (``report_latex``),
PNG plots (``report_plots``), one HTML page (``report_html``), a W&B report (``wandb_report``).

Presentation only: the tables are ``brainmri.results.tables``' frames of the Comparison (no
statistics here). Markdown and HTML round for people (3 decimals; LaTeX in % with 1 decimal),
CSV keeps full precision.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from brainmri.results.comparison import Comparison
from brainmri.results.report_latex import to_latex
from brainmri.results.report_plots import write_plots
from brainmri.results.tables import (
    FRAMES,
    LOSO_TEXT,
    NO_SITES,
    NUMERIC,
    TABLES,
    TITLES,
    display_frame,
    incomplete_folds_frame,
    incomplete_frame,
    intro_text,
    loso_frame,
    markdown_table,
    mcnemar_lines,
    paired_frame,
    ttest_lines,
)

# the names other modules read from here (the frames themselves: brainmri.results.tables)
__all__ = ["RENDERERS", "TABLES", "display_frame", "markdown_table", "to_csv", "to_latex", "to_markdown",
           "write_plots"]


def to_markdown(cmp: Comparison, per_value: bool = False, table: str = "main") -> str:
    frame = FRAMES[table](cmp, False)
    empty = NO_SITES if table == "sites" and cmp.recipes else "Nothing finished: no row to show."
    parts = [f"# {TITLES[table]}", intro_text(cmp, table), markdown_table(frame, empty)]
    if per_value and table == "main":
        parts += ["## Per swept value (* = selected; test columns of other values are for reference, "
                  "not used for selection)", markdown_table(display_frame(cmp, per_value=True))]
    parts += ["## Paired tests"]
    if cmp.paired:
        parts += ["Every recipe against the best by validation: the corrected resampled t-test over common "
                  "(fold, seed) pairs (Nadeau & Bengio, 2003) and McNemar on the shared test images.",
                  markdown_table(paired_frame(cmp)), "\n".join(ttest_lines(cmp))]
    parts += ["\n".join(mcnemar_lines(cmp))]
    if cmp.loso:
        parts += ["## Leave one site out", LOSO_TEXT, markdown_table(loso_frame(cmp))]
    if cmp.incomplete_folds:
        parts += ["## Incomplete fold sets (not averaged)", markdown_table(incomplete_folds_frame(cmp))]
    parts += ["## Incomplete runs (not averaged)",
              markdown_table(incomplete_frame(cmp)) if cmp.incomplete else "None."]
    if cmp.notes:
        parts += ["## Notes", "\n".join(f"- {n}" for n in cmp.notes)]
    return "\n\n".join(parts) + "\n"


COUNT_COLUMNS = ("folds", "n_seeds", "n_replicates", "ttest_pairs", "ttest_df", "mcnemar_n", "n_min", "n_max")


def _integers(df: pd.DataFrame) -> pd.DataFrame:
    """Counts as integers (empty where there is none), never 5.0."""
    for col in COUNT_COLUMNS:
        if col in df:
            df[col] = pd.to_numeric(df[col]).round().astype("Int64")
    return df


def to_csv(cmp: Comparison, per_value: bool = False, table: str = "main") -> str:
    """Full precision. ``main``: finished rows, then one row per incomplete fold set (state
    ``incomplete_folds``) and per incomplete run (its state and the error's first line)."""
    df = NUMERIC[table](cmp, per_value)
    if table != "main":
        return _integers(df).to_csv(index=False)
    if len(df):
        df.insert(df.columns.get_loc("split"), "state", "finished")
    extra = [{"recipe": m.recipe, "config": m.config, "state": "incomplete_folds", "folds": m.folds,
              "n_seeds": 1, "n_replicates": len(m.finished),
              "error": f"seed {m.seed}: {len(m.finished)} of {m.folds} folds finished, missing "
                       + ", ".join(map(str, m.missing))} for m in cmp.incomplete_folds]
    inc = incomplete_frame(cmp)
    if len(inc):
        extra += inc.rename(columns={"status": "state"})[["recipe", "state", "error", "id"]].to_dict("records")
    if extra:
        df = pd.concat([df, pd.DataFrame(extra)], ignore_index=True)
    return _integers(df).to_csv(index=False)


RENDERERS: dict[str, Callable[..., str]] = {"md": to_markdown, "csv": to_csv, "latex": to_latex}
