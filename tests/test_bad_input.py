"""Bad input gets a clear error naming the file, key or value, and never loses finished results."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import TINY, run_train

from brainmri.config import ConfigError, load_config


def test_corrupt_and_junk_files_are_skipped_and_reported(data_copy, tmp_path):
    glioma = data_copy / "Training" / "glioma"
    good = sorted(glioma.glob("*.jpg"))[0].read_bytes()
    (glioma / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (glioma / "garbage.jpg").write_bytes(b"this is not a jpeg")
    (glioma / "notes.txt").write_text("not an image: ignored")
    (glioma / ".DS_Store").write_bytes(b"\0\0")
    run_dir = tmp_path / "run"
    proc = run_train("--config", "configs/baseline_cnn.yaml", f"data.root={data_copy}", f"run_dir={run_dir}",
                     *TINY, "train.epochs=1")
    report = json.loads((run_dir / "skipped_files.json").read_text())
    assert report["count"] == 2
    assert {f["path"] for f in report["files"]} == {str(glioma / "truncated.jpg"), str(glioma / "garbage.jpg")}
    assert all(f["error"] for f in report["files"])
    assert "skipped 2 unreadable image(s)" in proc.stderr and "truncated.jpg" in proc.stderr
    assert json.loads((run_dir / "summary.json").read_text())["skipped_files"] == 2


def test_empty_class_folder_is_named(data_copy, tmp_path):
    empty = data_copy / "Training" / "meningioma"
    shutil.rmtree(empty)
    empty.mkdir()
    proc = run_train("--config", "configs/baseline_cnn.yaml", f"data.root={data_copy}",
                     f"run_dir={tmp_path / 'run'}", *TINY, check=False)
    assert proc.returncode == 2
    assert f"class folder has no images: {empty}" in proc.stderr
    assert not (tmp_path / "run").exists()  # train.py: a run that failed before its first epoch leaves nothing
    # a sweep task (the engine itself) records it in the run directory, so the sweep reports the task failed
    from brainmri.data.files import DataError
    from brainmri.train.engine import fit

    with pytest.raises(DataError):
        fit(load_config("configs/baseline_cnn.yaml", [f"data.root={data_copy}", f"run_dir={tmp_path / 'task'}", *TINY]))
    status = json.loads((tmp_path / "task" / "status.json").read_text())
    assert status["status"] == "failed" and str(empty) in status["error"]


def test_missing_data_dir_is_named(tmp_path):
    missing = tmp_path / "nowhere"
    proc = run_train("--config", "configs/baseline_cnn.yaml", f"data.root={missing}",
                     f"run_dir={tmp_path / 'run'}", *TINY, check=False)
    assert proc.returncode == 2 and f"data directory not found: {missing}" in proc.stderr


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optim.lrr=0.1"], "unknown config key optim.lrr"),
        (["recipe=a/b"], "recipe: 'a/b' is not a plain name"),
        (["model.arch=torchvision:resnet9000"],
         "unknown model.arch 'torchvision:resnet9000' (choose from baseline_cnn"),
        (["optim.lr=fast"], "optim.lr: expected a number, got 'fast'"),
        (["train.mixed_precision=fp8"], "invalid value for train.mixed_precision: 'fp8'"),
        (["optim.name=adamx"], "invalid value for optim.name: 'adamx' (choose from adam, adamw, sgd, ranger"),
        (["scheduler.name=step"], "invalid value for scheduler.name: 'step' (choose from none, plateau, cosine"),
        (["train.trainable=[head,layer4]"], "train.trainable: unknown parameter group 'layer4'"),
        (["train.phases=[{train: [head], lr_mult: {features: 0.1}}]"],
         "train.phases[0].lr_mult: 'features' is not a group the phase trains (it trains head"),
        (["data.batch_size=0"], "data.batch_size must be >= 1"),
        (["train.phases.3.epochs=1"], "train.phases: expected a list"),
        (["nonsense"], "is not of the form key=value"),
        (["train.monitor=val/f1"], "invalid value for train.monitor: 'val/f1'"),
        (["data.val_fraction=0"], "data.val_fraction must be in"),
        (["train.epochs=0"], "train.epochs: nothing to train"),
        (["data.input_size=7"], "data.input_size=7 is too small for model.arch=baseline_cnn"),
        (["recipe=resnet50_finetune", "model.arch=resnet50", "data.input_size=16"],
         "data.input_size=16 is too small for model.arch=resnet50"),
        (["data.image_size=64"], "config key data.image_size was renamed data.input_size"),
        (["data.channels=1"], "config key data.channels was renamed data.input_channels"),
        (["data.synthetic.image_size=64"],
         "config key data.synthetic.image_size was renamed data.synthetic.render_size"),
        (["model.channels=[8]"], "config key model.channels was renamed model.conv_widths"),
        (["train.checkpoint_every_min=-1"], "train.checkpoint_every_min must be >= 0"),
    ],
)
def test_bad_config_values_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config("configs/baseline_cnn.yaml", overrides)


def test_bad_yaml_and_missing_file_are_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("recipe: baseline_cnn\noptim: [unclosed\n")
    with pytest.raises(ConfigError, match=f"invalid YAML in {bad}"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    proc = run_train("--config", str(bad), check=False)
    assert proc.returncode == 2 and f"invalid YAML in {bad}" in proc.stderr


def test_yaml_is_loaded_safely(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("recipe: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(evil)


def test_bad_input_never_touches_a_finished_run(phantom_root, tmp_path):
    run_dir = tmp_path / "run"
    base = ["--config", "configs/baseline_cnn.yaml", f"data.root={phantom_root}", f"run_dir={run_dir}", *TINY,
            "train.epochs=1"]
    run_train(*base)
    summary = (run_dir / "summary.json").read_bytes()
    for bad, message in ((["optim.lr=fast"], "optim.lr"),
                         ([f"data.root={tmp_path / 'missing'}"], "already holds a finished run")):
        proc = run_train(*base, *bad, check=False)
        assert proc.returncode == 2 and message in proc.stderr
    assert (run_dir / "summary.json").read_bytes() == summary
    assert (run_dir / "checkpoints" / "best.pt").exists()


def test_resume_refuses_a_changed_config(phantom_root, tmp_path):
    run_dir = tmp_path / "run"
    base = ["--config", "configs/baseline_cnn.yaml", f"data.root={phantom_root}", f"run_dir={run_dir}", *TINY,
            "train.epochs=3"]
    assert run_train(*base, "train.fail_at_epoch=2", check=False).returncode != 0
    proc = run_train("--resume", str(run_dir), "train.fail_at_epoch=null", "optim.lr=0.5", check=False)
    assert proc.returncode == 2 and "interrupted run with a different config (differs in optim.lr)" in proc.stderr
    run_train("--resume", str(run_dir), "train.fail_at_epoch=null", "train.epochs=4")  # extending is fine
    assert json.loads((run_dir / "summary.json").read_text())["epochs_run"] == 4


@pytest.mark.parametrize("bad, key", [("train.epochs=0", "train.epochs"),
                                      ("data.input_size=7", "data.input_size=7")])
def test_bad_sizes_fail_before_compute_with_one_line(bad, key, tmp_path):
    proc = run_train("--config", "configs/baseline_cnn.yaml", f"run_dir={tmp_path / 'run'}", *TINY, bad,
                     check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_one_class_data_root_is_refused_before_training(data_copy, tmp_path):
    for name in ("meningioma", "notumor", "pituitary"):
        shutil.rmtree(data_copy / "Training" / name)
    proc = run_train("--config", "configs/baseline_cnn.yaml", f"data.root={data_copy}",
                     f"run_dir={tmp_path / 'run'}", *TINY, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{data_copy / 'Training'} holds one class folder (glioma)" in lines[0]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    assert not list((tmp_path / "run" / "checkpoints").glob("*.pt"))
