"""Data-set audit: duplicates, near-duplicates and leakage across splits, as JSON, Markdown, HTML.

``audit(root)`` scans ``<root>/Training`` (and ``Testing`` when present) with the loader's own
rules (junk ignored, unreadable files listed, any image mode used), fingerprints every image
(``brainmri.data.leakage``, cached) and reports: class counts, image sizes and modes, unreadable
files, near-duplicate pairs per band within and across the splits, groups, groups that hold
more than one label (the same picture under two labels: label noise), and how many Testing
images have a Training partner in each band. ``leak_tables`` lists every Testing image with its
nearest Training image and every cross-split pair (``write_csvs`` writes them beside audit.json),
so a person can drop or flag leaked images. ``write_html`` adds contact sheets — a random
sample of pairs per band, file names under each image — so a person can judge the thresholds.

``shortcuts`` (``audit(..., shortcuts=True)``, ``launch/audit.py --shortcuts``) measures how much of
the label can be read without the brain: on the Training images, gradient-boosted trees
(scikit-learn, 5-fold cross-validation stratified by class and grouped by near-duplicates) predict
the class from (a) ``background`` intensity/noise statistics of the pixels at least 10 px from the
head mask, (b) the head's ``geometry`` (area, bounding box, centre), (c) the ``frame`` (the outer
4-pixel ring at 64 px) and all of them together, for the images as stored and after the
``data.crop``/``data.background`` settings (``brainmri.data.preprocess``, the code the Decoder runs).
"""

from __future__ import annotations

import csv
import html
import io
import math
import os
import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from brainmri.atomic import atomic_write
from brainmri.data import leakage as L
from brainmri.data import preprocess as P
from brainmri.data.files import DataError, file_index, thumbnail_uri
from brainmri.data.manifest import open_data


def _image_info(paths: list[str], split_dirs) -> dict:
    """Image sizes and modes, from the scan's file index (no file is opened again)."""
    index = {}
    for d in split_dirs:
        index.update(file_index(d))
    sizes: Counter[str] = Counter()
    modes: Counter[str] = Counter()
    for p in paths:
        e = index[p]
        sizes[f"{e['dims'][0]}x{e['dims'][1]}"] += 1
        modes[e["mode"]] += 1
    return {"sizes": dict(sizes.most_common(10)), "distinct_sizes": len(sizes), "modes": dict(modes)}


def audit(root: str | Path, cache_dir=None, progress: bool = True, shortcuts: bool = False,
          margin: float = 0.0) -> tuple[dict, dict]:
    """Return (report, details): the JSON-able report, and the pairs/paths the HTML sheets need.
    ``shortcuts``: add ``report["shortcuts"]`` (``shortcut_report``; ``margin`` = ``data.head_margin``)."""
    source = open_data(root)  # a folder (refuses fewer than two class folders) or a manifest
    classes, skipped = source.classes, source.skipped
    train = [s for s, part in zip(source.samples, source.parts, strict=True) if part != "test"]
    test = [s for s, part in zip(source.samples, source.parts, strict=True) if part == "test"]
    samples = train + test
    if not samples:
        raise DataError(f"no readable images under {root}")
    split = np.array(["Training"] * len(train) + ["Testing"] * len(test))
    paths = [s.path for s in samples]
    sha1 = [s.sha1 for s in samples]
    labels = np.array([s.label for s in samples])
    fp = L.fingerprints(paths, cache_dir, progress=progress)
    pairs = L.near_pairs(fp, sha1)
    report: dict = {
        "root": str(Path(root).resolve()),
        "classes": classes,
        "thresholds": L.describe_thresholds(),
        "images": {"Training": len(train), "Testing": len(test)},
        "class_counts": {name: {sp: int(((labels == c) & (split == sp)).sum()) for sp in ("Training", "Testing")}
                         for c, name in enumerate(classes)},
        "image_info": _image_info(paths, source.index_keys),
        "unreadable": skipped,
        "pairs": _pair_counts(pairs, split),
    }
    group_report = {}
    near_groups: np.ndarray | None = None
    for group_by, bands in L.GROUP_BANDS.items():
        g = L.groups(len(samples), pairs, bands)
        group_report[group_by], cross_label = _grouping_summary(g, bands, split, labels)
        if group_by == "near":
            near_groups = g
            report["cross_label_groups"] = [
                [{"path": paths[i], "label": classes[labels[i]], "split": str(split[i])} for i in m]
                for m in cross_label]
    report["groups"] = group_report
    near = None
    if test:
        near = L.nearest(fp[:len(train)], sha1[:len(train)], fp[len(train):], sha1[len(train):])
        report["testing_nearest_training"] = {b: int((near.band == k).sum()) for k, b in enumerate(L.BANDS)}
    if shortcuts:
        assert near_groups is not None  # GROUP_BANDS has "near"
        report["shortcuts"] = shortcut_report(paths[:len(train)], labels[:len(train)], classes,
                                              near_groups[:len(train)], margin=margin)
    report.update(site_report(samples, classes, split, pairs, near_groups, shortcuts, margin))
    details = {"root": str(root), "paths": paths, "labels": [classes[v] for v in labels], "split": split.tolist(),
               "pairs": pairs, "n_train": len(train), "nearest": near}
    return report, details


