"""Phantom cohorts and DICOM files: manifest, patients, sites, class shares, 12/16-bit DICOM, determinism, CLI."""

import csv
import hashlib
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from brainmri.data import phantoms
from brainmri.data.phantoms import (
    CLASSES,
    MANIFEST_COLUMNS,
    Site,
    default_prevalence,
    draw_anatomy,
    generate_cohort,
    read_cohort,
    render_phantom,
    render_slice,
    site_profile,
    write_dicom,
)

pydicom = pytest.importorskip("pydicom")

SMALL = {"sites": ("A", "B"), "n_patients_per_site": 6, "slices_per_patient": 4, "image_size": 64}


def _rows(root: Path) -> list[dict[str, str]]:
    with open(root / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _thumb(path: Path, px: int = 16) -> np.ndarray:
    """A standardised px × px thumbnail of a JPEG, or of a DICOM through the predict decoder."""
    from brainmri.use.inputs import decode_input

    image = decode_input(path).resize((px, px), Image.Resampling.BILINEAR)
    x = np.asarray(image, np.float64).ravel()
    return (x - x.mean()) / x.std()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return generate_cohort(tmp_path_factory.mktemp("cohort") / "c", **{**SMALL, "sites": ("A", "B", "C")},
                           test_fraction=1 / 3, seed=1)


def test_manifest_columns_counts_and_patients(tmp_path):
    start = time.perf_counter()
    root = generate_cohort(tmp_path / "c", **SMALL, test_fraction=1 / 3)
    took = time.perf_counter() - start
    assert took < 5.0, took  # 48 slices at 64 px; typically well under a second
    rows = _rows(root)
    assert tuple(rows[0]) == MANIFEST_COLUMNS
    assert len(rows) == 2 * 6 * 4
    assert sorted(p.name for p in root.iterdir()) == ["A", "B", "cohort.json", "manifest.csv"]
    assert {r["path"] for r in rows} == {p.relative_to(root).as_posix() for p in root.rglob("*.jpg")}
    by_patient = defaultdict(list)
    for r in rows:
        assert not Path(r["path"]).is_absolute() and (root / r["path"]).is_file()
        by_patient[r["patient"]].append(r)
    assert len(by_patient) == 12
    for patient, slices in by_patient.items():
        assert [s["slice"] for s in slices] == ["1", "2", "3", "4"]
        for key in ("label", "site", "split", "age"):  # one patient: one label, one site, one split
            assert len({s[key] for s in slices}) == 1, (patient, key)
        assert slices[0]["label"] in CLASSES and patient.startswith(slices[0]["site"] + "-")
    splits = Counter((s[0]["site"], s[0]["split"]) for s in by_patient.values())
    assert splits == {("A", "train"): 4, ("A", "test"): 2, ("B", "train"): 4, ("B", "test"): 2}
    info = read_cohort(root)
    assert info["rows"] == 48 and info["params"]["sites"] == ["A", "B"]
    assert {site: sum(c.values()) for site, c in info["patients"].items()} == {"A": 6, "B": 6}
    with Image.open(root / rows[0]["path"]) as im:
        assert im.format == "JPEG" and im.mode == "L" and im.size == (64, 64)


def test_no_test_fraction_leaves_split_empty(tmp_path):
    root = generate_cohort(tmp_path / "c", sites=("X",), n_patients_per_site=2, slices_per_patient=1)
    assert {r["split"] for r in _rows(root)} == {""}


def test_slices_of_a_patient_are_near_duplicates(cohort):
    """Each slice's most similar other slice (thumbnail correlation) is a slice of the same patient."""
    rows = _rows(cohort)
    x = np.stack([_thumb(cohort / r["path"]) for r in rows])
    corr = x @ x.T / x.shape[1]
    np.fill_diagonal(corr, -np.inf)
    patient = np.array([r["patient"] for r in rows])
    nearest = patient[corr.argmax(1)]
    assert (nearest == patient).mean() >= 0.95, (nearest == patient).mean()
    same = (patient[:, None] == patient[None]) & np.isfinite(corr)
    assert corr[same].mean() > 0.95 > corr[~same & np.isfinite(corr)].mean()
    # ... and yet not copies: neighbouring slices differ (slice position and noise)
    assert len({hashlib.sha256((cohort / r["path"]).read_bytes()).hexdigest() for r in rows}) == len(rows)


def test_sites_differ_in_intensity_and_field_of_view(cohort):
    rows = _rows(cohort)
    mean, head = defaultdict(list), defaultdict(list)
    for r in rows:
        pixels = np.asarray(Image.open(cohort / r["path"]), np.float64)
        mean[r["site"]].append(pixels.mean())
        head[r["site"]].append((pixels > 40).mean())  # share of the image the head covers
    mean = {s: np.mean(v) for s, v in mean.items()}
    head = {s: np.mean(v) for s, v in head.items()}
    # site B: wide field of view (zoom 0.8), dark; site C: narrow (zoom 1.14, the head cut by the edge), bright
    assert site_profile(1).zoom < site_profile(0).zoom < site_profile(2).zoom
    assert head["B"] < 0.8 * head["A"] and head["C"] > 1.15 * head["A"], head
    assert mean["B"] < 0.75 * mean["A"] and mean["C"] > 1.2 * mean["A"], mean
    # and the noise: the background (image corners) is noisier at B than at C
    corners = {s: np.std([np.asarray(Image.open(cohort / r["path"]), np.float64)[:6, :6]
                          for r in rows if r["site"] == s]) for s in "BC"}
    assert corners["B"] > 2 * corners["C"], corners


def test_class_shares_differ_by_site(cohort):
    info = read_cohort(cohort)
    for k, site in enumerate(("A", "B", "C")):
        counts = info["patients"][site]
        favoured = CLASSES[k]
        assert default_prevalence(k)[k] == max(default_prevalence(k))
        assert counts[favoured] == max(counts.values()) and counts[favoured] >= 3, (site, counts)
    assert len({max(c, key=c.get) for c in info["patients"].values()}) == 3  # each site has its own majority
    rows = _rows(cohort)
    per_patient = {(r["site"], r["patient"]): r["label"] for r in rows}
    assert Counter(per_patient.values()) == sum((Counter(c) for c in info["patients"].values()), Counter())


def test_explicit_prevalence_is_exact(tmp_path):
    root = generate_cohort(tmp_path / "c", sites=("north", "south"), n_patients_per_site=8, slices_per_patient=1,
                           prevalence={"north": [1, 1, 0, 0], "south": [0, 0, 0, 1]})
    assert read_cohort(root)["patients"] == {"north": {"glioma": 4, "meningioma": 4, "notumor": 0, "pituitary": 0},
                                             "south": {"glioma": 0, "meningioma": 0, "notumor": 0, "pituitary": 8}}


def test_site_profiles_replace_the_built_in_ones(tmp_path):
    """Sites that record alike (a control): same look, and the profiles are part of the parameters."""
    same = {"A": Site(), "B": Site()}
    root = generate_cohort(tmp_path / "c", **SMALL, site_profiles=same, prevalence={"A": [1] * 4, "B": [1] * 4})
    info = read_cohort(root)
    assert info["params"]["site_profiles"]["B"]["zoom"] == 1.0
    assert info["params"]["site_profiles"]["B"]["shift"] == [0, 0]
    means = {s: np.mean([np.asarray(Image.open(root / r["path"]), np.float64).mean() for r in _rows(root)
                         if r["site"] == s]) for s in "AB"}
    assert abs(means["A"] - means["B"]) < 0.05 * means["A"], means
    default = read_cohort(generate_cohort(tmp_path / "d", **SMALL))["params"]["site_profiles"]
    assert default["B"]["zoom"] == site_profile(1).zoom == 0.8 and default["B"]["bits_stored"] == 16
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    generate_cohort(root, **SMALL, site_profiles=same, prevalence={"A": [1] * 4, "B": [1] * 4})  # reused
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamps
    with pytest.raises(ValueError, match="site B: zoom must be > 0"):
        generate_cohort(tmp_path / "e", **SMALL, site_profiles={"B": Site(zoom=0.0)})
    with pytest.raises(ValueError, match=r"site_profiles names sites \['Z'\]"):
        generate_cohort(tmp_path / "e", **SMALL, site_profiles={"Z": Site()})


def test_dicom_rows_are_full_precision_12_and_16_bit(tmp_path):
    root = generate_cohort(tmp_path / "c", **SMALL, dicom_fraction=0.5)
    rows = _rows(root)
    dicom = [r for r in rows if r["path"].endswith(".dcm")]
    assert len(dicom) == 2 * 3 * 4  # half of each site's patients, all their slices
    assert len({r["patient"] for r in dicom}) == 6
    bits = {}
    for r in dicom:
        ds = pydicom.dcmread(root / r["path"])
        assert ds.file_meta.MediaStorageSOPClassUID == pydicom.uid.MRImageStorage == ds.SOPClassUID
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.Modality == "MR" and ds.PhotometricInterpretation == "MONOCHROME2"
        assert ds.PatientID == r["patient"] and ds.InstitutionName == r["site"] and ds.InstanceNumber == int(r["slice"])
        assert "WindowCenter" in ds and "WindowWidth" in ds and "RescaleSlope" in ds and "RescaleIntercept" in ds
        stored = ds.pixel_array
        assert stored.shape == (64, 64) and stored.dtype == np.uint16
        assert stored.max() < 2**ds.BitsStored and ds.HighBit == ds.BitsStored - 1
        # full precision: far more levels than 8 bits, spread over the stored range, not 256 steps scaled up
        levels = np.unique(stored)
        assert len(levels) > 256 and stored.max() > 2 ** (ds.BitsStored - 3)
        assert np.gcd.reduce(np.diff(levels)) == 1
        bits.setdefault(r["site"], set()).add(int(ds.BitsStored))
    assert bits == {"A": {12}, "B": {16}}
    # the window maps the site's signal range onto the display: decoded slices look like the JPEG rows
    from brainmri.use.inputs import decode_input
    jpg = [np.asarray(Image.open(root / r["path"]), np.float64).mean() for r in rows if r["site"] == "A"
           and r["path"].endswith(".jpg")]
    dcm = [np.asarray(decode_input(root / r["path"]), np.float64).mean() for r in dicom if r["site"] == "A"]
    assert abs(np.mean(dcm) - np.mean(jpg)) < 0.15 * np.mean(jpg)


def test_monochrome1_files_decode_to_the_same_picture(tmp_path):
    from brainmri.use.inputs import decode_input

    plain = generate_cohort(tmp_path / "m2", **SMALL, dicom_fraction=1.0)
    mixed = generate_cohort(tmp_path / "m1", **SMALL, dicom_fraction=1.0, monochrome1_fraction=0.5)
    kinds = Counter()
    for r in _rows(mixed):
        ds = pydicom.dcmread(mixed / r["path"])
        kinds[ds.PhotometricInterpretation] += 1
        if ds.PhotometricInterpretation == "MONOCHROME1":
            assert not np.array_equal(ds.pixel_array, pydicom.dcmread(plain / r["path"]).pixel_array)
        a = np.asarray(decode_input(mixed / r["path"]), np.int16)
        b = np.asarray(decode_input(plain / r["path"]), np.int16)
        assert np.abs(a - b).max() <= 1, r["path"]
    assert kinds == {"MONOCHROME1": 24, "MONOCHROME2": 24}  # 3 of 6 patients per site, 4 slices each


def test_multiframe_rows_are_one_file_a_slice_reader_refuses(tmp_path):
    from brainmri.use.inputs import InputError, decode_input

    root = generate_cohort(tmp_path / "c", **SMALL, dicom_fraction=0.0, multiframe=2)
    multi = [r for r in _rows(root) if r["slice"] == ""]
    assert [r["patient"] for r in multi] == ["A-MF01", "A-MF02"] and len(_rows(root)) == 48 + 2
    ds = pydicom.dcmread(root / multi[0]["path"])
    assert ds.NumberOfFrames == 4 and ds.pixel_array.shape == (4, 64, 64)
    assert ds.SOPClassUID == pydicom.uid.EnhancedMRImageStorage
    with pytest.raises(InputError, match="multi-frame"):
        decode_input(root / multi[0]["path"])
    assert sum(sum(c.values()) for c in read_cohort(root)["patients"].values()) == 12  # not counted as patients


def test_same_seed_is_byte_identical_other_seed_differs(tmp_path):
    kw = dict(**SMALL, dicom_fraction=0.5, monochrome1_fraction=0.5, test_fraction=0.5, multiframe=1)
    a = _files(generate_cohort(tmp_path / "a", **kw, seed=4))
    b = _files(generate_cohort(tmp_path / "b", **kw, seed=4))
    c = _files(generate_cohort(tmp_path / "c", **kw, seed=5))
    assert a == b
    images = [k for k in a if k.endswith((".jpg", ".dcm"))]
    assert all(a[k] != c.get(k) for k in images)


def test_reuse_replace_and_refuse(tmp_path):
    root = generate_cohort(tmp_path / "c", **SMALL)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert generate_cohort(root, **SMALL) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamps
    generate_cohort(root, **{**SMALL, "n_patients_per_site": 2})
    assert len(_rows(root)) == 2 * 2 * 4
    with pytest.raises(FileExistsError, match="not a phantom set"):
        phantoms.generate_phantoms(root, n_per_class=1, n_test_per_class=0, image_size=32)  # not its own kind
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "scan.dcm").write_bytes(b"keep")
    with pytest.raises(FileExistsError, match="not a phantom cohort"):
        generate_cohort(tmp_path / "mine", **SMALL, overwrite=True)
    assert (tmp_path / "mine" / "scan.dcm").read_bytes() == b"keep"


