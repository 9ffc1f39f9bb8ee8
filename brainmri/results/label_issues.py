"""Label issues from out-of-fold predictions: which training images may carry the wrong label.

When a configuration's K-fold runs cover its training pool — every file of the pool (the train and
val parts of the split record) validated exactly once across the K fold runs of each seed — each
training image has a prediction from a model that never trained on it (the validation predictions of
the fold that held it out). ``out_of_fold`` gathers those probabilities (the mean over seeds),
``label_issues`` ranks them with cleanlab (``cleanlab.filter.find_label_issues``, ranked by
self-confidence; ``cleanlab.rank.get_label_quality_scores`` gives every image its score) and
``write_label_issues`` writes ``label_issues.csv`` (every training image: given label, its
out-of-fold probability, label-quality score, suggested label, near-duplicate group) and
``label_issues.html``, a self-contained contact sheet of the top issues for a person to judge.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from brainmri.atomic import atomic_write
from brainmri.data.files import thumbnail_uri
from brainmri.results.comparison import Comparison, value_label
from brainmri.rundir import RunDir

TOP = 48  # issues shown on the contact sheet


@dataclass
class OutOfFold:
    """Every training-pool image with its out-of-fold probabilities (mean over seeds)."""

    classes: list[str]
    root: str                 # the data root the paths are relative to
    paths: list[str]          # relative to ``root``
    labels: np.ndarray        # given label (int)
    probs: np.ndarray         # (n, classes): out-of-fold softmax, mean over seeds
    groups: list              # near-duplicate group (the split record's ``group``)
    folds: list               # the fold that held each image out
    seeds: int                # seeds averaged
    runs: int                 # fold runs read


class CoverageError(ValueError):
    """The runs do not predict every training image exactly once per seed; says why in one line."""


def out_of_fold(runs: list) -> OutOfFold:
    """Out-of-fold probabilities of ``runs`` (one configuration's complete K-fold replicates).

    Raises ``CoverageError`` when they are not K-fold runs, a run lacks the split record or
    validation predictions, the runs disagree on the pool, or some pool image is predicted other
    than exactly once by a seed's folds.
    """
    if not runs or any(r.folds is None or r.run_dir is None for r in runs):
        raise CoverageError("not K-fold runs in run directories (data.folds)")
    pool: dict[str, tuple] | None = None
    classes: list[str] | None = None
    root: str | None = None
    per_seed: dict[str, dict[str, list[np.ndarray]]] = {}
    for r in sorted(runs, key=lambda r: (repr(r.seed), repr(r.fold))):
        rd = RunDir(r.run_dir)
        record, frame = rd.read_split(), rd.read_predictions("val")
        if not record or "files" not in record:
            raise CoverageError(f"{rd.split_file} lists no files")
        if frame is None:
            raise CoverageError(f"{rd.predictions_file('val')} is missing")
        files = [row for part in ("train", "val") for row in record["files"].get(part, [])]
        mine = {row["path"]: (row["label"], row.get("group"), row.get("fold")) for row in files}
        if pool is None:
            pool, classes, root = mine, list(record["classes"]), record["data_root"]
        elif mine != pool or list(record["classes"]) != classes:
            raise CoverageError(f"run {rd.path.name} has another training pool or fold assignment than the others")
        cols = [f"prob_{c}" for c in classes]
        if not set(cols) <= set(frame.columns):
            raise CoverageError(f"{rd.predictions_file('val')} has no probability per class")
        seen = per_seed.setdefault(repr(r.seed), {})
        for path, p in zip(frame["path"], frame[cols].to_numpy(dtype=np.float64), strict=True):
            seen.setdefault(os.path.relpath(path, record["data_root"]), []).append(p)
    assert pool is not None  # runs is not empty
    for seed, seen in per_seed.items():
        missing = [p for p in pool if p not in seen]
        twice = [p for p, v in seen.items() if len(v) != 1]
        foreign = [p for p in seen if p not in pool]
        if missing or twice or foreign:
            example = (missing or twice or foreign)[0]
            raise CoverageError(f"seed {seed}: the folds do not predict every training image exactly once "
                                f"({len(missing)} never, {len(twice)} more than once, {len(foreign)} not in the pool; "
                                f"e.g. {example})")
    assert pool is not None and classes is not None and root is not None  # runs is not empty
    paths = sorted(pool)
    index = {c: i for i, c in enumerate(classes)}
    probs = np.mean([[seen[p][0] for p in paths] for seen in per_seed.values()], axis=0)
    return OutOfFold(classes, root, paths, np.array([index[pool[p][0]] for p in paths]), probs,
                     [pool[p][1] for p in paths], [pool[p][2] for p in paths], len(per_seed), len(runs))


def label_issues(oof: OutOfFold) -> pd.DataFrame:
    """One row per training image, the issues first in cleanlab's ranking, then by label quality.

    Columns: ``rank`` (1.. for issues, empty otherwise), ``is_issue``, ``path`` (relative to the data
    root), ``label`` (given), ``prob_label`` (its out-of-fold probability), ``label_quality``
    (self-confidence), ``suggested`` (the most probable class out of fold), ``prob_suggested``,
    ``group`` (near-duplicate group), ``fold``, one ``prob_<class>`` per class.
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    probs = oof.probs / oof.probs.sum(axis=1, keepdims=True)
    ranked = find_label_issues(oof.labels, probs, return_indices_ranked_by="self_confidence", n_jobs=1)
    quality = get_label_quality_scores(oof.labels, probs, method="self_confidence")
    suggested = probs.argmax(axis=1)
    n = len(oof.paths)
    rank = np.full(n, np.nan)
    rank[ranked] = np.arange(1, len(ranked) + 1)
    df = pd.DataFrame({
        "rank": pd.array(rank, dtype="Int64"), "is_issue": ~np.isnan(rank), "path": oof.paths,
        "label": [oof.classes[k] for k in oof.labels], "prob_label": probs[np.arange(n), oof.labels],
        "label_quality": quality, "suggested": [oof.classes[k] for k in suggested],
        "prob_suggested": probs[np.arange(n), suggested], "group": oof.groups, "fold": oof.folds,
        **{f"prob_{c}": probs[:, k] for k, c in enumerate(oof.classes)}})
    order = np.lexsort((df["label_quality"].to_numpy(), np.nan_to_num(rank, nan=np.inf)))
    return df.iloc[order].reset_index(drop=True)


def contact_sheet(sections: list[tuple[str, pd.DataFrame, str]], top: int = TOP) -> str:
    """Self-contained HTML: per recipe, a grid of its top ``top`` issues (thumbnail, given vs suggested
    label, probabilities, score, group, path). ``sections``: (title, label_issues frame, data root)."""
    css = ("body{font-family:sans-serif;margin:1em;color:#222}.grid{display:grid;grid-template-columns:"
           "repeat(auto-fill,minmax(180px,1fr));gap:10px}.card{border:1px solid #ccc;padding:6px;font-size:12px}"
           ".card img{width:100%;image-rendering:auto;background:#000}.given{color:#b00}.sugg{color:#070}"
           ".path{color:#666;word-break:break-all;font-size:10px}")
    parts = []
    for title, df, root in sections:
        issues = df[df["is_issue"]].head(top)
        cards = []
        for r in issues.itertuples():
            src = thumbnail_uri(Path(root) / r.path, 160)
            img = f"<img src='{src}' alt='{html.escape(r.path)}'>" if src else "<p>(unreadable)</p>"
            cards.append(f"<div class='card'>{img}<div><b>#{r.rank}</b> score {r.label_quality:.3f}</div>"
                         f"<div class='given'>given: {html.escape(r.label)} (p={r.prob_label:.2f})</div>"
                         f"<div class='sugg'>suggested: {html.escape(r.suggested)} (p={r.prob_suggested:.2f})</div>"
                         f"<div>group {html.escape(str(r.group))}, fold {html.escape(str(r.fold))}</div>"
                         f"<div class='path'>{html.escape(r.path)}</div></div>")
        n_issues = int(df["is_issue"].sum())
        parts.append(f"<h2>{html.escape(title)}</h2><p>{n_issues} of {len(df)} training images flagged by "
                     f"cleanlab's find_label_issues on out-of-fold probabilities; the top {len(issues)} by "
                     "self-confidence (the out-of-fold probability of the given label) below.</p>"
                     f"<div class='grid'>{''.join(cards)}</div>")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>label issues</title><style>{css}</style>"
            f"</head><body><h1>Label issues (out-of-fold)</h1>{''.join(parts)}</body></html>")


