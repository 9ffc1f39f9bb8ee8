"""Phantom cohorts: patients with several correlated slices at sites that differ in field of view,
intensity, noise and class shares, stored as JPEG and 12/16-bit DICOM and listed in ``<root>/manifest.csv``
(``generate_cohort``), and real MR DICOM files (``write_dicom``). The heads are drawn by
``brainmri.data.phantoms.head``; sets are built atomically by ``brainmri.data.phantoms.draw``.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from brainmri.data.phantoms.draw import JPEG_QUALITY, _build, _read_marker
from brainmri.data.phantoms.head import CLASSES, Site, _to_uint8, _uniform, draw_anatomy, render_slice

# ------------------------------------------------------------------------------------------- cohorts

COHORT_MARKER = "cohort.json"
COHORT_FORMAT = "brainmri-phantom-cohort"
COHORT_VERSION = 1
COHORT_MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ("path", "label", "patient", "site", "split", "slice", "age")

# The built-in sites, by position in ``sites``: each records heads differently (field of view,
# brightness, contrast, noise, a coil ramp) and stores DICOM differently (12 or 16 bits, rescale).
SITE_PROFILES = (
    Site(),
    Site(zoom=0.8, shift=(0.05, -0.04), gain=0.75, gamma=1.2, noise=2.2, bias=0.15,
         bits_stored=16, slope=0.5, intercept=-100.0, scale=12000.0),
    Site(zoom=1.14, shift=(-0.03, 0.05), gain=1.2, gamma=0.85, noise=0.5, bias=-0.12,
         bits_stored=12, slope=2.0, intercept=-50.0, scale=5000.0),
)
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def site_profile(index: int) -> Site:
    """The built-in site at position ``index``: the three above, then seeded variations of them."""
    if index < len(SITE_PROFILES):
        return SITE_PROFILES[index]
    rng = np.random.default_rng([0x517E, index])
    return Site(zoom=_uniform(rng, 0.8, 1.15), shift=(_uniform(rng, -0.05, 0.05), _uniform(rng, -0.05, 0.05)),
                gain=_uniform(rng, 0.75, 1.2), gamma=_uniform(rng, 0.85, 1.2), noise=_uniform(rng, 0.5, 2.2),
                bias=_uniform(rng, -0.15, 0.15), bits_stored=(12, 16)[index % 2],
                slope=(1.0, 0.5)[index % 2], intercept=0.0, scale=(3000.0, 12000.0)[index % 2])


def default_prevalence(index: int) -> tuple[float, ...]:
    """Class shares of the site at ``index``: it favours one class (55 %), a source shortcut."""
    return tuple(0.55 if k == index % len(CLASSES) else 0.15 for k in range(len(CLASSES)))


def _counts(weights: Sequence[float], n: int) -> list[int]:
    """``n`` split by ``weights`` exactly (largest remainder; ties to the earlier class)."""
    total = float(sum(weights))
    share = [w * n / total for w in weights]
    counts = [math.floor(s) for s in share]
    order = sorted(range(len(weights)), key=lambda k: (counts[k] - share[k], k))
    for k in order[: n - sum(counts)]:
        counts[k] += 1
    return counts


def _pick(rng: np.random.Generator, n: int, fraction: float) -> set[int]:
    return {int(i) for i in rng.permutation(n)[: round(fraction * n)]}


def _site_dict(name: str, site: Site) -> dict[str, Any]:
    """A site profile as JSON-exact parameters (checked: a bad value is one error naming the site)."""
    if not isinstance(site, Site):
        raise TypeError(f"site_profiles[{name!r}] must be a phantoms.Site, got {type(site).__name__}")
    d = asdict(site)
    d["shift"] = [float(v) for v in d["shift"]]
    for key in ("zoom", "gain", "gamma", "slope", "scale"):
        if not float(d[key]) > 0:
            raise ValueError(f"site {name}: {key} must be > 0, got {d[key]}")
    if float(d["noise"]) < 0 or not 9 <= int(d["bits_stored"]) <= 16:
        raise ValueError(f"site {name}: need noise >= 0 and bits_stored in [9, 16], got {d['noise']}, "
                         f"{d['bits_stored']}")
    return d


def _cohort_params(sites, n_patients_per_site, slices_per_patient, prevalence, image_size, seed, test_fraction,
                   dicom_fraction, monochrome1_fraction, multiframe, site_profiles) -> dict:
    sites = [str(s) for s in sites]
    if not sites or len(set(sites)) != len(sites) or not all(_SAFE_NAME.fullmatch(s) for s in sites):
        raise ValueError(f"sites must be distinct names of letters, digits, '_', '.', '-', got {sites}")
    prevalence, site_profiles = dict(prevalence or {}), dict(site_profiles or {})
    for what, given in (("prevalence", prevalence), ("site_profiles", site_profiles)):
        unknown = sorted(set(given) - set(sites))
        if unknown:
            raise ValueError(f"{what} names sites {unknown} that are not in sites {sites}")
    shares = {}
    for k, site in enumerate(sites):
        w = [float(x) for x in prevalence.get(site, default_prevalence(k))]
        if len(w) != len(CLASSES) or min(w) < 0 or sum(w) <= 0:
            raise ValueError(f"prevalence of site {site} must be {len(CLASSES)} weights >= 0 with a positive sum "
                             f"(one per class, {', '.join(CLASSES)}), got {w}")
        shares[site] = w
    params = {"sites": sites, "n_patients_per_site": int(n_patients_per_site),
              "slices_per_patient": int(slices_per_patient), "prevalence": shares, "image_size": int(image_size),
              "seed": int(seed), "test_fraction": float(test_fraction), "dicom_fraction": float(dicom_fraction),
              "monochrome1_fraction": float(monochrome1_fraction), "multiframe": int(multiframe),
              "site_profiles": {site: _site_dict(site, site_profiles.get(site, site_profile(k)))
                                for k, site in enumerate(sites)},
              "jpeg_quality": JPEG_QUALITY}
    if params["n_patients_per_site"] < 1 or params["slices_per_patient"] < 1:
        raise ValueError(f"need n_patients_per_site >= 1 and slices_per_patient >= 1, "
                         f"got {n_patients_per_site}, {slices_per_patient}")
    if not 32 <= params["image_size"] <= 4096:
        raise ValueError(f"image_size must be in [32, 4096], got {image_size}")
    if params["seed"] < 0 or params["multiframe"] < 0:
        raise ValueError(f"seed and multiframe must be >= 0, got {seed}, {multiframe}")
    for key in ("test_fraction", "dicom_fraction", "monochrome1_fraction"):
        if not 0.0 <= params[key] <= 1.0:
            raise ValueError(f"{key} must be in [0, 1], got {params[key]}")
    return params


def read_cohort(root: str | os.PathLike) -> dict | None:
    """The ``cohort.json`` of a generated cohort in ``root``, or None when there is none."""
    return _read_marker(root, COHORT_MARKER, COHORT_FORMAT)


def _dicom_values(signal: np.ndarray, site: Site) -> np.ndarray:
    """Phantom signal → stored DICOM values at the site's encoding (full precision, clipped to its bits)."""
    stored = np.rint((signal.astype(np.float64) * site.scale - site.intercept) / site.slope)
    return np.clip(stored, 0, 2**site.bits_stored - 1).astype(np.uint16)


