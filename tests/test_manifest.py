"""Manifests as a data source: the folder layout as one way of building one, bad rows, patients, sites, DICOM."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TINY, run_train

from brainmri.config import DataConfig
from brainmri.data.datasets import build_split

FIXTURE = Path(__file__).parent / "fixtures" / "folder_split_main.json"
REFERENCE_CONFIGS = {"split": DataConfig(val_fraction=0.25), "exact": DataConfig(group_by="exact", split_seed=3),
                     "folds": DataConfig(folds=3, fold=1, split_seed=1)}


@pytest.mark.parametrize("name", sorted(REFERENCE_CONFIGS))
def test_a_folder_root_gives_the_split_it_gave_before_manifests(phantom_root, name):
    """The fixture is the split record of the session's phantoms (generate_phantoms(n_per_class=12,
    n_test_per_class=4, image_size=64, seed=0)) written by brainmri before a folder became one way of
    building a manifest: every part's file list, labels, groups and folds must be identical."""
    want = json.loads(FIXTURE.read_text())[name]
    record = build_split(REFERENCE_CONFIGS[name], phantom_root).record()
    got = {part: [[r["path"], r["label"], r.get("fold"), r.get("group"), r["sha1"]] for r in record["files"][part]]
           for part in ("train", "val", "test")}
    sha = lambda d: sorted(r[4] for part in ("train", "val", "test") for r in d[part])  # noqa: E731
    assert sha(got) == sha(want), "the phantom generator changed its files: rewrite the fixture on the old code"
    for part in ("train", "val", "test"):
        assert got[part] == want[part], part
    assert record["manifest"] == want["manifest"]