def write_label_issues(cmp: Comparison, out_dir: str | Path, top: int = TOP) -> tuple[list[Path], list[str]]:
    """``label_issues.csv`` and ``label_issues.html`` in ``out_dir`` for every recipe whose chosen
    configuration's folds cover its training pool; returns (files written, one line per recipe)."""
    frames, sections, lines = [], [], []
    for rr in cmp.recipes:
        if not rr.folds:
            continue
        try:
            oof = out_of_fold(rr.runs)
        except CoverageError as e:
            lines.append(f"label issues: {rr.recipe}: none ({e})")
            continue
        df = label_issues(oof)
        df.insert(0, "recipe", rr.recipe)
        df.insert(1, "config", value_label(rr.keys, rr.chosen))
        frames.append(df)
        title = (f"{rr.recipe} ({value_label(rr.keys, rr.chosen)}): {rr.folds} folds × {oof.seeds} seed(s)")
        sections.append((title, df, oof.root))
        lines.append(f"label issues: {rr.recipe}: {int(df['is_issue'].sum())} of {len(df)} training images flagged")
    if not frames:
        return [], lines
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, html_path = out / "label_issues.csv", out / "label_issues.html"
    atomic_write(csv_path, pd.concat(frames, ignore_index=True).to_csv(index=False))
    atomic_write(html_path, contact_sheet(sections, top))
    return [csv_path, html_path], lines

