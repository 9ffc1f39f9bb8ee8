"""Evaluate a saved run on another data root (an external test set) through brainmri.train.evaluate.

``evaluate_run(run_dir, data_root)`` loads the run's model with its own config
(``brainmri.use.trained.TrainedRun``), scans the root with the loader's rules, checks that its class
folders are the run's classes, finds each image's nearest training image and band (when the run's
training data is reachable), and calls ``brainmri.train.evaluate.evaluate_split`` — the code path of
training's own test evaluation — so the output folder gets the same test predictions,
confusion matrix and ``test/...`` metrics (in the summary). The run's own files are never
written: the default output is ``<run_dir>/eval/<data root name>/``. An ensemble
(``brainmri.use.ensemble.Ensemble``) is evaluated the same way, its probabilities the mean of its
members'; its default output is ``<sweep>/ensembles/<recipe>/eval/<data root name>/`` and its
summary lists the members.
"""

from __future__ import annotations

from pathlib import Path

from brainmri.data.datasets import ImageDataset, make_loader
from brainmri.data.files import DataError, resolve_splits_root, scan_folder
from brainmri.data.leakage import fingerprints
from brainmri.data.manifest import is_manifest, open_data
from brainmri.data.transforms import eval_transform
from brainmri.rundir import RunDir
from brainmri.train.evaluate import evaluate_split
from brainmri.use.ensemble import Ensemble
from brainmri.use.trained import TrainedRun

SPLIT = "test"  # metric keys and file names as in training's test evaluation


def _class_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def evaluation_folder(data_root: str | Path) -> Path:
    """The labelled folder evaluated under a data root: ``Testing/`` if present, else ``Training/``, else the root."""
    train_dir, test_dir = resolve_splits_root(data_root)
    return test_dir or train_dir


def check_classes(found: list[str], classes: list[str], where: Path) -> None:
    if set(found) != set(classes):
        missing = [c for c in classes if c not in found]
        extra = [c for c in found if c not in classes]
        raise DataError(f"class folders in {where} do not match the run's classes {classes}: "
                        f"missing {missing or '[]'}, not in the run {extra or '[]'}")


def default_out(run: RunDir, data_root: Path) -> RunDir:
    path = Path(data_root).resolve()
    return run.eval_dir((path.stem if is_manifest(path) else path.name) or "external")


def evaluate_run(run_dir: str | Path, data_root: str | Path, out: str | Path | None = None,
                 batch_size: int | None = None, num_workers: int = 0,
                 trained: TrainedRun | Ensemble | None = None) -> dict:
    """Metrics of the run's best checkpoint on ``data_root``; files in ``out`` (see the module docstring)."""
    trained = trained or TrainedRun.load(run_dir)
    if is_manifest(data_root):  # its test rows if it has any, else every row; labels must be the run's classes
        folder = Path(data_root)
        source = open_data(data_root, trained.classes, trained.cfg.data.max_skipped_fraction)
        tested = [s for s, part in zip(source.samples, source.parts, strict=True) if part == "test"]
        listed = (tested or source.samples, source.skipped)
    else:
        folder = evaluation_folder(data_root)
        check_classes(_class_folders(folder), trained.classes, folder)
        listed = None
    out_run = RunDir(out) if out else default_out(trained.run, Path(data_root))
    out_dir = out_run.path
    if out_dir.resolve() == trained.run_dir.resolve() or out_run.checkpoints.is_dir():
        raise DataError(f"--out {out_dir} is a run directory; choose another folder (training results are "
                        "never overwritten)")
    samples, skipped = listed if listed is not None else scan_folder(folder, trained.classes)[1:]
    if not samples:
        raise DataError(f"no readable images under {folder}")
    reference, note = trained.training_reference()
    if reference is not None:
        reference.annotate(samples, fingerprints([s.path for s in samples], trained.cfg.data.cache_dir))
    cfg = trained.cfg
    dataset = ImageDataset(samples, trained.decoder, eval_transform(cfg.data))
    loader = make_loader(dataset, batch_size or cfg.data.eval_batch_size or cfg.data.batch_size, num_workers)
    out_dir.mkdir(parents=True, exist_ok=True)
    ensemble = isinstance(trained, Ensemble)
    who = trained.name if isinstance(trained, Ensemble) else f"{cfg.recipe} seed {cfg.seed}"
    with trained.inference() as (acc, model):
        values = evaluate_split(SPLIT, model, loader, acc, trained.classes, samples, out_run,
                                trained.normalize, f"{who} on {folder}", cfg.eval.tta)
    if reference is None:  # no training images to compare with: no bands, rather than all "novel"
        values = {k: v for k, v in values.items() if not k.startswith(f"{SPLIT}/band/")}
    summary = {"run_dir": str(trained.run_dir), "data_root": str(data_root), "evaluated": str(folder),
               "classes": trained.classes, "recipe": cfg.recipe,
               "seed": [m.seed for m in trained.members] if isinstance(trained, Ensemble) else cfg.seed,
               "best_epoch": trained.best_epoch, "skipped_files": len(skipped),
               **({"ensemble": {"sweep": str(trained.home), "config": trained.config,
                                "members": trained.describe_members()}} if isinstance(trained, Ensemble) else {}),
               "bands": (("nearest image among the members' training images (their union)" if ensemble
                          else "nearest training image per image") if reference is not None
                         else f"not computed: {note}"),
               **values}
    out_run.write_skipped(skipped)
    out_run.write_summary(summary)
    summary["out"] = str(out_dir)
    return summary
