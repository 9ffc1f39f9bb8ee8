"""Predict new scans with a trained run: inputs → probabilities, and a CSV of them.

``predict_files`` decodes inputs with ``brainmri.use.inputs`` (images and DICOM), batches them
through the run's model (``brainmri.use.trained.TrainedRun``: its own config and best checkpoint)
on accelerate's device in the run's mixed precision, and, when the run's training images can be
found again (the split record's file list), finds each input's most similar training image and its
band (``brainmri.data.leakage``). Bad inputs are skipped with one line each; the rest is still
predicted.
"""

from __future__ import annotations

import csv
import hashlib
import io
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from brainmri.atomic import atomic_write
from brainmri.data.files import Sample
from brainmri.data.leakage import fingerprint_image
from brainmri.data.manifest import is_manifest, manifest_inputs
from brainmri.data.transforms import Decoder
from brainmri.train.regularise import TTA
from brainmri.use.inputs import InputError, collect_inputs, decode_input
from brainmri.use.trained import Inferable


class InputDataset(torch.utils.data.Dataset):
    """File → (uint8 tensor, index, error, fingerprint, sha1); a bad file yields its one-line error."""

    def __init__(self, files: list[Path], decoder: Decoder, with_fingerprint: bool):
        self.files, self.decoder, self.with_fingerprint = files, decoder, with_fingerprint
        self.blank = torch.zeros((decoder.channels, decoder.image_size, decoder.image_size), dtype=torch.uint8)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        path = self.files[i]
        fp = torch.zeros((3, 32 * 32)) if self.with_fingerprint else torch.zeros(0)
        try:
            sha1 = hashlib.sha1(path.read_bytes()).hexdigest()
            grey = decode_input(path, self.decoder.window)
            x = self.decoder.from_grey(grey)
            if self.with_fingerprint:
                fp = torch.from_numpy(fingerprint_image(grey))
            return x, i, "", fp, sha1
        except InputError as e:
            return self.blank, i, str(e), fp, ""
        except OSError as e:
            return self.blank, i, f"unreadable: {e.strerror or e}", fp, ""


@dataclass
class Predictions:
    classes: list[str]
    paths: list[str] = field(default_factory=list)
    probs: np.ndarray | None = None  # (n, K)
    skipped: list[dict] = field(default_factory=list)
    nearest_train: list[str] | None = None
    similarity: list[float] | None = None
    band: list[str | None] | None = None
    reference_note: str = ""  # why similarity columns are empty
    cam_index: Path | None = None
    meta: dict[str, dict[str, str]] = field(default_factory=dict)  # path → its manifest row's other columns

    @property
    def preds(self) -> list[str]:
        return [self.classes[int(k)] for k in self.probs.argmax(1)] if self.probs is not None else []


def predict_files(trained: Inferable, inputs: list[str | Path], batch_size: int | None = None,
                  num_workers: int = 0, cam_dir: str | Path | None = None, similarity: bool = True,
                  progress: bool | None = None) -> Predictions:
    """Predict every usable file under ``inputs``; optionally Grad-CAM overlays into ``cam_dir``."""
    from tqdm.auto import tqdm

    manifests = [p for p in inputs if is_manifest(p)]
    collected = collect_inputs([p for p in inputs if not is_manifest(p)])
    meta: dict[str, dict[str, str]] = {}
    for manifest in manifests:  # a manifest's files, in its order, with its other columns
        listed, bad = manifest_inputs(manifest)
        collected.skipped += bad
        known = {str(f) for f in collected.files}
        collected.files[:0] = [Path(f) for f, _ in listed if f not in known]
        meta.update(dict(listed))
    out = Predictions(trained.classes, skipped=list(collected.skipped), meta=meta)
    reference = None
    if similarity and collected.files:
        reference, out.reference_note = trained.training_reference()
    dataset = InputDataset(collected.files, trained.decoder, reference is not None)
    bs = batch_size or trained.cfg.data.eval_batch_size or trained.cfg.data.batch_size
    loader = torch.utils.data.DataLoader(dataset, batch_size=bs, num_workers=num_workers, shuffle=False)
    explainer = None
    with trained.inference() as (acc, model):
        if cam_dir is not None:
            from brainmri.use.explain import CamWriter

            explainer = CamWriter(acc.unwrap_model(model), trained.classes, cam_dir, trained.run_dir.name)
        probs, fps, sha1s, kept = [], [], [], []
        show = sys.stderr.isatty() if progress is None else progress
        for x, idx, errors, fp, sha1 in tqdm(loader, disable=not show, desc="predict", unit="batch"):
            good = [j for j, e in enumerate(errors) if not e]
            for j, e in enumerate(errors):
                if e:
                    out.skipped.append({"path": str(collected.files[int(idx[j])]), "error": e})
            if not good:
                continue
            x = x[good].to(acc.device)
            inp = trained.normalize(x)
            with torch.no_grad():
                p = TTA(model, trained.cfg.eval.tta)(inp).cpu().numpy()  # softmax, averaged over eval.tta views
            names = [str(collected.files[int(idx[j])]) for j in good]
            probs.append(p)
            kept += names
            fps.append(fp[good].numpy())
            sha1s += [sha1[j] for j in good]
            if explainer is not None:
                explainer.add(inp, x.cpu(), p, names)
        out.paths = kept
        out.probs = np.concatenate(probs) if probs else np.zeros((0, len(trained.classes)), np.float32)
        if explainer is not None and kept:
            out.cam_index = explainer.finish()
    if reference is not None and kept:
        rows = [Sample(p, -1, h) for p, h in zip(kept, sha1s, strict=True)]
        reference.annotate(rows, np.concatenate(fps))
        out.nearest_train = [s.nearest_train or "" for s in rows]
        out.similarity = [s.similarity if s.similarity is not None else float("nan") for s in rows]
        out.band = [s.band for s in rows]
    return out


def write_csv(pred: Predictions, path: str | Path) -> tuple[Path, Path]:
    """``path``: one row per predicted file; ``<stem>.skipped.csv`` beside it: path and reason."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf)
    columns = list(dict.fromkeys(c for m in pred.meta.values() for c in m))  # a manifest's other columns
    w.writerow(["path", "pred", *[f"prob_{c}" for c in pred.classes], "nearest_train", "similarity", "band",
                *columns])
    probs = pred.probs if pred.probs is not None else np.zeros((0, len(pred.classes)))  # no paths without probs
    for i, (p, label) in enumerate(zip(pred.paths, pred.preds, strict=True)):
        near = ([pred.nearest_train[i], f"{pred.similarity[i]:.4f}", pred.band[i]]
                if pred.band is not None and pred.nearest_train is not None and pred.similarity is not None
                else ["", "", ""])
        row = pred.meta.get(p, {})
        w.writerow([p, label, *[f"{float(v):.6f}" for v in probs[i]], *near, *[row.get(c, "") for c in columns]])
    atomic_write(path, buf.getvalue())
    skipped = path.with_name(f"{path.stem}.skipped.csv")
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "error"])
    for s in pred.skipped:
        w.writerow([s["path"], s["error"]])
    atomic_write(skipped, buf.getvalue())
    return path, skipped
