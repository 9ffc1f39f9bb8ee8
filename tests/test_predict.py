"""launch/predict.py on a real tiny run: same numbers as the run's own test predictions, DICOM slices
equal to their PNGs, Grad-CAM sheet, and bad inputs reported one line each while the rest is predicted."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT


@pytest.fixture(scope="module")
def trained(trained_run):
    return trained_run


def predict(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "launch" / "predict.py"), *map(str, args)],
                          cwd=cwd or ROOT, capture_output=True, text=True, timeout=600, env=os.environ)


def read_csv(path) -> dict[str, dict]:
    with open(path, newline="") as f:
        return {r["path"]: r for r in csv.DictReader(f)}


def probs(row, classes) -> np.ndarray:
    return np.array([float(row[f"prob_{c}"]) for c in classes])


CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]


def test_predictions_equal_the_runs_own_test_predictions(trained, phantom_root, tmp_path):
    out, cams = tmp_path / "preds.csv", tmp_path / "cams"
    proc = predict(trained, phantom_root / "Testing", "--out", out, "--cam", cams)
    assert proc.returncode == 0, proc.stderr
    got, want = read_csv(out), read_csv(trained / "predictions_test.csv")
    assert set(got) == set(want) and len(got) == 16
    for path, w in want.items():
        g = got[path]
        np.testing.assert_allclose(probs(g, CLASSES), probs(w, CLASSES), atol=2e-6)
        assert g["pred"] == w["pred"]
        # the nearest training image is found again from split.json's data root
        assert (g["nearest_train"], g["band"]) == (w["nearest_train"], w["band"])
        assert abs(float(g["similarity"]) - float(w["similarity"])) < 2e-3
    assert read_csv(tmp_path / "preds.skipped.csv") == {}
    # one overlay per image and one self-contained contact sheet
    assert len(list(cams.glob("*.png"))) == 16
    page = (cams / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 32 and "src=\"http" not in page


def write_dicom(path, grey: np.ndarray, monochrome1: bool = False, pixels: bool = True, syntax=None) -> None:
    """A real MR DICOM slice: 16-bit stored values, rescale slope/intercept and a window that maps back to ``grey``."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax or ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MRImageStorage, meta.MediaStorageSOPInstanceUID, "MR"
    if pixels:
        ds.Rows, ds.Columns = grey.shape
        ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 12, 11, 0
        ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
        value = 255 - grey.astype(np.int64) if monochrome1 else grey.astype(np.int64)  # MONOCHROME1: low = white
        ds.RescaleSlope, ds.RescaleIntercept = 0.25, -25  # stored = 4·value + 100
        ds.WindowCenter, ds.WindowWidth = 128, 256  # maps value 0..255 onto the full output range
        stored = (value * 4 + 100).astype(np.uint16)
        if syntax is not None:
            ds.PixelData = encapsulate([stored.tobytes()])
            ds["PixelData"].VR = "OB"
        else:
            ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_dicom_slices_and_bad_inputs(trained, phantom_root, tmp_path):
    from pydicom.uid import JPEGLSLossless

    scans = tmp_path / "scans"
    (scans / "sub").mkdir(parents=True)
    sources = sorted((phantom_root / "Testing").rglob("*.jpg"))[::5][:3]
    for k, src in enumerate(sources):
        grey = np.asarray(Image.open(src).convert("L"))
        Image.fromarray(grey).save(scans / f"s{k}.png")
        write_dicom(scans / "sub" / f"s{k}-m2.dcm", grey)
        write_dicom(scans / "sub" / f"s{k}-m1", grey, monochrome1=True)  # DICOM found by its magic, no extension
    # bad inputs: each is one line, the rest is still predicted
    broken = scans / "broken.jpg"
    broken.write_bytes(sources[0].read_bytes()[:300])
    write_dicom(scans / "report.dcm", None, pixels=False)
    write_dicom(scans / "compressed.dcm", grey, syntax=JPEGLSLossless)
    unknown = tmp_path / "scan.xyz"
    unknown.write_bytes(b"\x00\x01 not an image")
    (scans / ".DS_Store").write_bytes(b"junk")  # junk is ignored, as by the training loader
    (scans / "notes.txt").write_text("not a scan")

    out = tmp_path / "out" / "p.csv"
    proc = predict(trained, scans, unknown, "--out", out, "--no-similarity")
    assert proc.returncode == 0, proc.stderr
    rows = read_csv(out)
    assert len(rows) == 9
    for k in range(3):
        png = probs(rows[str(scans / f"s{k}.png")], CLASSES)
        for dcm in (scans / "sub" / f"s{k}-m2.dcm", scans / "sub" / f"s{k}-m1"):
            np.testing.assert_allclose(probs(rows[str(dcm)], CLASSES), png, atol=1e-6)
            assert rows[str(dcm)]["pred"] == rows[str(scans / f"s{k}.png")]["pred"]
    skipped = {p: r["error"] for p, r in read_csv(out.with_name("p.skipped.csv")).items()}
    assert set(skipped) == {str(broken), str(scans / "report.dcm"), str(scans / "compressed.dcm"), str(unknown)}
    assert "unreadable image" in skipped[str(broken)]
    assert "without pixel data" in skipped[str(scans / "report.dcm")]
    assert "JPEG-LS" in skipped[str(scans / "compressed.dcm")] and "install" in skipped[str(scans / "compressed.dcm")]
    assert "unknown format .xyz" in skipped[str(unknown)]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("skipped ")]
    assert len(lines) == 4 and "Traceback" not in proc.stderr
    assert "9 prediction(s)" in proc.stdout and "4 skipped" in proc.stdout