def _pair_counts(pairs, split: np.ndarray) -> dict[str, dict[str, int]]:
    """Near-duplicate pairs in each of the three closest bands: within Training, within Testing and across the two."""
    si, sj = split[pairs.i], split[pairs.j]

    def pair_counts(where):
        return {b: int(((pairs.band == k) & where).sum()) for k, b in enumerate(L.BANDS[:3])}

    return {"within_training": pair_counts((si == "Training") & (sj == "Training")),
            "within_testing": pair_counts((si == "Testing") & (sj == "Testing")),
            "across": pair_counts(si != sj)}


def _grouping_summary(g: np.ndarray, bands, split: np.ndarray, labels: np.ndarray) -> tuple[dict, list[list]]:
    """(summary, cross-label groups) of one grouping ``g`` (each image's group over ``bands``).

    The summary counts the groups, those with copies and their images, the largest group, the groups
    that span Training and Testing and those whose images carry more than one label; the cross-label
    groups are listed as their images' indices.
    """
    sizes = np.bincount(g)
    multi = sizes[g] > 1
    members = defaultdict(list)
    for idx in np.flatnonzero(multi):
        members[g[idx]].append(idx)
    spanning = sum(len({split[i] for i in m}) > 1 for m in members.values())
    cross_label = [m for m in members.values() if len({labels[i] for i in m}) > 1]
    summary = {
        "bands": list(bands), "groups": int(len(sizes)), "groups_with_copies": len(members),
        "images_in_groups_with_copies": int(multi.sum()), "largest_group": int(sizes.max()),
        "groups_spanning_training_and_testing": int(spanning),
        "cross_label_groups": len(cross_label),
    }
    return summary, cross_label


def site_report(samples, classes: list[str], split: np.ndarray, pairs, near_groups, shortcuts: bool,
                margin: float) -> dict:
    """What a manifest's ``patient`` and ``site`` columns add: classes per site, near-duplicate pairs
    across two patients (``data.group_by=patient+near`` joins them), and with ``shortcuts`` how well the
    site can be read from the image (the shortcut probes with the site as the target)."""
    out: dict = {}
    patients = [s.patient for s in samples]
    if any(patients):
        close = [(int(i), int(j), L.BANDS[b]) for i, j, b in zip(pairs.i, pairs.j, pairs.band, strict=True)
                 if b <= 1 and patients[i] and patients[j] and patients[i] != patients[j]]
        out["near_pairs_across_patients"] = {
            "count": len(close), "note": "data.group_by=patient+near puts each such pair's patients in one group",
            "pairs": [{"a": samples[i].path, "patient_a": patients[i], "b": samples[j].path,
                       "patient_b": patients[j], "band": band} for i, j, band in close[:100]]}
    sites = sorted({s.site for s in samples if s.site})
    if not sites:
        return out
    out["sites"] = {site: {"images": sum(s.site == site for s in samples),
                           "patients": len({s.patient for s in samples if s.site == site and s.patient}),
                           "classes": {c: sum(s.site == site and s.label == k for s in samples)
                                       for k, c in enumerate(classes)},
                           "Testing": int(sum(s.site == site for s, sp in zip(samples, split, strict=True)
                                              if sp == "Testing"))}
                    for site in sites}
    if shortcuts and len(sites) > 1:
        at = [i for i, s in enumerate(samples) if s.site]
        index = {site: k for k, site in enumerate(sites)}
        out["site_shortcuts"] = shortcut_report([samples[i].path for i in at], [index[samples[i].site] for i in at],
                                                sites, near_groups[at], margin=margin)
    return out


