"""brainmri.results.wandb_offline reads back real offline .wandb files written by wandb.init/log/finish."""

import math
import os

import pytest

from wandb_runs import write_runs

from brainmri.results.wandb_offline import iter_records, read_offline_runs, read_wandb_file

os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true")

CONFIG = {"recipe": "baseline_cnn", "seed": 3, "optim": {"name": "adamw", "lr": 3e-4, "weight_decay": 0.05},
          "data": {"image_size": 32, "root": None}, "wandb": {"tags": ["a", "b"]}, "dotted.key": 1}
ROWS = [{"epoch": e, "phase": "main", "step": 10 * e, "lr": 1e-3 / e, "train/loss": 1.0 / e, "train/acc": 0.5 + e / 20,
         "val/loss": 1.2 / e, "val/acc": 0.4 + e / 10, "val/macro_f1": 0.3 + e / 10, "val/auc": 0.8, "val/ece": 0.1}
        for e in (1, 2, 3)]
SUMMARY = {"val/acc": 0.7, "test/acc": 0.65, "test/recall/glioma": 0.5, "status": "finished", "best_epoch": 3,
           "val/ece": float("nan")}


def _history(run):
    return [{k: v for k, v in row.items() if not k.startswith("_")} for row in run["history"]]


def _same(a, b):
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wb")
    write_runs([{"dir": str(tmp), "id": "fin1", "group": "lr-sweep", "job_type": "train", "tags": ["t1"],
                 "config": CONFIG, "rows": ROWS, "summary": {**SUMMARY, "tmp": 1}, "del_summary": ["tmp"]}], tmp)
    (path,) = tmp.rglob("run-fin1.wandb")
    return path


def test_reads_back_what_was_logged(finished):
    run = read_wandb_file(finished)
    assert (run["run_id"], run["project"], run["group"], run["job_type"], run["tags"]) == \
        ("fin1", "brainmri", "lr-sweep", "train", ["t1"])
    assert run["config"] == CONFIG
    assert _history(run) == ROWS
    assert [r["_step"] for r in run["history"]] == [1, 2, 3]
    for k, v in SUMMARY.items():
        # measured: wandb writes a NaN summary value as JSON null
        assert _same(run["summary"][k], None if v != v else v), k
    assert "tmp" not in run["summary"] and "_wandb" not in run["summary"]
    assert (run["state"], run["exit_code"], run["errors"]) == ("finished", 0, [])
    assert run["start_time"] > 1e9


def test_failed_run_state(tmp_path):
    write_runs([{"dir": str(tmp_path), "id": "bad1", "config": CONFIG, "rows": ROWS[:1], "exit_code": 1}], tmp_path)
    (run,) = read_offline_runs(tmp_path)
    assert (run["state"], run["exit_code"], _history(run)) == ("failed", 1, ROWS[:1])


def test_resumed_pieces_are_one_run(tmp_path):
    relogged = {**ROWS[1], "val/acc": 0.99}  # epoch 2 logged again after resuming from epoch 1's checkpoint
    write_runs([{"dir": str(tmp_path), "id": "res1", "config": CONFIG, "rows": ROWS[:2], "summary": {"a": 1},
                 "exit_code": 1},
                {"dir": str(tmp_path), "id": "res1", "config": {"resumed_note": True}, "rows": [relogged, ROWS[2]],
                 "summary": {"test/acc": 0.6}}], tmp_path)
    assert len(list(tmp_path.rglob("run-res1.wandb"))) == 2
    (run,) = read_offline_runs(tmp_path)
    assert run["pieces"] == 2 and run["state"] == "finished"
    assert _history(run) == [ROWS[0], relogged, ROWS[2]]
    assert run["summary"]["a"] == 1 and run["summary"]["test/acc"] == 0.6
    assert run["config"] == {**CONFIG, "resumed_note": True}


def test_truncated_tail_is_tolerated(finished, tmp_path):
    data = finished.read_bytes()
    full = _history(read_wandb_file(finished))
    for cut in range(8, len(data), max(1, len(data) // 60)):
        p = tmp_path / "run-cut.wandb"
        p.write_bytes(data[:cut])
        run = read_wandb_file(p)
        assert _history(run) == full[: len(run["history"])]  # a prefix, never garbage
        assert run["state"] == "running" and run["errors"] == []


def test_crc_error_skips_only_that_record(finished, tmp_path):
    data = bytearray(finished.read_bytes())
    hits = [i for i in range(len(data)) if data.startswith(b"val/macro_f1", i)]
    data[hits[3]] ^= 0xFF  # hits: summary copy of row 1, row 1, summary copy of row 2, *row 2*, ...
    p = tmp_path / "run-crc.wandb"
    p.write_bytes(bytes(data))
    run = read_wandb_file(p)
    assert len(run["errors"]) == 1 and "CRC" in run["errors"][0]
    assert _history(run) == [ROWS[0], ROWS[2]]
    assert run["state"] == "finished"


def test_record_split_across_blocks(tmp_path):
    big = {"recipe": "x", "blob": "y" * 100_000}
    write_runs([{"dir": str(tmp_path), "id": "big1", "config": big, "rows": ROWS}], tmp_path)
    (path,) = tmp_path.rglob("run-big1.wandb")
    assert {r.WhichOneof("record_type") for r in iter_records(path)} >= {"run", "history", "exit"}
    run = read_wandb_file(path)
    assert run["config"] == big and _history(run) == ROWS