@pytest.mark.parametrize("bad, match", [
    ({"sites": ()}, "sites"), ({"sites": ("A", "A")}, "sites"), ({"sites": ("a/b",)}, "sites"),
    ({"n_patients_per_site": 0}, "n_patients_per_site"), ({"slices_per_patient": 0}, "slices_per_patient"),
    ({"prevalence": {"Z": [1, 1, 1, 1]}}, "not in sites"), ({"prevalence": {"A": [1, 1]}}, "prevalence of site A"),
    ({"prevalence": {"A": [0, 0, 0, 0]}}, "positive sum"), ({"image_size": 16}, "image_size"),
    ({"dicom_fraction": 1.5}, "dicom_fraction"), ({"test_fraction": -0.1}, "test_fraction"),
    ({"multiframe": -1}, "multiframe")])
def test_invalid_parameters_raise_before_writing(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        generate_cohort(tmp_path / "c", **{**SMALL, **bad})
    assert not (tmp_path / "c").exists()


def test_write_dicom_round_trip_and_checks(tmp_path):
    values = (np.arange(64 * 64, dtype=np.uint32) * 16 % 65536).astype(np.uint16).reshape(64, 64)
    path = write_dicom(tmp_path / "s16.dcm", values, bits_stored=16, slope=0.25, intercept=-1024.0,
                       window=(4000.0, 8000.0), tags={"PatientID": "P7", "InstanceNumber": 3})
    ds = pydicom.dcmread(path)
    assert np.array_equal(ds.pixel_array, values) and ds.BitsStored == 16 and ds.HighBit == 15
    assert float(ds.RescaleSlope) == 0.25 and float(ds.RescaleIntercept) == -1024.0
    assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (4000.0, 8000.0)
    assert ds.PatientID == "P7" and ds.InstanceNumber == 3 and "NumberOfFrames" not in ds

    twelve = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    ds = pydicom.dcmread(write_dicom(tmp_path / "s12.dcm", twelve))
    assert "WindowCenter" not in ds and ds.BitsStored == 12 and np.array_equal(ds.pixel_array, twelve)
    m1 = pydicom.dcmread(write_dicom(tmp_path / "m1.dcm", twelve, window=(1000.0, 500.0), monochrome1=True,
                                     slope=2.0, intercept=10.0))
    assert m1.PhotometricInterpretation == "MONOCHROME1" and np.array_equal(m1.pixel_array, 4095 - twelve)
    assert float(m1.WindowCenter) == 4095 * 2.0 + 2 * 10.0 - 1000.0  # the mirrored window
    with pytest.raises(ValueError, match=r"\[0, 4095\]"):
        write_dicom(tmp_path / "bad.dcm", twelve + 1)
    with pytest.raises(ValueError, match="integer"):
        write_dicom(tmp_path / "bad.dcm", twelve.astype(np.float32))
    assert not (tmp_path / "bad.dcm").exists()


def test_render_slice_is_render_phantom_at_the_centre_and_drifts_off_it():
    for label in CLASSES:
        state = np.random.default_rng([3, CLASSES.index(label)])
        anatomy = draw_anatomy(label, state)
        centre = render_slice(anatomy, state, 96)
        assert np.array_equal(np.clip(centre * 255.0 + 0.5, 0, 255).astype(np.uint8),
                              render_phantom(label, np.random.default_rng([3, CLASSES.index(label)]), 96))
        off = render_slice(anatomy, np.random.default_rng(0), 96, z=2.0, site=site_profile(1))
        assert off.dtype == np.float32 and off.shape == (96, 96) and not np.allclose(off, centre)


def test_render_phantom_pixels_are_pinned():
    """The folder sets of ``generate_phantoms`` are reused by VERSION: a drawing change must bump it."""
    digest = hashlib.sha256(b"".join(render_phantom(c, np.random.default_rng(0), 64).tobytes() for c in CLASSES))
    assert (phantoms.VERSION, digest.hexdigest()[:16]) == (2, "2d4aedcd244d21a4")


def test_cli_cohort(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "brainmri.data.phantoms", str(out), "--cohort", "--sites", "A,B",
                           "--patients-per-site", "3", "--slices-per-patient", "2", "--size", "48",
                           "--dicom-fraction", "0.5", "--prevalence", "A=1,0,0,1"],
                          capture_output=True, text=True, check=False, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr
    assert "12 phantom slices of 6 patients at 2 sites" in proc.stdout
    assert read_cohort(out)["patients"]["A"] == {"glioma": 2, "meningioma": 0, "notumor": 0, "pituitary": 1}
    assert {Path(r["path"]).suffix for r in _rows(out)} == {".jpg", ".dcm"}
    bad = subprocess.run([sys.executable, "-m", "brainmri.data.phantoms", str(tmp_path / "x"), "--cohort",
                          "--prevalence", "Z=1,1,1,1"], capture_output=True, text=True, check=False,
                         cwd=Path(__file__).parents[1])
    assert bad.returncode == 2 and "prevalence names sites ['Z']" in bad.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "x").exists()