TESTING_NEAREST = ("testing_path", "testing_label", "nearest_training", "training_label", "similarity",
                   "fine_similarity", "band")
CROSS_PAIRS = ("testing_path", "testing_label", "training_path", "training_label", "similarity",
               "fine_similarity", "band")


def leak_tables(details: dict) -> tuple[list[dict], list[dict]]:
    """(every Testing image with its nearest Training image, every Training–Testing pair in a band).

    Paths are relative to the data root; ``similarity`` is the coarse correlation, ``fine_similarity``
    the detail correlation, ``band`` as in ``brainmri.data.leakage.BANDS``. Rows are ordered by band
    (exact first) then similarity, so the leaks lead; a Testing image with no Training image is
    ``novel`` with empty neighbour cells.
    """
    paths, labels, n_train = details["paths"], details["labels"], details["n_train"]
    rel = lambda i: os.path.relpath(paths[i], details["root"])  # noqa: E731
    score = lambda x: round(float(x), 4)  # noqa: E731
    nearest_rows, near = [], details["nearest"]
    for q in range(len(paths) - n_train):
        t, b = n_train + q, int(near.index[q]) if near is not None else -1
        nearest_rows.append({"testing_path": rel(t), "testing_label": labels[t],
                             "nearest_training": rel(b) if b >= 0 else "",
                             "training_label": labels[b] if b >= 0 else "",
                             "similarity": score(near.coarse[q]) if b >= 0 else "",
                             "fine_similarity": score(near.fine[q]) if b >= 0 else "",
                             "band": L.BANDS[int(near.band[q])] if near is not None else "novel"})
    rank = {b: k for k, b in enumerate(L.BANDS)}
    nearest_rows.sort(key=lambda r: (rank[r["band"]], -(r["similarity"] or 0), r["testing_path"]))
    pairs, cross_rows = details["pairs"], []
    for i, j, coarse, fine, band in zip(pairs.i, pairs.j, pairs.coarse, pairs.fine, pairs.band, strict=True):
        if (i < n_train) == (j < n_train):
            continue
        tr, te = (int(i), int(j)) if i < n_train else (int(j), int(i))
        cross_rows.append({"testing_path": rel(te), "testing_label": labels[te], "training_path": rel(tr),
                           "training_label": labels[tr], "similarity": score(coarse), "fine_similarity": score(fine),
                           "band": L.BANDS[int(band)]})
    cross_rows.sort(key=lambda r: (rank[r["band"]], -r["similarity"], r["testing_path"], r["training_path"]))
    return nearest_rows, cross_rows


def write_csvs(details: dict, json_path: str | Path) -> tuple[Path, Path]:
    """Write ``<stem>_testing_nearest.csv`` and ``<stem>_cross_pairs.csv`` beside ``json_path``."""
    json_path = Path(json_path)
    out = []
    for suffix, columns, rows in zip(("testing_nearest", "cross_pairs"), (TESTING_NEAREST, CROSS_PAIRS),
                                     leak_tables(details), strict=True):
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        path = json_path.with_name(f"{json_path.stem}_{suffix}.csv")
        atomic_write(path, buf.getvalue())
        out.append(path)
    return out[0], out[1]


