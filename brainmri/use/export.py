"""Export a trained run as a stand-alone model: ONNX and/or TorchScript, plus ``model_card.json``.

The exported graph is the network followed by a softmax, averaged over the run's test-time views
(``eval.tta``, ``brainmri.train.regularise.TTA``): input ``image`` (float32, N×C×H×W, batch axis
dynamic) already preprocessed, output ``probabilities`` (N×K, in the card's class order).
The card says everything a consumer needs without brainmri or its config: classes, the
preprocessing (grey-scale decode, head crop and background setting, channel replication, resize,
1/255 scaling, mean/std), input size and channels, the run's val/test metrics with 95 % intervals
and n, a fingerprint of the data it was trained and evaluated on, the resolved config and the code
version. ``preprocess.py`` beside the model is ``brainmri.data.preprocess`` itself (numpy and PIL
only): ``preprocess.model_input(files, card["preprocessing"])`` gives the model's input exactly as
brainmri decodes it. ONNX goes through ``torch.onnx.export(dynamo=True)`` (the torch.export-based
exporter, which needs ``onnxscript``).

An ensemble (``brainmri.use.ensemble.Ensemble``) exports as ONE graph holding every member: the
mean of their softmax probabilities, same input and output; its card lists each member (run, fold,
seed, best epoch, its own val/test metrics) and the ensemble's test metrics by band (from the
members' saved test predictions, as the collector computes them).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
from pathlib import Path

import numpy as np
import torch

from brainmri.atomic import atomic_path, atomic_write, write_json
from brainmri.data import preprocess as data_preprocess
from brainmri.data.leakage import BANDS
from brainmri.results import metrics as M
from brainmri.rundir import RunDir
from brainmri.train.regularise import TTA
from brainmri.use.ensemble import Ensemble, MeanProbabilities
from brainmri.use.trained import TrainedRun
from brainmri.version import (
    code_version,  # the string --version prints and the run summary holds
)

FORMATS = ("onnx", "torchscript")
INPUT_NAME, OUTPUT_NAME = "image", "probabilities"
PREPROCESS_SCRIPT = "preprocess.py"


class ExportError(ValueError):
    """An export cannot be made as asked (unknown format); one line."""


def exported_module(trained: TrainedRun | Ensemble) -> torch.nn.Module:
    """What the exported graph computes: the mean softmax over the identity and the run's TTA views;
    for an ensemble, the mean of its members' (each over the same views)."""
    if isinstance(trained, Ensemble):
        return MeanProbabilities(trained.model, trained.cfg.eval.tta).eval()
    return TTA(trained.model, trained.cfg.eval.tta).eval()


def preprocessing(trained: TrainedRun) -> dict:
    """How to turn an image file into the model's input, as data (mirrors ``brainmri.data.transforms``)."""
    from torchvision.transforms import v2

    data = trained.cfg.data
    c, size = data.input_channels, data.input_size
    mean, std = [0.0] * c, [1.0] * c
    for t in trained.normalize.transforms:
        if isinstance(t, v2.Normalize):
            mean, std = [float(v) for v in t.mean], [float(v) for v in t.std]
    return {
        "decode": "grey-scale luminance (ITU-R 601-2, PIL mode 'L'); transparent pixels composited on black; "
                  "16-bit images divided by 256; DICOM: modality LUT, VOI LUT/window to 0-255, MONOCHROME1 inverted",
        "crop": data.crop,
        "background": data.background,
        "margin": data.head_margin,
        "head": "crop 'head': crop to the head's bounding box widened by margin x its longer side; background "
                "'zero': pixels outside the head mask dilated by margin x the box's longer side set to 0; both "
                "before the resize, on the grey image (head mask: half-Otsu threshold, largest component, holes "
                f"filled; see {PREPROCESS_SCRIPT})",
        "script": PREPROCESS_SCRIPT,
        "usage": f"import json, {PREPROCESS_SCRIPT[:-3]}; x = {PREPROCESS_SCRIPT[:-3]}.model_input(files, "
                 "json.load(open('model_card.json'))['preprocessing'])",
        "channels": c,
        "channel_rule": "the grey image repeated to every channel" if c == 3 else "one grey channel",
        "resize": {"height": size, "width": size, "interpolation": "bilinear", "antialias": True,
                   "keep_aspect": False, "on": "uint8 image, rounded back to uint8",
                   "equivalent": "PIL Image.resize((width, height), Image.BILINEAR) on the grey image"
                                 + (" (exactly: brainmri resizes with PIL when crop or background is set)"
                                    if data.crop != "none" or data.background != "keep" else "")},
        "scale": 1.0 / 255.0,
        "mean": mean,
        "std": std,
        "formula": "x = (uint8_pixel / 255 - mean[c]) / std[c], layout N x C x H x W, float32",
    }


