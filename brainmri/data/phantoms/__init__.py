"""Synthetic MRI-like brain phantoms: a set in the Kaggle layout, or a cohort of patients at sites.

``head``: drawing one head (``draw_anatomy``) and rendering slices of it (``render_slice``;
``render_phantom`` is both at once). ``draw``: writing a whole data set in the Kaggle "Brain Tumor MRI" folder
layout (``generate_phantoms``: ``<root>/{Training,Testing}/<class>/*.jpg`` plus ``<root>/manifest.json``)
so a fresh clone can train and test with no download. ``cohort``: writing a cohort (``generate_cohort``:
several correlated slices per patient, sites that differ in field of view, intensity, noise and
class shares, JPEG and 12/16-bit DICOM, listed in ``<root>/manifest.csv``) and real MR DICOM files
(``write_dicom``). ``cli``: the command line. Knows nothing about models, loaders or runs.

The lesion alone decides the class:
  glioma      irregular intra-axial mass in one hemisphere, bright enhancing rim, dark necrotic core
  meningioma  bright, homogeneous, sharply bounded mass pressed against the inner skull (dural tail)
  pituitary   small bright round mass on the midline near the skull base (lower centre)
  notumor     no lesion
Every image also gets head pose jitter, tissue texture with sulci, ventricles, a few tiny bright
vessel dots (so "a bright spot" alone is not the answer), contrast/gamma jitter and Rician noise.

Output is a pure function of the parameters: each image (cohort: each patient, and each slice's
noise) draws from its own ``numpy.random.default_rng([seed, ...])``, JPEGs are saved at a fixed
quality and DICOM UIDs derive from the seed, so the same seed gives byte-identical files.

Example:
    python -m brainmri.data.phantoms data/phantoms --n-per-class 40 --n-test-per-class 10 --size 224
    python -m brainmri.data.phantoms data/cohort --cohort --sites A,B,C --patients-per-site 20 --size 128
"""

from brainmri.data.phantoms.cli import main
from brainmri.data.phantoms.cohort import (
    COHORT_FORMAT,
    COHORT_MANIFEST,
    COHORT_MARKER,
    COHORT_VERSION,
    MANIFEST_COLUMNS,
    SITE_PROFILES,
    default_prevalence,
    generate_cohort,
    read_cohort,
    site_profile,
    write_dicom,
)
from brainmri.data.phantoms.draw import (
    FORMAT,
    JPEG_QUALITY,
    MANIFEST,
    SPLITS,
    VERSION,
    generate_phantoms,
    lesion_mask,
    read_manifest,
)
from brainmri.data.phantoms.head import (
    CLASSES,
    SLICE_SPACING,
    Anatomy,
    Site,
    draw_anatomy,
    render_phantom,
    render_slice,
)

__all__ = [
    "CLASSES", "COHORT_FORMAT", "COHORT_MANIFEST", "COHORT_MARKER", "COHORT_VERSION", "FORMAT", "JPEG_QUALITY",
    "MANIFEST", "MANIFEST_COLUMNS", "SITE_PROFILES", "SLICE_SPACING", "SPLITS", "VERSION", "Anatomy", "Site",
    "default_prevalence", "draw_anatomy", "generate_cohort", "generate_phantoms", "lesion_mask", "main",
    "read_cohort", "read_manifest", "render_phantom", "render_slice", "site_profile", "write_dicom",
]