# ------------------------------------------------------------------------------------ shortcuts
SHORTCUT_SETTINGS = {  # name → (data.crop, data.background)
    "as stored": ("none", "keep"),
    "crop: head": ("head", "keep"),
    "background: zero": ("none", "zero"),
    "crop: head + background: zero": ("head", "zero"),
}
BACKGROUND_DISTANCE = 10  # px from the head mask
FRAME_SIDE, FRAME_RING = 64, 4
FEATURES = {
    "background": ["mean", "std", "median", "p5", "p95", "zero_share", "noise_mad"],
    "geometry": ["area", "x0", "y0", "x1", "y1", "centre_x", "centre_y"],
    "frame": [f"{side}_{stat}" for side in ("top", "bottom", "left", "right")
              for stat in ("mean", "std", "min", "max")],
}


def _background_stats(image: np.ndarray, head: np.ndarray) -> list[float]:
    far = ~P.dilate(head, BACKGROUND_DISTANCE)
    values = image[far].astype(np.float64)
    if values.size < 20:  # (almost) no background left: unknown, which the trees handle
        return [math.nan] * len(FEATURES["background"])
    pairs = far[:, 1:] & far[:, :-1]
    diff = np.abs(np.diff(image.astype(np.int16), axis=1))[pairs]
    return [values.mean(), values.std(), float(np.median(values)), *np.percentile(values, [5, 95]),
            float((values == 0).mean()), float(np.median(diff)) if diff.size else math.nan]


def _geometry(head: np.ndarray) -> list[float]:
    h, w = head.shape
    if not head.any():
        return [0.0, *[math.nan] * 6]
    ys, xs = np.nonzero(head)
    return [float(head.mean()), xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h,
            xs.mean() / w, ys.mean() / h]


def _frame(image: np.ndarray) -> list[float]:
    from PIL import Image

    small = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((FRAME_SIDE, FRAME_SIDE),
                                                                           Image.Resampling.BILINEAR),
                       dtype=np.float64)
    r = FRAME_RING
    out = []
    for ring in (small[:r], small[-r:], small[:, :r], small[:, -r:]):
        out += [ring.mean(), ring.std(), ring.min(), ring.max()]
    return out


def shortcut_features(path: str, margin: float = 0.0, settings=tuple(SHORTCUT_SETTINGS)) -> dict[str, dict[str, list]]:
    """``{setting: {feature set: values}}`` of one image: the head is found once on the stored image,
    each setting's image is what ``preprocess.apply_settings`` makes of it (before the resize)."""
    grey = P.load_grey(path)
    image = np.asarray(grey)
    head, widened = P.head_masks(grey, 0.0, margin)
    out = {}
    for name in settings:
        crop, background = SHORTCUT_SETTINGS[name]
        shown, (x0, y0, x1, y1) = P.apply_settings(image, widened, crop, background)
        inside = head[y0:y1, x0:x1]
        out[name] = {"background": _background_stats(shown, inside), "geometry": _geometry(inside),
                     "frame": _frame(shown)}
    return out