def test_a_run_without_a_best_checkpoint_is_one_line(trained, phantom_root, tmp_path):
    run = tmp_path / "unfinished"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(trained / "config.yaml", run / "config.yaml")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(trained, corrupt, ignore=shutil.ignore_patterns("wandb"))
    best = corrupt / "checkpoints" / "best.pt"
    best.write_bytes(best.read_bytes()[:1000])
    for target, expected in ((run, "no best checkpoint"), (tmp_path / "nowhere", "run directory not found"),
                             (corrupt, "best.pt is unreadable")):
        proc = predict(target, phantom_root / "Testing", "--out", tmp_path / "x.csv")
        assert proc.returncode == 2
        assert proc.stderr.strip().count("\n") == 0 and expected in proc.stderr, proc.stderr
    assert not (tmp_path / "x.csv").exists()


def test_the_nearest_training_image_comes_from_split_json_without_scanning_the_data_root(trained, phantom_root,
                                                                                          tmp_path):
    """The training reference is read from the run's file list: no folder of the data root is listed."""
    from brainmri.use.predict import predict_files
    from brainmri.use.trained import load_trained

    files = [phantom_root / "Testing" / "glioma" / f for f in sorted(os.listdir(phantom_root / "Testing" / "glioma"))]
    trained_run = load_trained(trained)
    listed: list[str] = []
    watching = [True]

    def hook(event, args):
        if watching[0] and event in ("os.listdir", "os.scandir") and args and args[0] is not None:
            listed.append(str(args[0]))

    sys.addaudithook(hook)  # a real audit hook on this process's directory listings
    try:
        pred = predict_files(trained_run, files)
    finally:
        watching[0] = False
    assert pred.band is not None and pred.reference_note == "" and len(pred.paths) == 4
    assert all(n.startswith(str(phantom_root / "Training")) for n in pred.nearest_train)
    assert not [p for p in listed if p.startswith(str(phantom_root))], listed


def test_a_changed_training_root_is_said_in_one_line_and_the_rest_is_predicted(trained_run, phantom_root, tmp_path):
    run, data = tmp_path / "run", tmp_path / "data"
    shutil.copytree(trained_run, run)
    shutil.copytree(phantom_root, data)
    split = json.loads((run / "split.json").read_text())
    split["data_root"] = str(data)
    (run / "split.json").write_text(json.dumps(split))
    removed = data / split["files"]["train"][0]["path"]
    removed.unlink()
    proc = predict(run, phantom_root / "Testing" / "notumor", "--out", tmp_path / "p.csv")
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and f"the data under {data} changed since training: 1 file(s) missing" in notes[0]
    rows = read_csv(tmp_path / "p.csv")
    assert len(rows) == 4 and all(r["band"] == "" for r in rows.values())
