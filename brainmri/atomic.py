"""Durable writes: the one path every file brainmri keeps goes through (bottom floor, no brainmri imports).

A write goes to a per-process temporary file in the target's own folder, is flushed and fsynced,
then ``os.replace``d over the target: a reader, or a resume after a kill, sees the old file or the
new one, never half of one. When the file system is full or a quota is exceeded (ENOSPC, EDQUOT)
the temporary file is removed, the previous file is left as it was, and :class:`DiskFullError`
names the file, the bytes the write needed and the space left on that file system.

    atomic_write(path, "text")                 # str, bytes
    write_json(path, {"a": 1})                 # NaN/inf become null
    atomic_write(path, state_dict, kind="torch")
    with atomic_path(path) as tmp:             # for writers that want a file name (np.save, ONNX, PNG)
        np.save(tmp, array)
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
EX_TEMPFAIL = 75  # sysexits.h: a temporary failure; a tool stopped by a full disk exits with it


def _mount_of(path: Path) -> Path:
    p = path.resolve()
    while not p.is_dir():
        p = p.parent
    while p != p.parent and not os.path.ismount(p):
        p = p.parent
    return p


def free_bytes(path: str | Path) -> int:
    """Bytes an unprivileged writer may still use on the file system holding ``path``."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    st = os.statvfs(p)
    return st.f_bavail * st.f_frsize


class DiskFullError(OSError):
    """A write failed because the file system is full or a quota is exceeded (one line for the user)."""

    def __init__(self, path: str | Path, needed: int | None, free: int | None, mount: str | Path | None = None):
        self.path = Path(path)
        self.needed, self.free = needed, free
        self.mount = Path(mount) if mount else _mount_of(self.path.parent)
        need = f"{human_bytes(needed)}" if needed is not None else "?"
        have = f"{human_bytes(free)}" if free is not None else "?"
        self.reason = f"no space left on {self.mount}: needed {need}, free {have}"
        self.hint = ""  # what to do about it, added by whoever knows (e.g. how to resume)
        super().__init__(errno.ENOSPC, f"{self.reason} (writing {self.path})")

    def __str__(self) -> str:
        return f"{self.reason} (writing {self.path}){self.hint}"

    def __reduce__(self):  # picklable across processes (submitit results)
        return (DiskFullError, (self.path, self.needed, self.free, self.mount))


def human_bytes(n: int | float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, DiskFullError) or (isinstance(exc, OSError) and exc.errno in FULL_ERRNOS)


def _tmp_for(path: Path) -> Path:
    # the suffix stays last, so writers that add one (np.save, np.savez) keep the name they were given
    return path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: str | Path, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and replaces ``path``.

    Any error removes the temporary file and leaves ``path`` as it was; a full disk or quota is
    raised as :class:`DiskFullError` (``needed``: the bytes the write was known to need).
    """
    path = Path(path)
    tmp = _tmp_for(path)
    try:
        yield tmp
        if tmp.is_dir():
            os.replace(tmp, path) if not path.exists() else _replace_dir(tmp, path)
            return
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as e:
        written = _size(tmp)
        _remove(tmp)
        if is_disk_full(e) and not isinstance(e, DiskFullError):
            raise DiskFullError(path, needed if needed is not None else written, free_bytes(path.parent)) from None
        raise


def _replace_dir(tmp: Path, path: Path) -> None:
    import shutil

    old = path.with_name(f".{path.name}.old{os.getpid()}")
    os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def _size(p: Path) -> int | None:
    try:
        return p.stat().st_size
    except OSError:
        return None


def _remove(p: Path) -> None:
    import shutil

    try:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    except OSError:
        pass


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def jsonable(value: Any) -> Any:
    """``value`` with non-finite floats as ``None`` (strict JSON, readable by any tool)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def encode(data: str | bytes | Any, kind: str = "auto") -> bytes:
    if kind == "torch":
        import torch

        buf = io.BytesIO()
        torch.save(data, buf)
        return buf.getvalue()
    if kind == "json":
        return json.dumps(jsonable(data), indent=2, default=str, allow_nan=False).encode()
    if isinstance(data, str):
        return data.encode()
    return bytes(data)


def atomic_write(path: str | Path, data: str | bytes | Any, kind: str = "auto") -> None:
    """Write ``data`` to ``path`` atomically: text (str), bytes, ``kind="json"`` or ``kind="torch"``."""
    payload = encode(data, kind)
    with atomic_path(path, needed=len(payload)) as tmp:
        with open(tmp, "wb") as f:
            f.write(payload)


def append_line(path: str | Path, line: str) -> None:
    """Append one line durably; on a full disk the file is cut back to its old length (no torn line)."""
    path = Path(path)
    data = memoryview((line.rstrip("\n") + "\n").encode())
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            while data:  # unbuffered: a short write is continued, an error is seen here
                data = data[os.write(fd, data):]
            os.fsync(fd)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            if is_disk_full(e):
                raise DiskFullError(path, len(line) + 1, free_bytes(path.parent)) from None
            raise
    finally:
        os.close(fd)


def write_json(path: str | Path, data: Any) -> None:
    """Atomic JSON write; NaN (e.g. AUC with a class missing) becomes null."""
    atomic_write(path, data, kind="json")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())