def _cv_predict(x: np.ndarray, y: np.ndarray, groups: np.ndarray | None, folds: int, seed: int) -> np.ndarray:
    from sklearn.dummy import DummyClassifier
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict

    varying = [j for j in range(x.shape[1]) if len(np.unique(x[~np.isnan(x[:, j]), j])) > 1]
    x = x[:, varying]
    leaf = int(max(2, min(20, len(y) // 25)))  # small sets: leaves small enough to split at all
    model = (HistGradientBoostingClassifier(max_iter=100, min_samples_leaf=leaf, random_state=seed) if varying
             else DummyClassifier(strategy="most_frequent"))  # constant features carry nothing
    if not varying:
        x = np.zeros((len(y), 1))
    if groups is not None and len(np.unique(groups)) >= folds:
        cv = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
        return cross_val_predict(model, x, y, groups=groups, cv=cv)
    return cross_val_predict(model, x, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed))


def shortcut_report(paths: list[str], labels, classes: list[str], groups=None, margin: float = 0.0,
                    settings=tuple(SHORTCUT_SETTINGS), folds: int = 5, seed: int = 0,
                    workers: int | None = None) -> dict:
    """Cross-validated accuracy of the label from features outside the brain, per setting and feature set.

    Chance is the largest class's share (what always answering it scores). Per class: recall.
    """
    import os
    from concurrent.futures import ThreadPoolExecutor

    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=len(classes))
    folds = int(min(folds, counts[counts > 0].min()))
    if folds < 2:
        raise DataError("the shortcut audit needs at least two images in every class")
    with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:  # PIL and numpy release the GIL
        feats = list(pool.map(lambda p: shortcut_features(p, margin, settings), paths))
    chance = float(counts.max() / counts.sum())
    report: dict[str, Any] = {"images": len(paths), "classes": classes, "chance": round(chance, 4), "margin": margin,
              "method": f"HistGradientBoostingClassifier, {folds}-fold cross-validation stratified by class"
                        + (" and grouped by near-duplicates" if groups is not None else ""),
              "features": {**FEATURES, "all": "background + geometry + frame"},
              "settings": {}}
    for name in settings:
        crop, background = SHORTCUT_SETTINGS[name]
        results = {}
        for kind in (*FEATURES, "all"):
            parts = list(FEATURES) if kind == "all" else [kind]
            x = np.array([[v for part in parts for v in f[name][part]] for f in feats], dtype=np.float64)
            pred = _cv_predict(x, labels, None if groups is None else np.asarray(groups), folds, seed)
            per_class = {c: round(float((pred[labels == k] == k).mean()), 4) for k, c in enumerate(classes)
                         if counts[k]}
            results[kind] = {"acc": round(float((pred == labels).mean()), 4), "per_class_recall": per_class}
        report["settings"][name] = {"crop": crop, "background": background, "results": results}
    return report


def shortcut_markdown(report: dict) -> list[str]:
    """Markdown lines: one row per setting and feature set, accuracy vs chance and recall per class."""
    classes = report["classes"]
    out = ["", f"## Shortcuts: the label without the brain ({report['images']} Training images)", "",
           f"{report['method']}; chance (largest class) {report['chance']:.3f}. Background: pixels at least "
           f"{BACKGROUND_DISTANCE} px from the head; frame: the outer {FRAME_RING}-pixel ring at {FRAME_SIDE} px.", "",
           "| setting | features | accuracy | × chance | " + " | ".join(classes) + " |",
           "|---|---|---:|---:|" + "---:|" * len(classes)]
    for name, entry in report["settings"].items():
        for kind, r in entry["results"].items():
            recalls = " | ".join(f"{r['per_class_recall'].get(c, float('nan')):.2f}" for c in classes)
            out.append(f"| {name} | {kind} | {r['acc']:.3f} | {r['acc'] / report['chance']:.2f} | {recalls} |")
    return out


def markdown(report: dict) -> str:
    """A short Markdown summary of ``audit``'s report."""
    out = [f"# Data audit: {report['root']}", ""]
    imgs = report["images"]
    out.append(f"{imgs['Training']} Training and {imgs['Testing']} Testing images, "
               f"{len(report['unreadable'])} unreadable; classes: "
               + ", ".join(f"{c} {v['Training']}/{v['Testing']}" for c, v in report["class_counts"].items())
               + " (Training/Testing).")
    info = report["image_info"]
    out.append(f"Modes: {', '.join(f'{k} {v}' for k, v in info['modes'].items())}; "
               f"{info['distinct_sizes']} distinct size(s), most common "
               + ", ".join(f"{k} ({v})" for k, v in list(info["sizes"].items())[:3]) + ".")
    out += ["", "| pairs | exact | near-identical | same scan |", "|---|---:|---:|---:|"]
    for where, counts in report["pairs"].items():
        out.append(f"| {where.replace('_', ' ')} | {counts['exact']} | {counts['near_identical']} "
                   f"| {counts['same_scan']} |")
    out += ["", "| grouped by | groups | groups with copies | images in them | largest | span Training+Testing "
                "| cross-label |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for name, g in report["groups"].items():
        out.append(f"| {name} | {g['groups']} | {g['groups_with_copies']} | {g['images_in_groups_with_copies']} | "
                   f"{g['largest_group']} | {g['groups_spanning_training_and_testing']} | {g['cross_label_groups']} |")
    if "testing_nearest_training" in report:
        t = report["testing_nearest_training"]
        total = max(sum(t.values()), 1)
        out += ["", "Testing images by their most similar Training image: "
                + ", ".join(f"{b.replace('_', ' ')} {n} ({100 * n / total:.1f} %)" for b, n in t.items()) + "."]
    n_cross = len(report.get("cross_label_groups", []))
    if n_cross:
        out += ["", f"**{n_cross} near-duplicate group(s) carry more than one label** (label noise); see audit.json."]
    if "shortcuts" in report:
        out += shortcut_markdown(report["shortcuts"])
    if "sites" in report:
        out += ["", "## Sites", "", "| site | images | patients | Testing | " + " | ".join(report["classes"]) + " |",
                "|---|---:|---:|---:|" + "---:|" * len(report["classes"])]
        for site, entry in report["sites"].items():
            out.append(f"| {site} | {entry['images']} | {entry['patients']} | {entry['Testing']} | "
                       + " | ".join(str(entry["classes"][c]) for c in report["classes"]) + " |")
    if "site_shortcuts" in report:
        lines = shortcut_markdown(report["site_shortcuts"])
        out += [line.replace("the label without the brain", "the site from the image") for line in lines]
    if report.get("near_pairs_across_patients", {}).get("count"):
        out += ["", f"**{report['near_pairs_across_patients']['count']} near-duplicate pair(s) join two patients**; "
                "data.group_by=patient+near keeps them in one part (see audit.json)."]
    return "\n".join(out) + "\n"


def write_html(report: dict, details: dict, out_dir: str | Path, per_band: int = 40, seed: int = 0) -> Path:
    """Write ``out_dir/index.html``: the summary and one contact sheet of sampled pairs per band."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs, paths = details["pairs"], details["paths"]
    rng = random.Random(seed)
    sections = []
    for k, band in enumerate(L.BANDS[:3]):
        idx = np.flatnonzero(pairs.band == k).tolist()
        chosen = sorted(rng.sample(idx, min(per_band, len(idx))))
        cells = []
        for t in chosen:
            i, j = int(pairs.i[t]), int(pairs.j[t])
            figs = "".join(
                f'<figure><img src="{thumbnail_uri(paths[x], 128, "JPEG")}" alt="">'
                f'<figcaption>{html.escape(Path(paths[x]).name)}'
                f'<br>{html.escape(details["split"][x])}/{html.escape(details["labels"][x])}</figcaption></figure>'
                for x in (i, j))
            cells.append(f'<div class="pair">{figs}<p>coarse {pairs.coarse[t]:.3f} · '
                         f'fine {pairs.fine[t]:.3f}</p></div>')
        sections.append(f'<h2 id="{band}">{band.replace("_", " ")}: {len(idx)} pairs '
                        f'({len(chosen)} shown at random)</h2><div class="sheet">{"".join(cells)}</div>')
    summary = html.escape(markdown(report))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>brainmri data audit</title>
<style>body{{font:14px system-ui,sans-serif;margin:1.5em}} pre{{background:#f4f4f4;padding:1em;white-space:pre-wrap}}
.sheet{{display:flex;flex-wrap:wrap;gap:10px}} .pair{{border:1px solid #ccc;padding:4px;text-align:center}}
figure{{display:inline-block;margin:2px}} figcaption{{font-size:11px;max-width:128px;word-break:break-all}}
.pair p{{margin:2px;font-size:12px}}</style></head><body>
<h1>brainmri data audit</h1><pre>{summary}</pre>{''.join(sections)}</body></html>"""
    path = out_dir / "index.html"
    atomic_write(path, page)
    return path
