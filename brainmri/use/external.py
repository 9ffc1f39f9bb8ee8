"""Evaluate a saved run on another data root (an external test set) through brainmri.train.evaluate.

``evaluate_run(run_dir, data_root)`` loads the run's model with its own config
(``brainmri.use.predict.load_trained``), scans the root with the loader's rules, checks that its class
folders are the run's classes, finds each image's nearest training image and band (when the run's
training data is reachable), and calls ``brainmri.train.evaluate.evaluate_split`` — the code path of
training's own test evaluation — so the output folder gets the same ``predictions_test.csv``,
``confusion_test.png`` and ``test/...`` metrics (in ``summary.json``). The run's own files are never
written: the default output is ``<run_dir>/eval/<data root name>/``.
"""

from __future__ import annotations

from pathlib import Path


from brainmri.data.files import DataError, resolve_splits_root, scan_folder
from brainmri.data.datasets import ImageDataset, make_loader
from brainmri.data.leakage import BANDS, fingerprints, nearest
from brainmri.use.predict import TrainedModel, inference_accelerator, load_trained, training_reference
from brainmri.rundir import RunDir, write_json
from brainmri.data.transforms import eval_transform

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


def default_out(run_dir: Path, data_root: Path) -> Path:
    return run_dir / "eval" / (Path(data_root).resolve().name or "external")


def evaluate_run(run_dir: str | Path, data_root: str | Path, out: str | Path | None = None,
                 batch_size: int | None = None, num_workers: int = 0,
                 trained: TrainedModel | None = None) -> dict:
    """Metrics of the run's best checkpoint on ``data_root``; files in ``out`` (see the module docstring)."""
    from accelerate.state import AcceleratorState

    from brainmri.train.evaluate import evaluate_split

    trained = trained or load_trained(run_dir)
    folder = evaluation_folder(data_root)
    check_classes(_class_folders(folder), trained.classes, folder)
    out_dir = Path(out) if out else default_out(trained.run_dir, Path(data_root))
    if out_dir.resolve() == trained.run_dir.resolve() or (out_dir / "checkpoints").is_dir():
        raise DataError(f"--out {out_dir} is a run directory; choose another folder (training results are "
                        "never overwritten)")
    _, samples, skipped = scan_folder(folder, trained.classes)
    if not samples:
        raise DataError(f"no readable images under {folder}")
    reference, note = training_reference(trained)
    if reference is not None:
        near = nearest(reference.fingerprints, reference.sha1,
                       fingerprints([s.path for s in samples], trained.cfg.data.cache_dir), [s.sha1 for s in samples])
        for s, i, sim, band in zip(samples, near.index, near.coarse, near.band):
            s.nearest_train = reference.paths[i] if i >= 0 else None
            s.similarity = round(float(sim), 4) if i >= 0 else None
            s.band = BANDS[band]
    cfg = trained.cfg
    dataset = ImageDataset(samples, trained.decoder, eval_transform(cfg.data))
    loader = make_loader(dataset, batch_size or cfg.data.eval_batch_size or cfg.data.batch_size, num_workers)
    out_dir.mkdir(parents=True, exist_ok=True)
    acc = inference_accelerator(cfg)
    try:
        model = acc.prepare_model(trained.model, evaluation_mode=True)
        values = evaluate_split(SPLIT, model, loader, acc, trained.classes, samples, RunDir(out_dir),
                                trained.normalize, f"{cfg.recipe} seed {cfg.seed} on {folder}")
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    if reference is None:  # no training images to compare with: no bands, rather than all "novel"
        values = {k: v for k, v in values.items() if not k.startswith(f"{SPLIT}/band/")}
    summary = {"run_dir": str(trained.run_dir), "data_root": str(data_root), "evaluated": str(folder),
               "classes": trained.classes, "recipe": cfg.recipe, "seed": cfg.seed,
               "best_epoch": trained.best_epoch, "skipped_files": len(skipped),
               "bands": "nearest training image per image" if reference is not None else f"not computed: {note}",
               **values}
    write_json(out_dir / "skipped_files.json", {"count": len(skipped), "files": skipped})
    write_json(out_dir / "summary.json", summary)
    summary["out"] = str(out_dir)
    return summary