def _metrics(run: RunDir, classes: list[str]) -> dict:
    """val/test metrics of the best checkpoint from the run's summary with 95 % intervals and n."""
    summary = run.read_summary()
    if summary is None:
        return {}
    out: dict[str, dict] = {}
    for split in ("val", "test"):
        n = summary.get(f"{split}/n")
        if not n:
            continue
        labels = probs = None
        frame = run.read_predictions(split)
        if frame is not None:
            labels = frame["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
            probs = frame[[f"prob_{c}" for c in classes]].to_numpy(dtype=np.float64)
        entry: dict[str, dict] = {}
        acc = summary.get(f"{split}/acc")
        if acc is not None:
            entry["acc"] = {"value": acc, "n": n, "ci95": list(M.wilson_interval(acc * n, n)), "ci": "Wilson"}
        for key, fn in (("macro_f1", M.macro_f1), ("auc", lambda y, p: M.macro_auc(y, p, len(classes)))):
            value = summary.get(f"{split}/{key}")
            if value is None:
                continue
            item = {"value": value, "n": n}
            if labels is not None and len(labels) == n:
                item["ci95"], item["ci"] = list(M.bootstrap_interval(labels, probs, fn)), "bootstrap 1000, percentile"
            entry[key] = item
        for key in ("ece", "loss"):
            if summary.get(f"{split}/{key}") is not None:
                entry[key] = {"value": summary[f"{split}/{key}"], "n": n}
        for band in BANDS:
            bn, bacc = summary.get(f"{split}/band/{band}/n"), summary.get(f"{split}/band/{band}/acc")
            if bn and bacc is not None:
                entry[f"acc_band_{band}"] = {"value": bacc, "n": bn, "ci95": list(M.wilson_interval(bacc * bn, bn)),
                                             "ci": "Wilson"}
        out[split] = entry
    return out


def _digest(values) -> str:
    return hashlib.sha1("\n".join(sorted(values)).encode()).hexdigest()


def data_fingerprint(trained: TrainedRun) -> dict:
    """What the run was trained and evaluated on: the split record's counts and manifest, and digests of
    the files' SHA-1s per part."""
    record = trained.run.read_split() or {}
    out = {k: record.get(k) for k in ("data_root", "classes", "train", "val", "test", "group_by", "bands", "manifest")}
    files = record.get("files") or {}
    for part in ("train", "val", "test"):
        rows = files.get(part)
        out[f"{part}_sha1_digest"] = _digest(r["sha1"] for r in rows) if rows is not None else None
    if not files:
        out["note"] = f"{trained.run.split_file} lists no files"
    out["digest"] = "SHA-1 of the sorted per-file SHA-1s, one per line; manifest: brainmri.data.datasets.manifest"
    return out


def ensemble_card(ens: Ensemble) -> dict:
    """What the card says of an ensemble: its sweep, recipe, configuration, members and test metrics."""
    result = ens.result.ensemble if ens.result is not None else None
    return {"sweep": str(ens.home), "recipe": ens.recipe, "config": ens.config, "combination":
            "mean of the members' softmax probabilities", "members": ens.describe_members(),
            "metrics": {"test": (result.metrics if result else None) or {},
                        "note": (result.reason if result else None) or "from the members' test predictions, "
                        "averaged per image; bands by the nearest image among all members' training images"}}


def model_card(trained: TrainedRun | Ensemble, files: dict[str, str]) -> dict:
    if isinstance(trained, Ensemble):
        lead = trained.members[0].trained
        return {"format": "brainmri-model-card", "version": 1, "kind": "ensemble",
                "run": trained.name, "recipe": trained.cfg.recipe, "arch": trained.cfg.model.arch,
                "seed": [m.seed for m in trained.members], "classes": trained.classes, "files": files,
                **_io(trained), "preprocessing": preprocessing(lead), "ensemble": ensemble_card(trained),
                "data": {**data_fingerprint(lead), "of": f"member {lead.run_dir.name} (every member's "
                         "data manifest is in ensemble.members)"},
                "config": lead.cfg.to_dict(), "code_version": code_version(), "torch_version": torch.__version__}
    size, c = trained.cfg.data.input_size, trained.cfg.data.input_channels
    return {
        "format": "brainmri-model-card", "version": 1,
        "run": trained.run_dir.name, "recipe": trained.cfg.recipe, "arch": trained.cfg.model.arch,
        "seed": trained.cfg.seed, "best_epoch": trained.best_epoch,
        "classes": trained.classes,
        "files": files,
        "input": {"name": INPUT_NAME, "dtype": "float32", "shape": ["batch", c, size, size], "layout": "NCHW",
                  "channels": c, "height": size, "width": size},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", len(trained.classes)],
                   "meaning": "softmax probabilities in the order of 'classes'"
                              + (f", the mean over the image and its views {list(trained.cfg.eval.tta)} (test-time "
                                 f"augmentation inside the graph)" if trained.cfg.eval.tta else "")},
        "tta": list(trained.cfg.eval.tta),
        "preprocessing": preprocessing(trained),
        "metrics": _metrics(trained.run, trained.classes),
        "data": data_fingerprint(trained),
        "config": trained.cfg.to_dict(),
        "code_version": code_version(),
        "torch_version": torch.__version__,
    }