def test_design_random_split_leaks_and_a_held_out_site_scores_lower(tmp_path):
    """What the cohort is for, on a logistic regression over 16 px thumbnails (benchmarks/cohort_shortcuts.py):
    a slice-level random split scores far above a patient-grouped one (neighbouring slices leak), and
    a held-out site scores below the patient-grouped CV over seen sites (site look + class shares)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
    from threadpoolctl import threadpool_limits

    root = generate_cohort(tmp_path / "c", sites=("A", "B", "C"), n_patients_per_site=16, slices_per_patient=4,
                           image_size=32, seed=0)
    rows = _rows(root)
    x = np.stack([np.asarray(Image.open(root / r["path"]).resize((16, 16), Image.Resampling.BILINEAR),
                             np.float64).ravel() for r in rows])
    x = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)
    y, patient, site = (np.array([r[k] for r in rows]) for k in ("label", "patient", "site"))

    def accuracy(splits) -> float:
        hits = 0
        for train, test in splits:
            model = LogisticRegression(max_iter=2000).fit(x[train], y[train])
            hits += int((model.predict(x[test]) == y[test]).sum())
        return hits / sum(len(test) for _, test in splits)

    with threadpool_limits(1):
        random = accuracy(list(StratifiedKFold(4, shuffle=True, random_state=0).split(x, y)))
        grouped_splits = list(StratifiedGroupKFold(4, shuffle=True, random_state=0).split(x, y, patient))
        grouped = accuracy(grouped_splits)
        held_out = np.mean([accuracy([(np.flatnonzero(site != s), np.flatnonzero(site == s))]) for s in "ABC"])
    for train, test in grouped_splits:
        assert not set(patient[train]) & set(patient[test])
    assert random > grouped + 0.25, (random, grouped)
    assert held_out < grouped - 0.1, (held_out, grouped)
