"""Use a trained run: load its model with its own saved config, predict new files, write a CSV.

``load_trained(run_dir)`` reads ``<run_dir>/config.yaml`` (preprocessing, image size, channels)
and ``checkpoints/best.pt`` (weights and class list; ``torch.load(weights_only=True)``), never the
current defaults. ``predict_files`` decodes inputs with ``brainmri.use.inputs`` (images and DICOM),
batches them through the model on accelerate's device (the run's mixed precision), and, when the
run's training images can be found again (``split.json``'s data root, split rebuilt with the run's
seed and grouping), finds each input's most similar training image and its band
(``brainmri.data.leakage``). Bad inputs are skipped with one line each; the rest is still predicted.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from brainmri.config import ConfigError, RunConfig, from_dict
from brainmri.use.inputs import InputError, collect_inputs, decode_input
from brainmri.data.leakage import BANDS, fingerprint_image, nearest
from brainmri.models.registry import build_model
from brainmri.rundir import CheckpointError, RunDir, atomic_write, read_json
from brainmri.data.transforms import Decoder, batch_normalizer
from brainmri.train.regularise import TTA

log = logging.getLogger("brainmri")


class RunError(ValueError):
    """A run directory cannot be used (no config, no best checkpoint); one line naming it."""


@dataclass
class TrainedModel:
    run_dir: Path
    cfg: RunConfig
    classes: list[str]
    model: torch.nn.Module  # eval mode, on the CPU
    decoder: Decoder
    normalize: object  # uint8 batch → model input (brainmri.data.transforms.batch_normalizer)
    best_epoch: int | None = None


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The run's own resolved config (``config.yaml``), validated."""
    path = Path(run_dir) / "config.yaml"
    if not Path(run_dir).is_dir():
        raise RunError(f"run directory not found: {run_dir}")
    if not path.is_file():
        raise RunError(f"{run_dir} is not a brainmri run directory: no config.yaml")
    try:
        return from_dict(yaml.safe_load(path.read_text()) or {})
    except (yaml.YAMLError, ConfigError) as e:
        raise RunError(f"{path}: {str(e).splitlines()[0]}") from None


def load_trained(run_dir: str | Path) -> TrainedModel:
    """Model, classes and preprocessing of a finished (or at least once-improved) run."""
    run = RunDir(run_dir)
    cfg = load_run_config(run_dir)
    if not run.best_checkpoint.is_file():
        raise CheckpointError(f"{run.path} has no best checkpoint ({run.best_checkpoint}): "
                              "the run has not finished an epoch yet")
    try:
        ckpt = torch.load(run.best_checkpoint, map_location="cpu", weights_only=True)
        if not isinstance(ckpt, dict) or "model" not in ckpt:
            raise ValueError("not a brainmri checkpoint")
    except Exception as e:  # truncated zip, bad pickle, wrong content
        first = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(f"{run.best_checkpoint} is unreadable ({type(e).__name__}: {first})") from None
    classes = list(ckpt.get("classes") or [])
    if not classes:
        raise CheckpointError(f"{run.best_checkpoint} names no classes")
    model_cfg = dataclasses.replace(cfg.model, pretrained=False, weights=None)  # every weight comes from the checkpoint
    model = build_model(model_cfg, len(classes), cfg.data.input_channels, cfg.data.input_size)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{run.best_checkpoint} does not match the run's config.yaml: "
                              f"{str(e).splitlines()[0]}") from None
    model.eval()
    return TrainedModel(run.path, cfg, classes, model, Decoder.from_config(cfg.data),
                        batch_normalizer(cfg.data), (ckpt.get("trainer") or {}).get("best_epoch"))


# --------------------------------------------------------------------------------- training set


@dataclass
class TrainingReference:
    paths: list[str]
    sha1: list[str]
    fingerprints: np.ndarray