def _write_cohort(tmp: Path, params: dict) -> dict:
    seed, size, n_slices = params["seed"], params["image_size"], params["slices_per_patient"]
    rows: list[dict[str, Any]] = []
    patients: dict[str, dict[str, int]] = {}
    for site_idx, site_name in enumerate(params["sites"]):
        profile = params["site_profiles"][site_name]
        site = Site(**{**profile, "shift": tuple(profile["shift"])})
        n = params["n_patients_per_site"]
        shares = _counts(params["prevalence"][site_name], n)
        labels = [c for c, k in zip(CLASSES, shares, strict=True) for _ in range(k)]
        # Labels, the test patients, DICOM and MONOCHROME1 patients: each an independent seeded draw per site.
        labels = [labels[i] for i in np.random.default_rng([seed, 2, site_idx]).permutation(n)]
        test = _pick(np.random.default_rng([seed, 3, site_idx]), n, params["test_fraction"])
        dicom = sorted(_pick(np.random.default_rng([seed, 4, site_idx]), n, params["dicom_fraction"]))
        mono1 = {dicom[i] for i in _pick(np.random.default_rng([seed, 5, site_idx]), len(dicom),
                                         params["monochrome1_fraction"])}
        extra = params["multiframe"] if site_idx == 0 else 0
        patients[site_name] = dict.fromkeys(CLASSES, 0)
        for p in range(n + extra):
            multi = p >= n
            rng = np.random.default_rng([seed, 1, site_idx, p])
            label = labels[p] if not multi else CLASSES[p % len(CLASSES)]
            patient = f"{site_name}-P{p + 1:03d}" if not multi else f"{site_name}-MF{p - n + 1:02d}"
            anatomy = draw_anatomy(label, rng)
            age = int(rng.integers(20, 81))
            split = "" if not params["test_fraction"] else ("test" if p in test else "train")
            folder = tmp / site_name / patient
            folder.mkdir(parents=True)
            signals = [render_slice(anatomy, np.random.default_rng([seed, 6, site_idx, p, k]), size,
                                    z=k - (n_slices - 1) / 2, site=site) for k in range(n_slices)]
            base = {"label": label, "patient": patient, "site": site_name, "split": split, "age": age}
            tags = {"PatientID": patient, "PatientAge": f"{age:03d}Y", "InstitutionName": site_name,
                    "StudyInstanceUID": _uid(seed, site_name, patient, "study"),
                    "SeriesInstanceUID": _uid(seed, site_name, patient, "series")}
            window = (site.scale / 2, site.scale)
            if multi:  # one file holding all slices: a reader must refuse it, with a reason
                path = folder / f"{patient}.dcm"
                write_dicom(path, np.stack([_dicom_values(sig, site) for sig in signals]),
                            bits_stored=site.bits_stored, slope=site.slope, intercept=site.intercept, window=window,
                            tags={**tags, "SOPInstanceUID": _uid(seed, site_name, patient, "all")})
                rows.append({"path": path.relative_to(tmp).as_posix(), **base, "slice": ""})
                continue
            patients[site_name][label] += 1
            for k, signal in enumerate(signals):
                stem = folder / f"{patient}-s{k + 1:02d}"
                if p in dicom:
                    path = stem.with_suffix(".dcm")
                    write_dicom(path, _dicom_values(signal, site), bits_stored=site.bits_stored, slope=site.slope,
                                intercept=site.intercept, window=window, monochrome1=p in mono1,
                                tags={**tags, "InstanceNumber": k + 1,
                                      "SOPInstanceUID": _uid(seed, site_name, patient, str(k))})
                else:
                    path = stem.with_suffix(".jpg")
                    Image.fromarray(_to_uint8(signal), mode="L").save(path, format="JPEG", quality=JPEG_QUALITY)
                rows.append({"path": path.relative_to(tmp).as_posix(), **base, "slice": k + 1})
    with open(tmp / COHORT_MANIFEST, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return {"classes": list(CLASSES), "manifest": COHORT_MANIFEST, "rows": len(rows), "patients": patients}


def _uid(*parts: object) -> str:
    """A DICOM UID that is a pure function of ``parts`` (so a seed gives byte-identical files)."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[str(p) for p in parts])


def generate_cohort(root: str | os.PathLike, *, sites: Sequence[str] = ("A", "B"), n_patients_per_site: int = 6,
                    slices_per_patient: int = 4, prevalence: Mapping[str, Sequence[float]] | None = None,
                    image_size: int = 64, seed: int = 0, test_fraction: float = 0.0, dicom_fraction: float = 0.0,
                    monochrome1_fraction: float = 0.0, multiframe: int = 0,
                    site_profiles: Mapping[str, Site] | None = None, overwrite: bool = False) -> Path:
    """Write a phantom cohort: patients with several slices each, recorded at sites that differ.

    Writes ``root/<site>/<patient>/<patient>-sNN.{jpg,dcm}``, ``root/manifest.csv`` (columns
    ``path,label,patient,site,split,slice,age``; paths relative to ``root``, ``split`` is ``train``/``test``
    by patient, or empty when ``test_fraction`` is 0) and ``root/cohort.json`` (the parameters, site
    profiles included, and the patients per site and class). Built atomically and reused when the parameters match, as
    ``generate_phantoms``.

    A patient is one ``draw_anatomy``: all slices share pose, texture and lesion, and differ by slice
    position and noise, so slices of one patient are near-duplicates (a slice-level random split leaks).
    Site ``k`` records with ``site_profile(k)`` (field of view, brightness, contrast, noise; or its entry
    in ``site_profiles``) and holds
    the classes in its own shares (``default_prevalence(k)`` favours one class): a source shortcut.

    Args:
        root: output folder; replaced only if it is empty or an earlier cohort.
        sites: site names (folder-safe); their order picks the built-in site profiles.
        n_patients_per_site: patients per site, split among the classes by the site's prevalence exactly.
        slices_per_patient: slices per patient, centred on the lesion.
        prevalence: per site, one weight per class in ``CLASSES`` order (default ``default_prevalence``).
        image_size: square image side in pixels.
        seed: makes the cohort reproducible, byte for byte.
        test_fraction: share of each site's patients marked ``split=test`` (all their slices).
        dicom_fraction: share of each site's patients stored as single-frame MR DICOM at the site's
            bit depth (12 or 16 bits, full precision), the rest as 8-bit JPEG.
        monochrome1_fraction: share of the DICOM patients stored as MONOCHROME1 (inverted).
        multiframe: extra patients at the first site, each one multi-frame DICOM file (one row, empty
            ``slice``) that a reader of single slices has to refuse.
        site_profiles: per site a ``Site`` replacing its built-in profile (e.g. all ``Site()``: sites that
            record alike, a control for site effects).
        overwrite: regenerate even if ``cohort.json`` has the same parameters.
    Returns:
        ``Path(root)``.
    Raises:
        ValueError: a parameter is out of range. FileExistsError: ``root`` holds something else.

    Example:
        >>> root = generate_cohort("/tmp/cohort", sites=("A", "B"), n_patients_per_site=4, test_fraction=0.25)
        >>> (root / "manifest.csv").read_text().splitlines()[0]
        'path,label,patient,site,split,slice,age'
    """
    params = _cohort_params(sites, n_patients_per_site, slices_per_patient, prevalence, image_size, seed,
                            test_fraction, dicom_fraction, monochrome1_fraction, multiframe, site_profiles)
    return _build(Path(root), COHORT_MARKER, COHORT_FORMAT, COHORT_VERSION, params, overwrite,
                  lambda tmp: _write_cohort(tmp, params))


# --------------------------------------------------------------------------------------------- DICOM


def write_dicom(path: str | os.PathLike, pixels: np.ndarray, *, bits_stored: int = 12, slope: float = 1.0,
                intercept: float = 0.0, window: tuple[float, float] | None = None, monochrome1: bool = False,
                tags: Mapping[str, Any] | None = None) -> Path:
    """Write a real, uncompressed MR DICOM file of unsigned stored values.

    Args:
        path: the file to write.
        pixels: integer stored values in ``[0, 2**bits_stored)``; ``(rows, cols)`` gives a single-frame
            MR Image Storage slice, ``(frames, rows, cols)`` a multi-frame Enhanced MR Image Storage file.
            High values are bright.
        bits_stored: 9 to 16 (BitsAllocated is 16, HighBit bits_stored - 1).
        slope, intercept: RescaleSlope / RescaleIntercept: value = stored · slope + intercept.
        window: (WindowCenter, WindowWidth) in rescaled values, or None to write no window.
        monochrome1: write PhotometricInterpretation MONOCHROME1: the stored values are inverted
            (``2**bits_stored - 1 - pixels``) and the window mirrored, so a reader that applies the
            rescale, the window and then the MONOCHROME1 inversion sees the same picture as without.
        tags: more data elements by keyword (PatientID, SOPInstanceUID, InstanceNumber, ...).
    Returns:
        ``Path(path)``.

    Example:
        >>> write_dicom("/tmp/s.dcm", np.arange(4096, dtype=np.uint16).reshape(64, 64), window=(2048, 4096))
        PosixPath('/tmp/s.dcm')
    """
    path = Path(path)
    pixels = np.asarray(pixels)
    stored, top = _stored_values(pixels, bits_stored), 2**bits_stored - 1
    if monochrome1:
        stored = (top - stored).astype(np.uint16)
        if window is not None:  # value' = K - value with K = top·slope + 2·intercept: mirror the centre
            window = (top * slope + 2 * intercept - window[0], window[1])
    extra = dict(tags or {})
    ds = _mr_dataset(path, stored, str(extra.pop("SOPInstanceUID", "")))
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = _ds(slope), _ds(intercept), "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = _ds(window[0]), _ds(window[1])
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _stored_values(pixels: np.ndarray, bits_stored: int) -> np.ndarray:
    """``pixels`` as the uint16 values a DICOM file of ``bits_stored`` bits stores; a ``ValueError`` when
    ``bits_stored`` is outside [9, 16] or ``pixels`` is not a non-empty 2-D/3-D integer array inside its range."""
    if not 9 <= bits_stored <= 16:
        raise ValueError(f"bits_stored must be in [9, 16], got {bits_stored}")
    top = 2**bits_stored - 1
    if pixels.ndim not in (2, 3) or pixels.dtype.kind not in "ui" or pixels.size == 0:
        raise ValueError(f"pixels must be a non-empty 2-D or 3-D integer array, got {pixels.dtype} {pixels.shape}")
    if pixels.min() < 0 or pixels.max() > top:
        raise ValueError(f"pixels must lie in [0, {top}] for bits_stored={bits_stored}, "
                         f"got [{pixels.min()}, {pixels.max()}]")
    return pixels.astype(np.uint16)


def _mr_dataset(path: Path, stored: np.ndarray, instance_uid: str):
    """A new MR DICOM data set for ``stored`` (rows, cols) or (frames, rows, cols) values, to be saved at
    ``path``: Explicit VR Little Endian file meta, MR Image Storage for one frame and Enhanced MR Image
    Storage for several, the image size; the SOP instance UID is ``instance_uid``, or one derived from the
    stored values and the file name (the same file gets the same UID)."""
    import hashlib

    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import (
        UID,
        EnhancedMRImageStorage,
        ExplicitVRLittleEndian,
        MRImageStorage,
        generate_uid,
    )

    sop_class = MRImageStorage if stored.ndim == 2 else EnhancedMRImageStorage
    instance = UID(instance_uid or generate_uid(entropy_srcs=[hashlib.sha256(stored.tobytes()).hexdigest(),
                                                              path.name]))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop_class, instance, "MR"
    ds.Rows, ds.Columns = stored.shape[-2:]
    if stored.ndim == 3:
        ds.NumberOfFrames = stored.shape[0]
    return ds


def _ds(value: float) -> str:
    """A number as a DICOM decimal string (at most 16 characters)."""
    text = f"{float(value):.10g}"
    return text if len(text) <= 16 else f"{float(value):.8e}"
