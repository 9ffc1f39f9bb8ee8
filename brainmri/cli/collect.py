"""Compare brainmri recipes from run dirs, offline W&B runs and/or the W&B API.

    python launch/collect.py sweeps/lr --format md [--out FILE] [--plots DIR] [--metric val/acc] [--by optim.lr]
    python launch/collect.py sweeps/cv --format latex --table main|bands|classes|sites|intervals
    python launch/collect.py --wandb-project brainmri [--wandb-entity E] --group lr [--tag T] --format latex
    python launch/collect.py sweeps/search_lr --html sweeps/search_lr/report.html   # a search: + the search view
    python launch/collect.py sweeps/lr --format html --out report.html              # the HTML report alone

When a recipe's chosen configuration is cross-validated and its folds cover the training pool,
label_issues.csv and label_issues.html (a contact sheet of the top issues) are written beside --out
(else beside --html, else into the first directory given).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from brainmri.atomic import atomic_write
from brainmri.cli.errors import full_disk_is_one_line
from brainmri.cli.parsing import saying, tool_parser
from brainmri.metric_names import DEFAULT_METRIC, EPOCH_METRICS

if TYPE_CHECKING:  # the results are imported only once a run is collected (a fast --help)
    from brainmri.results.comparison import Comparison

FORMATS = ("csv", "html", "latex", "md")  # brainmri.results.report.RENDERERS, and the HTML report
TABLES = ("main", "bands", "classes", "sites", "intervals")  # brainmri.results.report.TABLES


def get_parser() -> argparse.ArgumentParser:
    p = tool_parser(__doc__)
    p.add_argument("paths", nargs="*", help="sweep dirs, run dirs or W&B offline dirs (searched recursively)")
    p.add_argument("--format", choices=FORMATS, default="md", help="md (default), csv, latex: the table; "
                   "html: the self-contained HTML report (as --html)")
    p.add_argument("--table", choices=TABLES, default="main", help="main: recipe, chosen configuration, val, test, "
                   "novel-band test, macro-F1, AUC, ECE (mean ± std over replicates); bands: by similarity band; "
                   "classes: per-class recall/precision/F1; sites: test accuracy per site (a manifest's "
                   "site column); intervals: 95 %% intervals and how they were computed")
    p.add_argument("--allow-mixed-data", action="store_true", help="pool runs whose data manifests differ "
                   "(refused by default: they were trained or tested on different files)")
    p.add_argument("--out", help="write the table here instead of stdout")
    p.add_argument("--html", help="also write a self-contained HTML report here (opens offline)")
    p.add_argument("--plots", help="directory for accuracy.png and val_curves.png")
    p.add_argument("--metric", help="validation metric used to select the swept value (default: a search's "
                   "metric, else val/acc)")
    p.add_argument("--by", action="append", help="swept config key(s) to select over (default: all keys "
                   "that vary across a recipe's runs, seed and paths excluded); also shows each value")
    p.add_argument("--per-value", action="store_true", help="also show one row per swept value")
    p.add_argument("--label-issues", metavar="DIR", help="where label_issues.csv/.html go (default: beside --out, "
                   "else beside --html, else the first directory given)")
    p.add_argument("--min-seeds", type=int, help="choose only among configurations run over this many seeds "
                   "(default: a search's --confirm-seeds count, else 1)")
    p.add_argument("--wandb-project")
    p.add_argument("--wandb-entity")
    p.add_argument("--group", help="W&B group (the sweep name)")
    p.add_argument("--tag", action="append", default=[], help="W&B tag (repeatable; runs must have all)")
    p.add_argument("--wandb-report", action="store_true", help="save a W&B report (runset grouped by recipe: "
                   "val curves, test accuracy per recipe, swept keys, the table, confusion matrices); needs the server")
    return p


def label_issues_dir(args: argparse.Namespace) -> Path | None:
    """Beside the table (``--out``), else beside the HTML report, else the first directory collected."""
    if args.label_issues:
        return Path(args.label_issues)
    if args.out or args.html:
        return Path(args.out or args.html).parent
    return next((Path(p) for p in args.paths if Path(p).is_dir()), None)


def write_outputs(args: argparse.Namespace, cmp: Comparison, search: dict | None) -> None:
    """The table (or page) of ``--format``, then ``--html``, ``--plots`` and the label issues."""
    from brainmri.results.report import RENDERERS, write_plots

    if args.format == "html":
        from brainmri.results.report_html import render_html, write_html

        if args.out:
            print(f"report: {write_html(cmp, args.out, search)}", file=sys.stderr)
        else:
            sys.stdout.write(render_html(cmp, search=search))
    else:
        text = RENDERERS[args.format](cmp, per_value=args.per_value or bool(args.by), table=args.table)
        if search and args.format == "md":
            from brainmri.results.search import search_markdown

            text += "\n" + search_markdown(search, cmp)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            atomic_write(args.out, text)
        else:
            sys.stdout.write(text)
    if args.html:
        from brainmri.results.report_html import write_html
        print(f"report: {write_html(cmp, args.html, search)}", file=sys.stderr)
    if args.plots and cmp.recipes:
        print(f"plots: {args.plots}", file=sys.stderr)
        write_plots(cmp, args.plots)
    where = label_issues_dir(args)
    if where is not None and any(rr.folds for rr in cmp.recipes):
        from brainmri.results.label_issues import write_label_issues

        files, lines = write_label_issues(cmp, where)
        for line in lines:
            print(line, file=sys.stderr)
        if files:
            print(f"label issues: {' '.join(map(str, files))}", file=sys.stderr)


@full_disk_is_one_line
def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    if not args.paths and not args.wandb_project:
        get_parser().error("give run/sweep dirs and/or --wandb-project")
    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        print(f"error: {missing[0]}: no such file or directory (give sweep, run or W&B offline directories)",
              file=sys.stderr)
        return 2
    from brainmri.results.collect import MixedDataError, collect_runs, compare
    from brainmri.sweep.search import read_trials

    with saying(f"collecting runs from {', '.join(args.paths) or 'W&B'} ..."):
        runs = collect_runs(args.paths, args.wandb_project, args.wandb_entity, args.group, args.tag)
    if not runs:
        sources = ", ".join(args.paths) + (" and " if args.paths and args.wandb_project else "")
        sources += f"W&B project {args.wandb_project}" if args.wandb_project else ""
        print(f"error: no runs found in {sources} (a run directory holds config.yaml; W&B offline runs: "
              "offline-run-*/)", file=sys.stderr)
        return 1
    search = next((t for t in map(read_trials, args.paths) if t), None)  # a search sweep's trial table
    confirmed = [len(c["seeds"]) for c in ((search or {}).get("confirm") or {}).values()]
    min_seeds = args.min_seeds or (min(confirmed) if confirmed else 1)
    args.metric = args.metric or (search or {}).get("search", {}).get("metric") or DEFAULT_METRIC
    if not any(args.metric in r.summary for r in runs if r.finished) and any(r.finished for r in runs):
        print(f"error: --metric {args.metric}: no finished run's summary has it (every run logs "
              f"{', '.join(EPOCH_METRICS)})", file=sys.stderr)
        return 2
    try:
        with saying(f"comparing {len(runs)} run(s) ..."):
            cmp = compare(runs, metric=args.metric, by=args.by, allow_mixed_data=args.allow_mixed_data,
                          min_seeds=min_seeds)
    except MixedDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_outputs(args, cmp, search)
    if args.wandb_report:
        from brainmri.results.wandb_report import (
            ReportUnavailable,
            publish_wandb_report,
        )
        try:
            print(publish_wandb_report(cmp, args.wandb_project or "brainmri", args.wandb_entity, args.group),
                  file=sys.stderr)
        except ReportUnavailable as exc:
            print(f"error: --wandb-report: not published: {exc}", file=sys.stderr)
            return 3
    return 0
