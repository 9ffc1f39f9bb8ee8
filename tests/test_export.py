"""launch/export.py: ONNX and TorchScript equal the torch model, and run with neither brainmri nor torch."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import yaml

from conftest import ROOT


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    base = tmp_path_factory.mktemp("export")
    run = trained_run  # 32 px from 64 px phantoms: the consumer's preprocessing includes a resize
    proc = subprocess.run([sys.executable, str(ROOT / "launch" / "export.py"), str(run), "--format", "onnx",
                           "torchscript", "--out", str(base / "model")], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=os.environ)
    assert proc.returncode == 0, proc.stderr
    return run, base / "model"


def test_onnx_and_torchscript_match_torch_and_the_card_describes_the_run(exported, phantom_root):
    from brainmri.use.export import onnx_parity
    from brainmri.use.trained import load_trained

    run, model_dir = exported
    trained = load_trained(run)
    files = sorted((phantom_root / "Testing").rglob("*.jpg"))
    inputs = trained.normalize(torch.stack([trained.decoder(p) for p in files]))
    assert onnx_parity(model_dir / "model.onnx", trained, inputs) <= 1e-4
    assert onnx_parity(model_dir / "model.onnx", trained, inputs[:1]) <= 1e-4  # dynamic batch axis
    scripted = torch.jit.load(str(model_dir / "model.ts"))
    with torch.no_grad():
        np.testing.assert_allclose(scripted(inputs[:5]).numpy(), torch.softmax(trained.model(inputs[:5]), 1).numpy(),
                                   atol=1e-5)

    card = json.loads((model_dir / "model_card.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert card["classes"] == summary["classes"] and card["input"]["shape"] == ["batch", 3, 32, 32]
    assert card["preprocessing"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    test = card["metrics"]["test"]
    assert test["acc"]["value"] == summary["test/acc"] and test["acc"]["n"] == summary["test/n"] == 16
    lo, hi = test["acc"]["ci95"]
    assert lo <= summary["test/acc"] <= hi and hi - lo > 0.1  # 16 images: a wide interval
    assert card["config"] == yaml.safe_load((run / "config.yaml").read_text())
    assert card["data"]["train"] == json.loads((run / "split.json").read_text())["train"]
    assert len(card["data"]["train_sha1_digest"]) == 40 and card["code_version"] != "unknown"


CONSUMER = textwrap.dedent('''
    import importlib.abc, json, sys

    class Block(importlib.abc.MetaPathFinder):  # prove the export needs neither brainmri nor torch
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("brainmri", "torch", "torchvision", "yaml"):
                raise ImportError(f"blocked: {name}")

    sys.meta_path.insert(0, Block())
    import numpy as np
    import onnxruntime as ort
    from PIL import Image

    model_dir, files = sys.argv[1], sys.argv[2:]
    card = json.load(open(f"{model_dir}/model_card.json"))
    pre, size = card["preprocessing"], card["preprocessing"]["resize"]
    batch = []
    for f in files:
        grey = Image.open(f).convert("L").resize((size["width"], size["height"]), Image.BILINEAR)
        x = np.asarray(grey, np.float32) * pre["scale"]
        x = np.repeat(x[None], pre["channels"], axis=0)
        batch.append((x - np.array(pre["mean"], np.float32)[:, None, None])
                     / np.array(pre["std"], np.float32)[:, None, None])
    session = ort.InferenceSession(f"{model_dir}/{card['files']['onnx']}", providers=["CPUExecutionProvider"])
    probs = session.run([card["output"]["name"]], {card["input"]["name"]: np.stack(batch).astype(np.float32)})[0]
    print(json.dumps({"classes": card["classes"], "probs": probs.tolist(),
                      "modules": sorted(m for m in sys.modules if m.split(".")[0] in ("brainmri", "torch"))}))
''')


def test_the_exported_model_runs_without_brainmri(exported, phantom_root, tmp_path):
    run, model_dir = exported
    files = sorted((phantom_root / "Testing").rglob("*.jpg"))
    script = tmp_path / "consumer.py"
    script.write_text(CONSUMER)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    proc = subprocess.run([sys.executable, "-I", str(script), str(model_dir), *map(str, files)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["modules"] == []
    with open(run / "predictions_test.csv", newline="") as f:
        want = {r["path"]: [float(r[f"prob_{c}"]) for c in out["classes"]] for r in csv.DictReader(f)}
    np.testing.assert_allclose(np.array(out["probs"]), np.array([want[str(p)] for p in files]), atol=1e-4)