def training_reference(trained: TrainedModel) -> tuple[TrainingReference | None, str]:
    """The run's training images (split rebuilt from ``split.json``'s data root), or None and why."""
    from brainmri.data.files import DataError
    from brainmri.data.datasets import build_split
    from brainmri.data.leakage import fingerprints

    split_file = trained.run_dir / "split.json"
    if not split_file.is_file():
        return None, f"{split_file} is missing"
    split = read_json(split_file)
    root = split.get("data_root")
    if not root or not Path(root).is_dir():
        return None, f"training data root {root} is not reachable from here"
    try:
        rebuilt = build_split(trained.cfg.data, root)
    except (DataError, OSError) as e:
        return None, f"cannot rescan {root}: {e}"
    if rebuilt.classes != trained.classes or len(rebuilt.train) != split.get("train"):
        return None, (f"{root} changed since training ({len(rebuilt.train)} training images now, "
                      f"{split.get('train')} then)")
    paths = [s.path for s in rebuilt.train]
    return TrainingReference(paths, [s.sha1 for s in rebuilt.train],
                             fingerprints(paths, trained.cfg.data.cache_dir)), ""


# ---------------------------------------------------------------------------------------- inputs


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
            grey = decode_input(path)
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
    band: list[str] | None = None
    reference_note: str = ""  # why similarity columns are empty
    cam_index: Path | None = None

    @property
    def preds(self) -> list[str]:
        return [self.classes[int(k)] for k in self.probs.argmax(1)] if self.probs is not None else []


def inference_accelerator(cfg: RunConfig):
    from accelerate import Accelerator

    precision = cfg.train.mixed_precision
    if precision == "fp16" and not torch.cuda.is_available():
        precision = "no"  # as in training: fp16 autocast needs a GPU
    return Accelerator(mixed_precision=precision)


def predict_files(trained: TrainedModel, inputs: list[str | Path], batch_size: int | None = None,
                  num_workers: int = 0, cam_dir: str | Path | None = None, similarity: bool = True,
                  progress: bool | None = None) -> Predictions:
    """Predict every usable file under ``inputs``; optionally Grad-CAM overlays into ``cam_dir``."""
    from accelerate.state import AcceleratorState
    from tqdm.auto import tqdm

    collected = collect_inputs(inputs)
    out = Predictions(trained.classes, skipped=list(collected.skipped))
    reference = None
    if similarity and collected.files:
        reference, out.reference_note = training_reference(trained)
    dataset = InputDataset(collected.files, trained.decoder, reference is not None)
    bs = batch_size or trained.cfg.data.eval_batch_size or trained.cfg.data.batch_size
    loader = torch.utils.data.DataLoader(dataset, batch_size=bs, num_workers=num_workers, shuffle=False)
    acc = inference_accelerator(trained.cfg)
    explainer = None
    try:
        model = acc.prepare_model(trained.model, evaluation_mode=True)
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
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)  # another predict may use other settings
    if reference is not None and kept:
        near = nearest(reference.fingerprints, reference.sha1, np.concatenate(fps), sha1s)
        out.nearest_train = [reference.paths[i] if i >= 0 else "" for i in near.index]
        out.similarity = [round(float(s), 4) for s in near.coarse]
        out.band = [BANDS[b] for b in near.band]
    return out


def write_csv(pred: Predictions, path: str | Path) -> tuple[Path, Path]:
    """``path``: one row per predicted file; ``<stem>.skipped.csv`` beside it: path and reason."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "pred", *[f"prob_{c}" for c in pred.classes], "nearest_train", "similarity", "band"])
    for i, (p, label) in enumerate(zip(pred.paths, pred.preds)):
        near = ([pred.nearest_train[i], f"{pred.similarity[i]:.4f}", pred.band[i]]
                if pred.band is not None else ["", "", ""])
        w.writerow([p, label, *[f"{float(v):.6f}" for v in pred.probs[i]], *near])
    atomic_write(path, buf.getvalue())
    skipped = path.with_name(f"{path.stem}.skipped.csv")
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "error"])
    for s in pred.skipped:
        w.writerow([s["path"], s["error"]])
    atomic_write(skipped, buf.getvalue())
    return path, skipped
