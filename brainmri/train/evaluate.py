"""Evaluation: run a model over a loader, turn its predictions into a split's metrics and files.

The single evaluation path of brainmri: training's per-epoch validation, the final val/test
evaluation of the best checkpoint, and any later evaluation of a saved run on other data all
call these functions.

- :func:`predict` runs the model over a loader on every rank (accelerate) and returns each
  sample once (``gather_for_metrics`` drops the padding that even batching adds).
- :func:`split_metrics` turns labels and probabilities into the split's metrics, including the
  metrics per similarity band (``brainmri.data.leakage`` bands, via ``brainmri.results.metrics``).
- :func:`evaluate_split` does both and, with a run directory, writes the split's predictions
  and confusion matrix there (``RunDir.write_predictions``, ``RunDir.confusion_png``; rank 0).

Loaders yield ``(image batch, label batch, dataset index batch)`` like ``brainmri.data.datasets.ImageDataset``.

Example:
    >>> acc = Accelerator()
    >>> metrics = evaluate_split("test", model, make_loader(test_ds, 64, 2), acc, classes,
    ...                          test_ds.samples, RunDir("runs/x"), to_input=batch_normalizer(cfg.data))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch

from brainmri.data.leakage import BANDS, band_columns
from brainmri.results import metrics as M
from brainmri.rundir import RunDir
from brainmri.train.regularise import TTA


class Predictions(NamedTuple):
    """One row per sample of the loader's dataset, in gathered order."""

    index: np.ndarray  # type: ignore[assignment]  # dataset index of each row (int, N); shadows tuple.index
    labels: np.ndarray  # true label (int, N)
    probs: np.ndarray  # softmax probabilities (float32, N × classes)


def _is_prepared(loader) -> bool:
    from accelerate.data_loader import DataLoaderDispatcher, DataLoaderShard

    return isinstance(loader, (DataLoaderShard, DataLoaderDispatcher))


@torch.no_grad()
def predict(model: torch.nn.Module, loader, accelerator, to_input: Callable | None = None,
            views: Sequence[str] = ()) -> Predictions:
    """Softmax probabilities of ``model`` over every sample of ``loader``, each counted once.

    Args:
        model: any module on ``accelerator.device`` (a DDP-wrapped one works too); set to eval mode.
        loader: a plain ``DataLoader`` (it is sharded over the ranks here) or one already prepared
            by ``accelerator``; batches are ``(x, y, index)``.
        accelerator: the ``accelerate.Accelerator`` of this process.
        to_input: turns a loader batch into the model's input (e.g. ``batch_normalizer``); identity
            by default.
        views: test-time augmentation (``eval.tta``): the softmax is averaged over the image and
            these views (brainmri.train.regularise.TTA).
    Returns:
        ``Predictions(index, labels, probs)`` on every rank.
    Raises:
        RuntimeError when the gathered rows do not cover the dataset exactly once.
    """
    to_input = to_input or (lambda x: x)
    if not _is_prepared(loader):
        loader = accelerator.prepare_data_loader(loader)
    model.eval()
    net = TTA(model, views) if views else (lambda inp: torch.softmax(model(inp).float(), dim=1))
    probs, indices, labels = [], [], []
    for x, y, idx in loader:
        p = net(to_input(x)).float()
        # gather_for_metrics drops the samples that even batching duplicated on the last step
        p, y, idx = accelerator.gather_for_metrics((p.contiguous(), y.contiguous(), idx.contiguous()))
        probs.append(p.cpu())
        labels.append(y.cpu())
        indices.append(idx.cpu())
    idx_np = torch.cat(indices).numpy()
    n = len(loader.dataset)
    if len(idx_np) != n or len(np.unique(idx_np)) != n:
        raise RuntimeError(f"evaluation covered {len(np.unique(idx_np))} unique of {n} samples "
                           f"({len(idx_np)} predictions)")
    return Predictions(idx_np, torch.cat(labels).numpy().astype(np.int64), torch.cat(probs).numpy())


def split_metrics(split: str, labels, probs, classes: Sequence[str], bands: Sequence[str | None] | None = None,
                  sites: Sequence[str | None] | None = None) -> dict[str, float]:
    """``{split}/acc``, ``{split}/macro_f1``, per-class values … , ``{split}/band/<band>/…`` and
    ``{split}/site/<site>/…``.

    ``bands`` holds each row's similarity band (``Sample.band``); without it no band metrics.
    ``sites`` holds each row's site (a manifest's ``site`` column); without any no site metrics.
    """
    values = M.classification_metrics(labels, probs, list(classes), split)
    if bands is not None:  # how the model does by similarity to its training images
        values.update(M.band_metrics(labels, probs, bands, list(classes), split, BANDS))
    if sites is not None and any(sites):  # how the model does at each acquisition site
        values.update(M.site_metrics(labels, probs, sites, list(classes), split))
    return values


def manifest_columns(rows: Sequence) -> dict[str, list]:
    """A manifest's row number, patient, site and metadata columns per row, for a predictions CSV
    (none for rows from a folder)."""
    cols: dict[str, list] = {}
    if any(getattr(s, "row", None) is not None for s in rows):
        cols["row"] = [s.row if s.row is not None else "" for s in rows]
    for name in ("patient", "site"):
        if any(getattr(s, name, None) for s in rows):
            cols[name] = [getattr(s, name) or "" for s in rows]
    names = list(dict.fromkeys(k for s in rows for k in (getattr(s, "meta", None) or {})))
    for name in names:
        cols[name if name not in cols else f"meta_{name}"] = [(s.meta or {}).get(name, "") for s in rows]
    return cols


def evaluate_split(split: str, model: torch.nn.Module, loader, accelerator, classes: Sequence[str],
                   samples: Sequence, run_dir: RunDir | None = None, to_input: Callable | None = None,
                   title: str = "", views: Sequence[str] = ()) -> dict[str, float]:
    """Predict ``split`` and return its metrics; with ``run_dir``, also write its files (rank 0).

    Args:
        split: the name used in metric keys and file names (``val``, ``test``, ``external`` …).
        samples: the dataset's samples, indexed like the loader's dataset (``Sample.path``,
            ``sha1``, ``band``, ``nearest_train`` go into the predictions CSV).
        run_dir: where the split's predictions and confusion matrix go; None writes nothing.
        title: the confusion matrix's title.
        views: test-time augmentation views (``eval.tta``).
    Returns:
        The metrics dict of :func:`split_metrics`, on every rank.
    """
    pred = predict(model, loader, accelerator, to_input, views)
    rows = [samples[i] for i in pred.index]
    values = split_metrics(split, pred.labels, pred.probs, classes, [s.band for s in rows],
                           [getattr(s, "site", None) for s in rows])
    if run_dir is not None and accelerator.is_main_process:
        run_dir.write_predictions(split, rows, pred.labels, pred.probs, list(classes),
                                  extra={**band_columns(rows), **manifest_columns(rows)})
        M.save_confusion_png(pred.labels, pred.probs.argmax(1), list(classes), run_dir.confusion_png(split),
                             title or f"{split}")
    return values