# ------------------------------------------------------------------------------------ helpers
def write_dicom12(path: Path, grey: np.ndarray, window: bool = True, monochrome1: bool = False,
                  frames: int = 1) -> np.ndarray:
    """A real 12-bit MR DICOM slice (pydicom) whose stored values spread ``grey`` (0-255) over 0..4080
    plus a fine 0..15 ramp, so that the slice holds far more than 256 levels; returns the stored values."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MRImageStorage, meta.MediaStorageSOPInstanceUID, "MR"
    h, w = grey.shape
    ramp = (np.arange(h * w).reshape(h, w) % 16)
    stored = (grey.astype(np.int64) * 16 + ramp).clip(0, 4095).astype(np.uint16)
    if monochrome1:
        stored = (4095 - stored).astype(np.uint16)
    ds.Rows, ds.Columns = h, w
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 12, 11, 0
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100  # modality values 2·stored − 100
    if window:
        ds.WindowCenter, ds.WindowWidth = 2 * 2048 - 100, 2 * 4096  # the whole 12-bit range
    if frames > 1:
        ds.NumberOfFrames = frames
        ds.PixelData = np.concatenate([stored] * frames).tobytes()
    else:
        ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return stored


def write_csv(path: Path, header: list[str], rows: list[list], sep: str = ",") -> Path:
    path.write_text("\n".join(sep.join(str(v) for v in row) for row in [header, *rows]) + "\n")
    return path


@pytest.fixture(scope="module")
def scans(phantom_root, tmp_path_factory) -> dict:
    """A lab export made from the phantoms: JPEG and 12-bit DICOM rows, three slices per patient, two
    sites, the Testing images as the split column's test rows, a metadata column, and five bad rows."""
    base = tmp_path_factory.mktemp("export")
    (base / "dicom").mkdir()
    rows, patients = [], {}
    for part, folder in (("", "Training"), ("test", "Testing")):
        for cls_dir in sorted((phantom_root / folder).iterdir()):
            for k, src in enumerate(sorted(cls_dir.glob("*.jpg"))):
                patient = f"{folder[:2]}-{cls_dir.name}-{k // 3}"
                site = "north" if (k // 3) % 2 == 0 else "south"
                path: str = str(src)  # absolute
                if k % 2 == 0 and folder == "Training" or k == 1:
                    dcm = base / "dicom" / f"{folder}-{cls_dir.name}-{k}.dcm"
                    write_dicom12(dcm, np.asarray(Image.open(src).convert("L")))
                    path = f"dicom/{dcm.name}"  # relative to the manifest's folder
                rows.append([path, cls_dir.name, patient, site, part, f"scanner-{site}-{k % 2}"])
                patients[patient] = part
    good = len(rows)
    first_train = rows[0]
    shutil.copy(sorted((phantom_root / "Training" / "glioma").glob("*.jpg"))[1], base / "extra.jpg")
    bad = [
        ["dicom/missing.dcm", "glioma", "Tr-x-0", "north", "", "s"],  # missing file
        [rows[3][0].replace(".jpg", ".jpg"), "", "Tr-x-1", "north", "", "s"],  # empty label
        [str(sorted((phantom_root / "Testing" / "glioma").glob("*.jpg"))[0]), "astrocytoma", "Te-x", "south", "test",
         "s"],  # unknown label (data.classes is fixed)
        list(first_train),  # duplicate path
        ["extra.jpg", "glioma", first_train[2], "north", "test", "s"],  # a training-pool patient as test
    ]
    header = ["path", "label", "patient", "site", "split", "scanner"]
    manifest = write_csv(base / "scans.csv", header, rows + bad)
    return {"manifest": manifest, "good": good, "bad_rows": list(range(good + 2, good + 2 + len(bad))),
            "patients": patients}


def test_a_manifest_of_jpeg_and_12bit_dicom_rows_trains_with_patients_sites_and_bad_rows(scans, tmp_path):
    run, cache = tmp_path / "run", tmp_path / "cache"
    classes = "[glioma,meningioma,notumor,pituitary]"
    run_train("--config", "configs/baseline_cnn.yaml", *TINY, f"data.manifest={scans['manifest']}",
              f"data.classes={classes}", "data.group_by=patient", "data.max_skipped_fraction=0.1",
              "data.cache=decoded", f"data.cache_dir={cache}", f"run_dir={run}", "train.epochs=1",
              "train.max_steps_per_epoch=2", "wandb.enabled=false")
    record = json.loads((run / "split.json").read_text())
    assert record["source"] == str(scans["manifest"]) and record["sites"] == ["north", "south"]
    part_of: dict[str, set] = {}
    for part in ("train", "val", "test"):
        for r in record["files"][part]:
            part_of.setdefault(r["patient"], set()).add(part)
    assert all(len(p) == 1 for p in part_of.values()), "a patient in two parts"
    # the split column's test rows are the test part, and nothing else is
    assert {p for p, parts in part_of.items() if parts == {"test"}} == {p for p, s in scans["patients"].items()
                                                                        if s == "test"}
    assert record["train"] + record["val"] + record["test"] == scans["good"]
    # bad rows: listed with row number, path and reason; also at the end of the log
    skipped = json.loads((run / "skipped_files.json").read_text())["files"]
    reasons = {s["row"]: s["error"] for s in skipped}
    rows = scans["bad_rows"]
    assert "file not found" in reasons[rows[0]] and "empty label" in reasons[rows[1]]
    assert "unknown label 'astrocytoma'" in reasons[rows[2]] and "duplicate path (also row 2)" in reasons[rows[3]]
    assert "is in split (empty)" in reasons[rows[4]] and "and 'test'" in reasons[rows[4]]
    assert len(skipped) == 5
    log = (run / "train.log").read_text().splitlines()
    assert f"row {rows[-1]} " in log[-2] or any(f"row {rows[-1]} " in line for line in log[-8:])
    # DICOM rows at full precision: the decoded cache is 16-bit and holds more than 8 bits of levels
    stores = [np.load(p, mmap_mode="r") for p in (cache / "decoded").glob("*.npy")]
    assert stores and all(s.dtype == np.uint16 for s in stores)
    assert any((np.asarray(s) % 257 != 0).any() for s in stores)
    # per-site test metrics in the summary; the manifest's columns in the predictions file
    summary = json.loads((run / "summary.json").read_text())
    for site in ("north", "south"):
        assert 0.0 <= summary[f"test/site/{site}/acc"] <= 1.0 and summary[f"test/site/{site}/n"] > 0
    assert summary["test/site/north/n"] + summary["test/site/south/n"] == summary["test/n"]
    import csv

    with open(run / "predictions_test.csv") as f:
        preds = list(csv.DictReader(f))
    assert {"row", "patient", "site", "scanner"} <= set(preds[0]) and preds[0]["scanner"].startswith("scanner-")
    from brainmri.data.datasets import Split

    again = Split.from_record(record)  # the record rebuilds the split, paths relative to the manifest's folder
    assert again.source == str(scans["manifest"]) and {s.patient for s in again.test} == {
        p for p, s in scans["patients"].items() if s == "test"}
    again.check_unchanged()


@pytest.fixture(scope="module")
def three_sites(phantom_root, tmp_path_factory) -> Path:
    """Every phantom (training and test images) as one manifest row: two slices per patient, three sites."""
    base = tmp_path_factory.mktemp("sites")
    rows = []
    for folder in ("Training", "Testing"):
        for cls_dir in sorted((phantom_root / folder).iterdir()):
            for k, src in enumerate(sorted(cls_dir.glob("*.jpg"))):
                patient = f"{folder}-{cls_dir.name}-{k // 2}"
                rows.append([str(src), cls_dir.name, patient, "abc"[(k // 2) % 3]])
    return write_csv(base / "scans.tsv", ["path", "label", "patient", "site"], rows, sep="\t")


def test_test_site_holds_a_whole_site_out(three_sites, tmp_path):
    split = build_split(DataConfig(test_site="b", group_by="patient+near", cache_dir=str(tmp_path)), three_sites)
    assert {s.site for s in split.test} == {"b"} and not {s.site for s in split.train + split.val} & {"b"}
    held = {s.patient for s in split.test}
    assert not held & {s.patient for s in split.train + split.val}
    assert len(split.train) + len(split.val) + len(split.test) == 64 and split.record()["test_site"] == "b"
    from brainmri.data.files import DataError

    with pytest.raises(DataError, match=r"data.test_site=z: no such site .* \(sites: a, b, c\)"):
        build_split(DataConfig(test_site="z", cache_dir=str(tmp_path)), three_sites)


def test_folds_sites_makes_one_task_per_site_and_the_collector_a_leave_one_site_out_table(three_sites, tmp_path):
    from brainmri.results.collect import collect_runs, compare
    from brainmri.results.report import to_markdown
    from brainmri.sweep.expand import SweepError, load_sweep

    spec = tmp_path / "loso.yaml"
    spec.write_text(f"name: loso\nrecipe: baseline_cnn\nfolds: sites\nseeds: [0]\n"
                    f"overrides:\n  data.manifest: {three_sites}\n  data.group_by: patient\n")
    sweep = load_sweep(spec, [], tmp_path / "sweeps")
    assert [t.params["data.test_site"] for t in sweep.tasks] == ["a", "b", "c"]
    for task in sweep.tasks:  # each task trained for real, as the sweep's job would
        run_train("--config", task.config_path, *task.overrides, *TINY, "train.epochs=1",
                  "train.max_steps_per_epoch=1", "wandb.enabled=false", f"data.cache_dir={tmp_path / 'cache'}")
    cmp = compare(collect_runs([sweep.dir]))
    assert len(cmp.recipes) == 1 and len(cmp.recipes[0].runs) == 3  # the sites are replicates, not configurations
    rows = {r.held_out_site: r for r in cmp.loso}
    assert list(rows) == ["a", "b", "c", "mean"]
    for site in "abc":
        summary = json.loads((Path(sweep.tasks["abc".index(site)].run_dir) / "summary.json").read_text())
        assert rows[site].acc == summary["test/acc"] and summary[f"test/site/{site}/n"] == summary["test/n"]
    assert rows["mean"].acc == pytest.approx(np.mean([rows[s].acc for s in "abc"]))
    text = to_markdown(cmp)
    assert "## Leave one site out" in text and "| mean " in text
    from brainmri.results.report_html import render_html

    page = render_html(cmp)  # the HTML report has the table too
    loso = page.split("id='s7c'")[1].split("</section>")[0]
    assert "Leave one site out" in loso and "<td>mean</td>" in loso and f"<td>{rows['a'].acc:.3f}</td>" in loso
    spec.write_text(spec.read_text() + "  data.test_site: a\n")
    with pytest.raises(SweepError, match="folds: sites holds every site out in turn"):
        load_sweep(spec, [], tmp_path / "sweeps")


def test_the_collector_shows_test_accuracy_per_site_in_every_writer(scans, tmp_path):
    """Two seeds trained on a manifest with sites and test rows: per recipe, each site's test accuracy over the seeds in
    the ``sites`` table (Markdown, CSV, LaTeX) and in the HTML report; no leave-one-site-out table."""
    import csv
    import io

    from brainmri.results.collect import collect_runs, compare
    from brainmri.results.report import to_csv, to_latex, to_markdown
    from brainmri.results.report_html import render_html

    summaries = []
    for seed in (0, 1):
        run = tmp_path / "sweep" / "runs" / f"s{seed}"
        run_train("--config", "configs/baseline_cnn.yaml", *TINY, f"data.manifest={scans['manifest']}",
                  "data.classes=[glioma,meningioma,notumor,pituitary]", "data.max_skipped_fraction=0.1",
                  "data.group_by=patient", f"seed={seed}", f"run_dir={run}", "train.epochs=1",
                  "train.max_steps_per_epoch=1", "wandb.enabled=false", f"data.cache_dir={tmp_path / 'cache'}")
        summaries.append(json.loads((run / "summary.json").read_text()))
    cmp = compare(collect_runs([tmp_path / "sweep"]))
    assert len(cmp.recipes) == 1 and len(cmp.recipes[0].runs) == 2 and not cmp.loso
    sites = sorted({k.split("/")[2] for s in summaries for k in s if k.startswith("test/site/")})
    assert sites == ["north", "south"]
    rows = {r["site"]: r for r in csv.DictReader(io.StringIO(to_csv(cmp, table="sites")))}
    assert sorted(rows) == sites
    for site in sites:
        accs = [s[f"test/site/{site}/acc"] for s in summaries if f"test/site/{site}/acc" in s]
        assert float(rows[site]["acc_mean"]) == pytest.approx(np.mean(accs))
        assert int(rows[site]["n_replicates"]) == len(accs)
    text = to_markdown(cmp, table="sites")
    assert text.startswith("# Recipe comparison per site") and all(f"| {s} |" in text for s in sites)
    assert "Leave one site out" not in text
    assert "tab:sites" in to_latex(cmp, table="sites")
    page = render_html(cmp)
    section = page.split("id='s7b'")[1].split("</section>")[0]
    assert "Accuracy per site" in section and all(f"<td>{s}</td>" in section for s in sites)
    assert "id='s7c'" not in page


def test_a_manifest_that_cannot_be_used_is_one_line_exit_2_before_training(phantom_root, tmp_path):
    from brainmri.data.files import DataError
    from brainmri.data.manifest import read_manifest

    images = sorted(str(p) for p in (phantom_root / "Training").rglob("*.jpg"))
    no_label = write_csv(tmp_path / "no_label.csv", ["path", "patient"], [[p, "x"] for p in images])
    with pytest.raises(DataError, match=r"no_label.csv has no label column \(header: path, patient\)"):
        read_manifest(no_label)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty.csv is empty"):
        read_manifest(tmp_path / "empty.csv")
    header_only = write_csv(tmp_path / "header.csv", ["path", "label"], [])
    with pytest.raises(DataError, match="header.csv has a header but no rows"):
        read_manifest(header_only)
    # 3 of 48 rows missing: 6.25 % > the default 5 %; allowed with a larger data.max_skipped_fraction
    rows = [[p, Path(p).parent.name] for p in images[:45]] + [[f"gone{i}.jpg", "glioma"] for i in range(3)]
    many = write_csv(tmp_path / "many.csv", ["path", "label"], rows)
    with pytest.raises(DataError, match=r"many.csv: 3 of 48 rows cannot be used \(6.2%.*first: row 47 gone0.jpg: "
                                         "file not found"):
        read_manifest(many)
    assert len(read_manifest(many, max_skipped_fraction=0.1).samples) == 45
    proc = run_train("--config", "configs/baseline_cnn.yaml", *TINY, f"data.manifest={many}",
                     f"run_dir={tmp_path / 'run'}", "wandb.enabled=false", check=False, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert proc.stderr.startswith("error: manifest ") and "many.csv" in proc.stderr
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def test_a_multi_frame_dicom_row_is_skipped_with_one_line(phantom_root, tmp_path):
    from brainmri.data.manifest import read_manifest

    images = sorted(str(p) for p in (phantom_root / "Training").rglob("*.jpg"))
    write_dicom12(tmp_path / "cine.dcm", np.zeros((16, 16), np.uint8), frames=3)
    rows = [[p, Path(p).parent.name] for p in images] + [["cine.dcm", "glioma"]]
    source = read_manifest(write_csv(tmp_path / "m.csv", ["path", "label"], rows))
    assert source.skipped == [{"row": 50, "path": "cine.dcm",
                               "error": "unreadable: multi-frame DICOM (3 frames): give single slices, one per file"}]


def test_the_audit_reads_a_manifest_classes_per_site_and_the_site_from_the_image(three_sites, tmp_path):
    from brainmri.data.audit import audit, markdown

    report, details = audit(three_sites, tmp_path, progress=False, shortcuts=True)
    assert report["images"] == {"Training": 64, "Testing": 0} and len(details["paths"]) == 64  # no split column
    sites = report["sites"]
    assert list(sites) == ["a", "b", "c"] and sum(e["images"] for e in sites.values()) == 64
    assert all(sum(e["classes"].values()) == e["images"] for e in sites.values())
    probes = report["site_shortcuts"]
    assert probes["classes"] == ["a", "b", "c"] and probes["images"] == 64
    assert 0.0 <= probes["settings"]["as stored"]["results"]["all"]["acc"] <= 1.0
    assert "near_pairs_across_patients" in report
    text = markdown(report)
    assert "## Sites" in text and "the site from the image" in text


def test_evaluate_and_predict_take_a_manifest(trained_run, three_sites, tmp_path):
    import csv

    from brainmri.use.external import evaluate_run
    from brainmri.use.predict import predict_files
    from brainmri.use.predict import write_csv as write_predictions
    from brainmri.use.trained import TrainedRun

    trained = TrainedRun.load(trained_run)
    summary = evaluate_run(trained_run, three_sites, out=tmp_path / "eval", trained=trained)
    assert summary["test/n"] == 64 and summary["evaluated"] == str(three_sites)
    assert sum(summary[f"test/site/{s}/n"] for s in "abc") == 64 and 0 <= summary["test/site/a/acc"] <= 1
    with open(tmp_path / "eval" / "predictions_test.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"patient", "site", "row"} <= set(rows[0])
    # a manifest without labels: predictions carry its other columns
    lines = three_sites.read_text().splitlines()
    unlabelled = tmp_path / "new.csv"
    unlabelled.write_text("path,scanner,accession\n" + "\n".join(f"{line.split(chr(9))[0]},skyra,A{k}"
                                                                 for k, line in enumerate(lines[1:6])) + "\n,x,y\n")
    pred = predict_files(trained, [str(unlabelled)], similarity=False, progress=False)
    out, skipped = write_predictions(pred, tmp_path / "p.csv")
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert [r["accession"] for r in rows] == [f"A{k}" for k in range(5)] and rows[0]["scanner"] == "skyra"
    assert pred.skipped == [{"row": 7, "path": "", "error": "empty path"}]  # the header is row 1


def test_a_phantom_cohorts_manifest_splits_by_patient_and_decodes_its_dicom_at_16_bits(tmp_path):
    import torch

    from brainmri.data.phantoms import generate_cohort
    from brainmri.data.transforms import Decoder

    root = generate_cohort(tmp_path / "cohort", sites=("A", "B", "C"), n_patients_per_site=8, slices_per_patient=3,
                           test_fraction=0.25, dicom_fraction=0.5, monochrome1_fraction=0.5, multiframe=1, seed=0)
    manifest = root / "manifest.csv"
    split = build_split(DataConfig(manifest=str(manifest), group_by="patient+near", cache_dir=str(tmp_path)), manifest)
    parts: dict[str, set] = {}
    for part in ("train", "val", "test"):
        for s in getattr(split, part):
            parts.setdefault(s.patient, set()).add(part)
    assert len(parts) == 24 and all(len(p) == 1 for p in parts.values())
    assert [s["error"] for s in split.skipped] == [
        "unreadable: multi-frame DICOM (3 frames): give single slices, one per file"]
    dicom = next(s for s in split.train if s.path.endswith(".dcm"))
    levels = Decoder(64, 1, deep=True)(dicom.path).to(torch.int32).unique()
    assert len(levels) > 256  # more than 8 bits survive decoding
    held = build_split(DataConfig(manifest=str(manifest), test_site="B", cache_dir=str(tmp_path)), manifest)
    assert {s.site for s in held.test} == {"B"} and "B" not in {s.site for s in held.train + held.val}


def test_patient_plus_near_joins_two_patients_linked_by_a_near_duplicate_pair():
    from brainmri.data.datasets import union_keys

    # rows 1 and 2 belong to two patients but are near-duplicates of each other: both patients become one group
    groups = union_keys(["p1", "p1", "p2", "p3", "p3", "p4"], ["n0", "n1", "n1", "n2", "n3", "n4"])
    assert groups[0] == groups[1] == groups[2] and groups[3] == groups[4]
    assert len({groups[0], groups[3], groups[5]}) == 3
