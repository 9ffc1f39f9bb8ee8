"""Audit a data root for duplicates, near-duplicates and leakage between Training and Testing.

    python launch/audit.py /data/brain-mri                 # Markdown summary + audit.json + two CSVs beside it
    python launch/audit.py /data/brain-mri --html audit/   # plus contact sheets (audit/index.html)
    python launch/audit.py /data/brain-mri --shortcuts     # plus: how much of the label is readable without the brain
"""

from __future__ import annotations

import argparse
from pathlib import Path

from brainmri.atomic import write_json
from brainmri.cli.errors import one_line_errors
from brainmri.data.audit import audit, markdown, write_csvs, write_html
from brainmri.data.files import DataError


@one_line_errors(DataError)
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", help="data root holding Training/<class>/ (and optionally Testing/<class>/), or a "
                   "manifest (CSV/TSV: path, label, [patient, site, split]; docs/manifest.md)")
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
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if not 0.0 <= args.margin <= 1.0:
        raise DataError(f"--margin must be in [0, 1], got {args.margin}")
    report, details = audit(args.root, args.cache_dir, progress=not args.no_progress, shortcuts=args.shortcuts,
                            margin=args.margin)
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
