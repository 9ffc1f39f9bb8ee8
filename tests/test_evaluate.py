"""brainmri.train.evaluate is the evaluation path training uses: re-evaluating a run's best checkpoint
outside the engine gives the same metrics and the same predictions file."""

from __future__ import annotations

import json

import pandas as pd
import torch
import yaml
from accelerate import Accelerator

from conftest import TINY, run_train

from brainmri.config import from_dict
from brainmri.data.datasets import ImageDataset, build_split, make_loader
from brainmri.data.transforms import Decoder, batch_normalizer, eval_transform
from brainmri.models.registry import build_model
from brainmri.rundir import RunDir
from brainmri.train.evaluate import evaluate_split, predict


def test_best_checkpoint_reevaluates_to_the_summary(phantom_root, tmp_path):
    run = tmp_path / "run"
    run_train("--config", "configs/baseline_cnn.yaml", f"data.root={phantom_root}", f"run_dir={run}", *TINY,
              "train.epochs=1")
    cfg = from_dict(yaml.safe_load((run / "config.yaml").read_text()))
    split = build_split(cfg.data, phantom_root)
    ds = ImageDataset(split.test, Decoder(cfg.data.input_size, cfg.data.input_channels), eval_transform(cfg.data))
    best = torch.load(run / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    model = build_model(cfg.model, len(best["classes"]), cfg.data.input_channels, cfg.data.input_size)
    model.load_state_dict(best["model"])
    acc = Accelerator(cpu=True)
    out = RunDir(tmp_path / "again")
    out.create()
    values = evaluate_split("test", model, make_loader(ds, 5, 0), acc, best["classes"], ds.samples, out,
                            to_input=batch_normalizer(cfg.data))
    summary = json.loads((run / "summary.json").read_text())
    assert values["test/n"] == len(split.test) and "test/band/novel/n" in values
    assert values == {k: summary[k] for k in values}
    a, b = (pd.read_csv(d / "predictions_test.csv") for d in (run, out.path))
    cols = [c for c in a.columns if c not in ("similarity",)]  # fingerprint similarity: float rounding
    pd.testing.assert_frame_equal(a[cols], b[cols])
    assert (out.path / "confusion_test.png").read_bytes()[:4] == b"\x89PNG"
    pred = predict(model, make_loader(ds, 7, 0), acc, batch_normalizer(cfg.data))
    assert sorted(pred.index.tolist()) == list(range(len(ds)))
    assert (pred.labels == [ds.samples[i].label for i in pred.index]).all()
