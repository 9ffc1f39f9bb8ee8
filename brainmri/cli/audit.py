"""Audit a data root for duplicates, near-duplicates and leakage between Training and Testing.

    python launch/audit.py --data /data/brain-mri                 # Markdown summary + audit.json + two CSVs beside it
    python launch/audit.py --data /data/brain-mri --html audit/   # plus contact sheets (audit/index.html)
    python launch/audit.py --data /data/brain-mri --shortcuts     # plus: the label read without the brain

The data root may also be given as the first argument (python launch/audit.py /data/brain-mri).
"""

from __future__ import annotations

import sys
from pathlib import Path

from brainmri.atomic import write_json
from brainmri.cli.errors import one_line_errors
from brainmri.cli.parsing import add_data_arg, saying, tool_parser


@one_line_errors("brainmri.data.files:DataError")
def main(argv: list[str] | None = None) -> int:
    p = tool_parser(__doc__)
    add_data_arg(p, help="data root: a folder holding Training/<class>/ (and optionally Testing/<class>/), or a "
                 "manifest (CSV/TSV: path, label, [patient, site, split]; docs/manifest.md)")
    p.add_argument("root", nargs="?", help="the data root, as --data")
    p.add_argument("--json", help="where to write the report (default: audit.json in --html's folder, "
                   "else ./audit.json)")
    p.add_argument("--html", help="folder for index.html with contact sheets of pairs per band")
    p.add_argument("--per-band", type=int, default=40, help="pairs shown per band in the contact sheets")
    p.add_argument("--cache-dir", help="cache folder (default $BRAINMRI_CACHE or ~/.cache/brainmri)")
    p.add_argument("--shortcuts", action="store_true",
                   help="also fit classifiers on background, head geometry and frame features of the Training "
                        "images (5-fold CV), as stored and with data.crop=head / data.background=zero")
    p.add_argument("--margin", type=float, default=0.0,
                   help="data.head_margin for the crop/background settings (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (there is none unless stderr "
                   "is a terminal)")
    args = p.parse_args(argv)
    if args.root and args.data and args.root != args.data:
        p.error(f"give the data root once: --data {args.data} or {args.root}")
    root = args.data or args.root
    if not root:
        p.error("give the data root: --data PATH")
    if not 0.0 <= args.margin <= 1.0:
        print(f"error: --margin must be in [0, 1], got {args.margin}", file=sys.stderr)
        return 2
    from brainmri.data.audit import audit, markdown, write_csvs, write_html

    with saying(f"auditing {root}: fingerprints of every image (cached), nearest neighbours, similarity bands"
                + (", shortcut classifiers" if args.shortcuts else "") + " ..."):
        report, details = audit(root, args.cache_dir, progress=not args.no_progress and sys.stderr.isatty(),
                                shortcuts=args.shortcuts, margin=args.margin)
    json_path = Path(args.json or (Path(args.html) / "audit.json" if args.html else "audit.json"))
    json_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(json_path, report)
    print(markdown(report))
    print(f"report: {json_path}")
    nearest_csv, pairs_csv = write_csvs(details, json_path)
    print(f"every Testing image with its nearest Training image: {nearest_csv}")
    print(f"every Training-Testing pair in a band: {pairs_csv}")
    if args.html:
        print(f"contact sheets: {write_html(report, details, args.html, args.per_band)}")
    return 0
