"""Read W&B offline runs (``offline-run-*/run-<id>.wandb``) without a server.

wandb >= 0.30 keeps config, history and summary only in the binary record log, and ships no
Python reader for it. The file is a 7-byte ``:W&B`` header followed by the LevelDB log format
(32 KiB blocks, CRC32 over type+payload); each record is a serialized ``Record`` protobuf.
See /work/shared/notes/wandb-offline.md for the measured layout.

This module owns decoding and merging resumed pieces; it knows nothing about brainmri metrics.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# the generated protobuf module has no type stub that names its messages
from wandb.proto.wandb_internal_pb2 import Record  # type: ignore[attr-defined]

BLOCK = 32768
HEADER = b":W&B\xe1\xbe"
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
_DIR_TIME = re.compile(r"offline-run-(\d{8}_\d{6})-")


def iter_records(path: str | Path, errors: list[str] | None = None) -> Iterator[Record]:
    """Yield the Record protobufs of one ``.wandb`` file in order.

    A truncated tail (killed run) ends the scan quietly; a chunk whose CRC does not match, or a
    record that fails to parse, is skipped and described in ``errors``.

    Example: ``[r.WhichOneof("record_type") for r in iter_records("run-x.wandb")]``
    """
    errors = [] if errors is None else errors
    data = Path(path).read_bytes()
    if not data.startswith(HEADER):
        errors.append(f"{path}: not a W&B record file")
        return
    pos, buf, bad = 7, b"", False
    while pos + 7 <= len(data):
        room = BLOCK - pos % BLOCK
        if room < 7:  # writer pads block tails too short for a chunk header
            pos += room
            continue
        crc, n, kind = struct.unpack_from("<IHB", data, pos)
        if crc == 0 and n == 0 and kind == 0:  # zeroed rest of block
            pos += room
            continue
        body = data[pos + 7 : pos + 7 + n]
        if len(body) < n:
            break
        pos += 7 + n
        if zlib.crc32(body, zlib.crc32(bytes([kind]))) != crc:
            errors.append(f"{path}: CRC mismatch at offset {pos - 7 - n}; record skipped")
            bad = True
            continue
        if kind in (FULL, FIRST):
            buf, bad = body, False
        else:
            buf += body
        if kind in (FULL, LAST) and not bad:
            try:
                yield Record.FromString(buf)
            except Exception as exc:  # protobuf DecodeError; keep going with the next record
                errors.append(f"{path}: undecodable record at offset {pos}: {exc}")


def _value(item) -> object:
    return json.loads(item.value_json)  # accepts the bare NaN/Infinity tokens W&B writes


def _set(d: dict, keys: list[str], value) -> None:
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = value


def _pop(d: dict, keys: list[str]) -> None:
    for k in keys[:-1]:
        d = d.get(k, {})
    d.pop(keys[-1], None)


def _keys(item) -> list[str]:
    return list(item.nested_key) or [item.key]


def _fold(target: dict, rec) -> None:
    """Apply a ConfigRecord/SummaryRecord (update[] then remove[]) to ``target``."""
    for item in rec.update:
        _set(target, _keys(item), _value(item))
    for item in rec.remove:
        _pop(target, _keys(item))


def read_wandb_file(path: str | Path) -> dict:
    """Decode one ``run-<id>.wandb`` file (one piece of a run).

    Returns a dict with run_id, project, entity, name, group, job_type, tags, config (nested,
    without ``_wandb``), history (row dicts in logged order, with ``_step``/``_runtime``/``_timestamp``),
    summary (folded, without ``_wandb``), artifacts (name, type and ``files``: path in the
    artifact -> local file, e.g. the images of a logged table), state ("finished" | "failed" |
    "running": no exit record, i.e. still running or killed), exit_code, start_time (epoch seconds), files, errors.

    Example: ``read_wandb_file(".../offline-run-20260101_000000-abc/run-abc.wandb")["summary"]``
    """
    path = Path(path)
    errors: list[str] = []
    run: dict[str, Any] = {"run_id": path.stem.removeprefix("run-"), "project": "", "entity": "", "name": "",
           "group": "", "job_type": "", "tags": [], "config": {}, "history": [], "summary": {},
           "artifacts": [], "state": "running", "exit_code": None, "start_time": None, "files": [str(path)]}
    for rec in iter_records(path, errors):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            row: dict = {}
            for item in rec.history.item:
                _set(row, _keys(item), _value(item))
            run["history"].append(row)
        elif kind == "summary":
            _fold(run["summary"], rec.summary)
        elif kind == "config":
            _fold(run["config"], rec.config)
        elif kind == "run":
            r = rec.run
            run.update(run_id=r.run_id or run["run_id"], project=r.project, entity=r.entity,
                       name=r.display_name, group=r.run_group, job_type=r.job_type, tags=list(r.tags))
            if r.HasField("start_time"):
                run["start_time"] = r.start_time.seconds + r.start_time.nanos / 1e9
            _fold(run["config"], r.config)
        elif kind == "artifact":
            a = rec.artifact
            run["artifacts"].append({"name": a.name, "type": a.type,
                                     "files": {c.path: c.local_path for c in a.manifest.contents}})
        elif kind == "exit":
            run["exit_code"] = rec.exit.exit_code
            run["state"] = "finished" if rec.exit.exit_code == 0 else "failed"
    for d in (run["config"], run["summary"]):
        d.pop("_wandb", None)
    run["errors"] = errors
    return run


def _piece_order(piece: dict) -> tuple:
    """Start time, then dir timestamp and name (a second piece in the same second gets ``-1``)."""
    parent = Path(piece["files"][0]).parent.name
    m = _DIR_TIME.match(parent)
    return (piece["start_time"] or 0.0, m.group(1) if m else "", parent)


def merge_pieces(pieces: list[dict]) -> dict:
    """Merge the pieces of one resumed run (same id) in start-time order.

    Config and summary are folded piece by piece (later wins). History rows are concatenated;
    an offline resume restarts ``_step`` at 0, so rows are not keyed by step. When rows carry an
    ``epoch`` (brainmri does), a re-logged epoch after resuming from an older checkpoint replaces
    the earlier row, and rows are ordered by epoch; rows without one (media logged at the end)
    follow in logged order. State, exit code and identity come from the
    last piece, start_time from the first.
    """
    pieces = sorted(pieces, key=_piece_order)
    run = {**pieces[-1], "config": {}, "summary": {}, "history": [], "files": [], "errors": [], "artifacts": []}
    run["start_time"] = pieces[0]["start_time"]
    for p in pieces:
        _deep_update(run["config"], p["config"])
        _deep_update(run["summary"], p["summary"])
        run["history"].extend(p["history"])
        run["files"] += p["files"]
        run["errors"] += p["errors"]
        run["artifacts"] += p.get("artifacts", [])
    if len(pieces) > 1 and any("epoch" in r for r in run["history"]):
        by_epoch = {r["epoch"]: r for r in run["history"] if "epoch" in r}
        run["history"] = [by_epoch[e] for e in sorted(by_epoch)] + [r for r in run["history"] if "epoch" not in r]
    run["pieces"] = len(pieces)
    return run


def _deep_update(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_update(dst[k], v)
        else:
            dst[k] = v


def find_wandb_files(*roots: str | Path) -> list[Path]:
    """All ``run-*.wandb`` files under the given files/dirs (recursive, symlinks like latest-run skipped)."""
    found: set[Path] = set()
    for root in map(Path, roots):
        if root.is_file() and root.suffix == ".wandb":
            found.add(root.resolve())
        elif root.is_dir():
            found.update(p.resolve() for p in root.rglob("run-*.wandb")
                         if "latest-run" not in p.parts)
    return sorted(found)


def read_offline_runs(*roots: str | Path) -> list[dict]:
    """Read every offline run under ``roots``; resumed pieces sharing an id become one run.

    Example: ``{r["run_id"]: r["state"] for r in read_offline_runs("sweeps/lr")}``
    """
    by_id: dict[str, list[dict]] = {}
    for f in find_wandb_files(*roots):
        piece = read_wandb_file(f)
        by_id.setdefault(piece["run_id"], []).append(piece)
    return [merge_pieces(p) for _, p in sorted(by_id.items())]
