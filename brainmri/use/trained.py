"""A trained run: the one home of what prediction, evaluation, export and Grad-CAM need of it.

``TrainedRun.load(run_dir)`` reads the run's own resolved config (image size, channels,
normalisation, never the current defaults) and its validated best checkpoint (weights and class list,
``torch.load(weights_only=True)``) through :class:`brainmri.rundir.RunDir`, and builds the model
on the CPU in eval mode. :meth:`TrainedRun.training_reference` finds the run's training images for
the nearest-image search from the split record's file list: the data root is not scanned and the
split not rebuilt; a root whose files are gone or changed since training is said in one line.
:meth:`TrainedRun.inference` gives an accelerator in the run's precision, once per use.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import v2

from brainmri.config import ConfigError, RunConfig, load_config
from brainmri.data.files import DataError, Sample
from brainmri.data.split import Split, nearest_training
from brainmri.data.transforms import Decoder, batch_normalizer
from brainmri.models.registry import build_model
from brainmri.rundir import CheckpointError, RunDir
from brainmri.train.accel import inference_accelerator


class RunError(ValueError):
    """A run directory cannot be used (no config, no best checkpoint); one line naming it."""


@dataclass
class TrainingReference:
    """The run's training images, for the nearest-training-image search (brainmri.data.leakage)."""

    paths: list[str]
    sha1: list[str]
    fingerprints: np.ndarray

    def annotate(self, samples: list[Sample], fingerprints: np.ndarray) -> None:
        """Set each sample's ``nearest_train``, ``similarity`` and ``band``."""
        nearest_training(self.paths, self.sha1, self.fingerprints, samples, fingerprints)


def reference_from_splits(splits: list[Split], cache_dir: str | None) -> tuple[TrainingReference | None, str]:
    """The union of the splits' training images with their fingerprints, or None and why: a data
    root that is not reachable here, or files gone or changed since training (one line)."""
    from brainmri.data.leakage import fingerprints

    union: dict[str, Sample] = {}
    for split in splits:
        if not split.root or not Path(split.root).is_dir():
            return None, f"training data root {split.root} is not reachable from here"
        for s in split.train:
            union.setdefault(s.path, s)
    samples = [union[p] for p in sorted(union)]
    try:
        Split(splits[0].classes, samples, [], root=splits[0].root).check_unchanged(parts=("train",))
    except DataError as e:
        return None, str(e)
    paths = [s.path for s in samples]
    return TrainingReference(paths, [s.sha1 for s in samples], fingerprints(paths, cache_dir)), ""


class Inferable:
    """What prediction, evaluation and export use of a trained run or an ensemble, beyond its data:
    the training reference (found once, by ``_find_reference``) and an accelerator for inference."""

    cfg: RunConfig
    model: torch.nn.Module
    run: RunDir
    classes: list[str]
    decoder: Decoder
    normalize: v2.Compose  # uint8 batch → model input (brainmri.data.transforms.batch_normalizer)
    _reference: tuple[TrainingReference | None, str] | None

    @property
    def run_dir(self) -> Path:
        return self.run.path

    def training_reference(self) -> tuple[TrainingReference | None, str]:
        """The training images with their fingerprints, or None and why (computed once)."""
        reference = getattr(self, "_reference", None)
        if reference is None:
            reference = self._reference = self._find_reference()
        return reference

    def _find_reference(self) -> tuple[TrainingReference | None, str]:
        raise NotImplementedError

    @contextlib.contextmanager
    def inference(self) -> Iterator[tuple]:
        """``(accelerator, prepared model)`` in the run's mixed precision, for one use."""
        with inference_accelerator(self.cfg.train.mixed_precision) as acc:
            yield acc, acc.prepare_model(self.model, evaluation_mode=True)


@dataclass
class TrainedRun(Inferable):
    run: RunDir
    cfg: RunConfig
    classes: list[str]
    model: torch.nn.Module  # eval mode, on the CPU
    decoder: Decoder
    normalize: v2.Compose  # uint8 batch → model input (brainmri.data.transforms.batch_normalizer)
    best_epoch: int | None = None
    _reference: tuple[TrainingReference | None, str] | None = field(default=None, repr=False)

    @classmethod
    def load(cls, run_dir: str | Path) -> TrainedRun:
        """Model, classes and preprocessing of a finished (or at least once-improved) run."""
        run = RunDir(run_dir)
        cfg = _run_config(run)
        ckpt = run.load_best()
        classes = list(ckpt["classes"])
        # every weight comes from the checkpoint
        model_cfg = dataclasses.replace(cfg.model, pretrained=False, weights=None)
        model = build_model(model_cfg, len(classes), cfg.data.input_channels, cfg.data.input_size)
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            raise CheckpointError(f"{run.best_checkpoint} does not match the run's config: "
                                  f"{str(e).splitlines()[0]}") from None
        model.eval()
        return cls(run, cfg, classes, model, Decoder.from_config(cfg.data),
                   batch_normalizer(cfg.data), (ckpt.get("trainer") or {}).get("best_epoch"))

    # ------------------------------------------------------------------ the run's data
    def split(self) -> Split:
        """The run's split as the split record lists it (no scan); a DataError (one line) without a list."""
        record = self.run.read_split()
        if record is None:
            raise DataError(f"{self.run.split_file} is missing")
        return Split.from_record(record)

    def _find_reference(self) -> tuple[TrainingReference | None, str]:
        try:
            split = self.split()
        except DataError as e:
            return None, str(e)
        return reference_from_splits([split], self.cfg.data.cache_dir)


def _run_config(run: RunDir) -> RunConfig:
    """The run's own resolved config (``brainmri.config.load_config`` of its file); a RunError naming the
    directory otherwise."""
    if not run.path.is_dir():
        raise RunError(f"run directory not found: {run.path}")
    if run.read_config() is None:
        raise RunError(f"{run.path} is not a brainmri run directory: no readable {run.config_file.name}")
    try:
        return load_config(run.config_file)
    except ConfigError as e:
        raise RunError(str(e).splitlines()[0]) from None


def load_trained(run_dir: str | Path) -> TrainedRun:
    """``TrainedRun.load(run_dir)``."""
    return TrainedRun.load(run_dir)
