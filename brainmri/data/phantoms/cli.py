"""The command line of ``python -m brainmri.data.phantoms``: a phantom set, or with ``--cohort`` a cohort."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from brainmri.data.phantoms.cohort import COHORT_MANIFEST, generate_cohort, read_cohort
from brainmri.data.phantoms.draw import CLASSES, generate_phantoms, read_manifest


def _prevalence_arg(text: str) -> tuple[str, list[float]]:
    site, _, weights = text.partition("=")
    try:
        values = [float(w) for w in weights.split(",")]
    except ValueError:
        values = []
    if not site or len(values) != len(CLASSES):
        raise argparse.ArgumentTypeError(f"expected SITE={','.join(['W'] * len(CLASSES))} (one weight per class, "
                                         f"{', '.join(CLASSES)}), got {text!r}")
    return site, values


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m brainmri.data.phantoms",
                                     description="Write synthetic MRI-like brain phantoms: a set in the Kaggle "
                                                 "layout, or with --cohort a manifest cohort of patients and sites.")
    parser.add_argument("out_dir", type=Path, help="output folder (Training/, Testing/, manifest.json; "
                                                   "with --cohort <site>/<patient>/..., manifest.csv, cohort.json)")
    parser.add_argument("--n-per-class", type=int, default=40, help="Training images per class")
    parser.add_argument("--n-test-per-class", type=int, default=10, help="Testing images per class (0: none)")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grayscale-fraction", type=float, default=0.5, help='share of mode "L" files')
    parser.add_argument("--overwrite", action="store_true", help="regenerate even if the manifest matches")
    cohort = parser.add_argument_group("cohort", "patients with several slices, at sites that differ")
    cohort.add_argument("--cohort", action="store_true", help="write a cohort with manifest.csv instead")
    cohort.add_argument("--sites", default="A,B,C", help="comma-separated site names (default A,B,C)")
    cohort.add_argument("--patients-per-site", type=int, default=20)
    cohort.add_argument("--slices-per-patient", type=int, default=6)
    cohort.add_argument("--prevalence", type=_prevalence_arg, action="append", metavar="SITE=W,W,W,W",
                        help=f"class weights of one site ({', '.join(CLASSES)}); repeat per site")
    cohort.add_argument("--test-fraction", type=float, default=0.2, help="share of patients with split=test")
    cohort.add_argument("--dicom-fraction", type=float, default=0.5, help="share of patients stored as DICOM")
    cohort.add_argument("--monochrome1-fraction", type=float, default=0.0, help="share of DICOM patients "
                        "stored MONOCHROME1")
    cohort.add_argument("--multiframe", type=int, default=0, help="extra patients as one multi-frame DICOM each")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        if args.cohort:
            root = generate_cohort(args.out_dir, sites=[s for s in args.sites.split(",") if s],
                                   n_patients_per_site=args.patients_per_site,
                                   slices_per_patient=args.slices_per_patient, prevalence=dict(args.prevalence or []),
                                   image_size=args.size, seed=args.seed, test_fraction=args.test_fraction,
                                   dicom_fraction=args.dicom_fraction, monochrome1_fraction=args.monochrome1_fraction,
                                   multiframe=args.multiframe, overwrite=args.overwrite)
        else:
            root = generate_phantoms(args.out_dir, n_per_class=args.n_per_class,
                                     n_test_per_class=args.n_test_per_class, image_size=args.size, seed=args.seed,
                                     grayscale_fraction=args.grayscale_fraction, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as err:
        parser.error(str(err))
    took = time.perf_counter() - start
    if args.cohort:
        info = read_cohort(root) or {}
        n_patients = sum(sum(c.values()) for c in info.get("patients", {}).values())
        print(f"{info.get('rows')} phantom slices of {n_patients} patients at {len(info.get('patients', {}))} sites "
              f"in {root}, listed in {root / COHORT_MANIFEST} ({took:.2f} s)")
    else:
        print(f"{(read_manifest(root) or {}).get('total')} phantom images in {root} ({took:.2f} s)")