def _io(trained: Ensemble) -> dict:
    """An ensemble card's input and output."""
    size, c, tta = trained.cfg.data.input_size, trained.cfg.data.input_channels, list(trained.cfg.eval.tta)
    return {"input": {"name": INPUT_NAME, "dtype": "float32", "shape": ["batch", c, size, size], "layout": "NCHW",
                      "channels": c, "height": size, "width": size},
            "output": {"name": OUTPUT_NAME, "shape": ["batch", len(trained.classes)],
                       "meaning": f"the mean of {len(trained.members)} members' softmax probabilities, in the order "
                                  "of 'classes'"
                                  + (f", each the mean over the image and its views {tta}" if tta else "")},
            "tta": tta}


def export(trained: TrainedRun | Ensemble, out_dir: str | Path, formats: list[str]) -> dict[str, Path]:
    """Write the chosen formats and ``model_card.json`` into ``out_dir``; returns name → path."""
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ExportError(f"unknown export format {bad[0]!r} (choose from {', '.join(FORMATS)})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    net = exported_module(trained)
    c, size = trained.cfg.data.input_channels, trained.cfg.data.input_size
    example = torch.zeros(2, c, size, size)
    written: dict[str, Path] = {}
    if "onnx" in formats:
        path = out / "model.onnx"
        with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates each step
            program = torch.onnx.export(net, (example,), dynamo=True, input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME], verbose=False,
                                        dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
        import onnx

        assert program is not None  # the dynamo exporter returns its program
        with atomic_path(path) as tmp:
            program.save(str(tmp), external_data=False)
            onnx.checker.check_model(str(tmp))
        written["onnx"] = path
    if "torchscript" in formats:
        import warnings

        path = out / "model.ts"
        with warnings.catch_warnings(), torch.no_grad():
            # torch.jit is deprecated but still the self-contained format
            warnings.simplefilter("ignore", FutureWarning)
            traced = torch.jit.trace(net, example)
        with atomic_path(path) as tmp:
            traced.save(str(tmp))
        written["torchscript"] = path
    script = out / PREPROCESS_SCRIPT
    atomic_write(script, Path(data_preprocess.__file__).read_text())
    written["preprocess"] = script
    card = out / "model_card.json"
    write_json(card, model_card(trained, {k: p.name for k, p in written.items()}))
    written["card"] = card
    return written


def onnx_parity(onnx_path: str | Path, trained: TrainedRun | Ensemble, inputs: torch.Tensor) -> float:
    """Max |p_onnx − p_torch| over ``inputs`` (preprocessed, N×C×H×W); p_torch with the run's TTA views,
    for an ensemble the mean of its members' probabilities, each member run on its own."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT_NAME], {INPUT_NAME: inputs.numpy().astype(np.float32)})[0]
    with torch.no_grad():
        if isinstance(trained, Ensemble):
            want = np.mean([TTA(m.trained.model, trained.cfg.eval.tta)(inputs).numpy() for m in trained.members],
                           axis=0)
        else:
            want = exported_module(trained)(inputs).numpy()
    diff = float(np.abs(got - want).max()) if len(got) else 0.0
    return diff if math.isfinite(diff) else math.inf
