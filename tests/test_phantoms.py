"""Synthetic phantom set: layout, determinism, reuse, crash safety, CLI, and that a tiny CNN can learn it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from brainmri.data import phantoms
from brainmri.data.phantoms import CLASSES, generate_phantoms, read_manifest, render_phantom
from brainmri.data.phantoms import draw as phantom_drawing

SMALL = dict(n_per_class=6, n_test_per_class=2, image_size=64)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_layout_counts_and_manifest(tmp_path):
    root = generate_phantoms(tmp_path / "data", **SMALL, seed=3)
    assert root == tmp_path / "data"
    assert sorted(p.name for p in root.iterdir()) == ["Testing", "Training", "manifest.json"]
    for split, n, prefix in (("Training", 6, "Tr"), ("Testing", 2, "Te")):
        assert sorted(p.name for p in (root / split).iterdir()) == list(CLASSES)
        for name in CLASSES:
            files = sorted(p.name for p in (root / split / name).iterdir())
            assert files == [f"{prefix}-{name[:2]}_{i:04d}.jpg" for i in range(1, n + 1)]
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest == read_manifest(root)
    assert manifest["params"] == {"n_per_class": 6, "n_test_per_class": 2, "image_size": 64, "seed": 3,
                                  "grayscale_fraction": 0.5, "jpeg_quality": phantoms.JPEG_QUALITY}
    assert manifest["classes"] == list(CLASSES)
    assert manifest["counts"] == {"Training": dict.fromkeys(CLASSES, 6), "Testing": dict.fromkeys(CLASSES, 2)}
    assert manifest["total"] == 32
    assert not list(tmp_path.glob(".data.tmp-*"))


def test_no_testing_split_when_zero(tmp_path):
    root = generate_phantoms(tmp_path / "data", n_per_class=2, n_test_per_class=0, image_size=48)
    assert not (root / "Testing").exists()
    assert read_manifest(root)["counts"] == {"Training": dict.fromkeys(CLASSES, 2)}


def test_images_decode_at_size_and_modes_are_mixed(tmp_path):
    root = generate_phantoms(tmp_path / "data", **SMALL)
    for folder in [root / s / c for s in ("Training", "Testing") for c in CLASSES]:
        modes = []
        for path in folder.iterdir():
            with Image.open(path) as im:
                assert im.format == "JPEG" and im.size == (64, 64)
                im.load()
                modes.append(im.mode)
        assert modes.count("L") == len(modes) // 2 and modes.count("RGB") == len(modes) - len(modes) // 2


@pytest.mark.parametrize("fraction, mode", [(0.0, "RGB"), (1.0, "L")])
def test_grayscale_fraction_extremes(tmp_path, fraction, mode):
    root = generate_phantoms(tmp_path / "data", n_per_class=2, n_test_per_class=1, image_size=32,
                             grayscale_fraction=fraction)
    assert {Image.open(p).mode for p in root.rglob("*.jpg")} == {mode}


def test_same_seed_is_byte_identical_other_seed_differs(tmp_path):
    a = _files(generate_phantoms(tmp_path / "a", **SMALL, seed=7))
    b = _files(generate_phantoms(tmp_path / "b", **SMALL, seed=7))
    c = _files(generate_phantoms(tmp_path / "c", **SMALL, seed=8))
    assert a == b
    assert a.keys() == c.keys()
    images = [k for k in a if k.endswith(".jpg")]
    assert all(a[k] != c[k] for k in images)
    assert len({a[k] for k in images}) == len(images)  # no two images alike (the split dedups by hash)


def test_render_is_a_pure_function_of_the_generator():
    for label in CLASSES:
        first = render_phantom(label, np.random.default_rng(5), 96)
        assert first.dtype == np.uint8 and first.shape == (96, 96)
        assert np.array_equal(first, render_phantom(label, np.random.default_rng(5), 96))
    with pytest.raises(ValueError, match="unknown class"):
        render_phantom("astrocytoma", np.random.default_rng(0))


def test_lesions_change_only_their_class():
    """One rng state is one head; the label only adds its lesion, in its own place."""
    for seed in range(5):
        # 2×2 block means: the Rician noise (which differs between the renders) stays well under the threshold.
        images = {c: render_phantom(c, np.random.default_rng(seed), 128).reshape(64, 2, 64, 2).mean((1, 3))
                  for c in CLASSES}
        centres = {}
        for label in ("glioma", "meningioma", "pituitary"):
            rows, cols = np.nonzero(np.abs(images[label] - images["notumor"]) > 30)
            assert len(rows) >= 5, (seed, label)
            centres[label] = rows.mean() / 64, cols.mean() / 64
        assert abs(centres["glioma"][1] - 0.5) > 0.1  # in a hemisphere
        assert np.hypot(centres["meningioma"][0] - 0.5, centres["meningioma"][1] - 0.5) > 0.2  # at the skull
        assert centres["pituitary"][0] > 0.65 and abs(centres["pituitary"][1] - 0.5) < 0.1  # low midline


def test_identical_parameters_reuse_the_existing_set(tmp_path):
    root = generate_phantoms(tmp_path / "data", **SMALL)
    before, stamps = _files(root), _mtimes(root)
    assert generate_phantoms(root, **SMALL) == root
    assert _files(root) == before and _mtimes(root) == stamps

    old = 1_000_000_000
    os.utime(root / "manifest.json", ns=(old, old))
    generate_phantoms(root, **SMALL, overwrite=True)
    assert (root / "manifest.json").stat().st_mtime_ns != old
    assert _files(root) == before

    generate_phantoms(root, n_per_class=3, n_test_per_class=1, image_size=64)  # new parameters: replaced
    assert len(list((root / "Training" / "glioma").iterdir())) == 3
    assert read_manifest(root)["total"] == 16 == len(list(root.rglob("*.jpg")))


def test_a_stale_version_is_regenerated(tmp_path):
    root = generate_phantoms(tmp_path / "data", **SMALL)
    manifest = read_manifest(root)
    manifest["version"] = -1
    (root / "manifest.json").write_text(json.dumps(manifest))
    generate_phantoms(root, **SMALL)
    assert read_manifest(root)["version"] == phantoms.VERSION


def test_refuses_to_replace_a_foreign_folder(tmp_path):
    real = tmp_path / "real" / "Training" / "glioma"
    real.mkdir(parents=True)
    (real / "scan.jpg").write_bytes(b"not ours")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="not a phantom set"):
            generate_phantoms(tmp_path / "real", **SMALL, overwrite=overwrite)
    assert (real / "scan.jpg").read_bytes() == b"not ours"
    (tmp_path / "empty").mkdir()
    generate_phantoms(tmp_path / "empty", **SMALL)  # an empty folder is fine
    assert read_manifest(tmp_path / "empty")


@pytest.mark.parametrize("bad", [dict(n_per_class=0), dict(n_test_per_class=-1), dict(image_size=16),
                                 dict(seed=-1), dict(grayscale_fraction=1.5)])
def test_invalid_parameters_raise(tmp_path, bad):
    with pytest.raises(ValueError):
        generate_phantoms(tmp_path / "data", **{**SMALL, **bad})
    assert not (tmp_path / "data").exists()


def test_a_crash_leaves_no_manifest_and_keeps_the_old_set(tmp_path, monkeypatch):
    real_render, calls = render_phantom, []

    def flaky(label, rng, image_size=224):
        calls.append(label)
        if len(calls) == 10:
            raise RuntimeError("killed")
        return real_render(label, rng, image_size)

    monkeypatch.setattr(phantom_drawing, "render_phantom", flaky)
    with pytest.raises(RuntimeError, match="killed"):
        generate_phantoms(tmp_path / "data", **SMALL)
    assert not (tmp_path / "data").exists()
    assert list(tmp_path.iterdir()) == []  # no temporary folder left behind either

    monkeypatch.setattr(phantom_drawing, "render_phantom", real_render)
    root = generate_phantoms(tmp_path / "data", **SMALL)
    before = _files(root)
    monkeypatch.setattr(phantom_drawing, "render_phantom", flaky)
    calls.clear()
    with pytest.raises(RuntimeError, match="killed"):
        generate_phantoms(root, **SMALL, seed=1)
    assert _files(root) == before  # the previous complete set is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["data"]


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    phantoms.main([str(out), "--n-per-class", "3", "--n-test-per-class", "1", "--size", "48", "--seed", "2"])
    assert "16 phantom images" in capsys.readouterr().out
    assert read_manifest(out)["params"]["seed"] == 2
    with pytest.raises(SystemExit):
        phantoms.main([str(out), "--size", "8"])
    assert "image_size" in capsys.readouterr().err
    # The module entry point, as documented.
    proc = subprocess.run([sys.executable, "-m", "brainmri.data.phantoms", str(out), "--n-per-class", "3",
                           "--n-test-per-class", "1", "--size", "48", "--seed", "2"],
                          capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1])
    assert "16 phantom images" in proc.stdout


def _load(root: Path, split: str, px: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for label, name in enumerate(CLASSES):
        for path in sorted((root / split / name).iterdir()):
            with Image.open(path) as im:
                images.append(np.asarray(im.convert("L").resize((px, px), Image.BILINEAR), np.float32) / 255)
            labels.append(label)
    x = torch.from_numpy(np.stack(images))[:, None]
    return (x - 0.3) / 0.25, torch.tensor(labels)


def test_a_tiny_cnn_learns_the_classes(tmp_path):
    """The lesions carry the label: a 4-layer CNN trained on Training at 64 px generalises to Testing."""
    root = generate_phantoms(tmp_path / "data", n_per_class=40, n_test_per_class=15, image_size=224, seed=0)
    x_train, y_train = _load(root, "Training", 64)
    x_test, y_test = _load(root, "Testing", 64)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: threading overhead dominates on a shared 2-core box
    try:
        gen = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        layers = []
        for c_in, c_out in ((1, 8), (8, 16), (16, 32), (32, 32)):
            layers += [torch.nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), torch.nn.BatchNorm2d(c_out),
                       torch.nn.ReLU(), torch.nn.MaxPool2d(2)]
        net = torch.nn.Sequential(*layers, torch.nn.AdaptiveMaxPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 4))
        epochs, batch = 12, 16
        steps = epochs * -(-len(y_train) // batch)
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
        for _ in range(epochs):
            net.train()
            order = torch.randperm(len(y_train), generator=gen)
            for i in range(0, len(order), batch):
                idx = order[i:i + batch]
                loss = torch.nn.functional.cross_entropy(net(x_train[idx]), y_train[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        net.eval()
        with torch.no_grad():
            accuracy = (net(x_test).argmax(1) == y_test).float().mean().item()
    finally:
        torch.set_num_threads(threads)
    print(f"phantom test accuracy {accuracy:.3f}")
    assert accuracy > 0.85, accuracy
