"""The exported folder carries the decode-time head crop and background zeroing (preprocess.py, numpy/PIL
only) and the run's TTA inside the graph: a consumer without brainmri or torch gets brainmri's input and output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
import yaml

from brainmri.config import load_config
from brainmri.data import preprocess
from brainmri.data.transforms import Decoder, batch_normalizer
from brainmri.models.registry import build_model
from brainmri.rundir import RunDir
from brainmri.train.regularise import TTA
from brainmri.use.export import export, onnx_parity
from brainmri.use.trained import TrainedRun, load_trained

CONSUMER = textwrap.dedent('''
    import importlib.abc, json, sys

    class Block(importlib.abc.MetaPathFinder):  # prove the export needs neither brainmri nor torch
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("brainmri", "torch", "torchvision", "yaml", "scipy"):
                raise ImportError(f"blocked: {name}")

    sys.meta_path.insert(0, Block())
    model_dir, out, files = sys.argv[1], sys.argv[2], sys.argv[3:]
    sys.path.insert(0, model_dir)
    import numpy as np
    import onnxruntime as ort
    import preprocess

    card = json.load(open(f"{model_dir}/model_card.json"))
    x = preprocess.model_input(files, card["preprocessing"])
    session = ort.InferenceSession(f"{model_dir}/{card['files']['onnx']}", providers=["CPUExecutionProvider"])
    probs = session.run([card["output"]["name"]], {card["input"]["name"]: x})[0]
    np.savez(out, x=x, probs=probs)
    print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("brainmri", "torch"))))
''')


def test_exported_preprocessing_and_tta_equal_brainmri_on_phantom_files(phantom_root, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    cfg = load_config("configs/baseline_cnn.yaml", [
        "data.input_size=32", "data.input_channels=3", "data.crop=head", "data.background=zero",
        "data.head_margin=0.04", "eval.tta=[hflip,vflip]", "model.dropout=0.0"])
    RunDir(run).save_config(cfg.to_dict())
    torch.manual_seed(0)
    model = build_model(cfg.model, 4, 3, 32).eval()
    trained = TrainedRun(RunDir(run), cfg, ["glioma", "meningioma", "notumor", "pituitary"], model,
                           Decoder.from_config(cfg.data), batch_normalizer(cfg.data))
    out = tmp_path / "model"
    written = export(trained, out, ["onnx"])
    assert (out / "preprocess.py").read_text() == Path(preprocess.__file__).read_text()
    card = json.loads(written["card"].read_text())
    pre = card["preprocessing"]
    assert (pre["crop"], pre["background"], pre["margin"], pre["script"]) == ("head", "zero", 0.04, "preprocess.py")
    assert card["tta"] == ["hflip", "vflip"] and card["files"]["preprocess"] == "preprocess.py"

    files = sorted((phantom_root / "Testing").rglob("*.jpg"))
    decoded = torch.stack([trained.decoder(p) for p in files])
    inputs = trained.normalize(decoded)
    assert onnx_parity(out / "model.onnx", trained, inputs) <= 1e-4  # the graph holds the TTA

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    script = tmp_path / "consumer.py"
    script.write_text(CONSUMER)
    proc = subprocess.run([sys.executable, "-I", str(script), str(out), str(tmp_path / "got.npz"), *map(str, files)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
    got = np.load(tmp_path / "got.npz")
    np.testing.assert_allclose(got["x"], inputs.numpy(), rtol=0, atol=1e-6)  # the same pixels as the Decoder
    assert not torch.equal(decoded, torch.stack([Decoder(32, 3)(p) for p in files]))  # and the settings acted
    with torch.no_grad():
        want = TTA(model, ["hflip", "vflip"])(inputs).numpy()
        assert not np.allclose(want, torch.softmax(model(inputs), 1).numpy(), atol=1e-4)  # the views matter
    np.testing.assert_allclose(got["probs"], want, atol=1e-4)


def test_prediction_uses_the_runs_own_crop_background_and_tta(trained_run, phantom_root, tmp_path):
    """A run's config.yaml with the settings: load_trained's decoder (predict, evaluate, export) applies them,
    and predict averages the eval.tta views."""
    from brainmri.use.predict import predict_files

    run = tmp_path / "run"
    run.mkdir()
    os.symlink(trained_run / "checkpoints", run / "checkpoints")
    tree = yaml.safe_load((trained_run / "config.yaml").read_text())
    tree["data"].update(crop="head", background="zero")
    tree["eval"] = {"tta": ["hflip"]}
    (run / "config.yaml").write_text(yaml.safe_dump(tree))
    trained = load_trained(run)
    files = sorted((phantom_root / "Testing").rglob("*.jpg"))[:4]
    decoded = torch.stack([trained.decoder(p) for p in files])
    assert torch.equal(decoded, torch.stack([Decoder(32, 3, "head", "zero", trained.cfg.data.head_margin)(p)
                                             for p in files]))
    assert not torch.equal(decoded, torch.stack([load_trained(trained_run).decoder(p) for p in files]))
    pred = predict_files(trained, [str(p) for p in files], similarity=False, progress=False)
    with torch.no_grad():
        want = TTA(trained.model, ["hflip"])(trained.normalize(decoded)).numpy()
    assert pred.paths == [str(p) for p in files]
    np.testing.assert_allclose(pred.probs, want, atol=1e-6)
