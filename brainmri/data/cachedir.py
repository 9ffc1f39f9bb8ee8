"""Where brainmri keeps its caches (decoded images, fingerprints, features, file indices)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_base(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else $BRAINMRI_CACHE, else ~/.cache/brainmri."""
    return Path(cache_dir or os.environ.get("BRAINMRI_CACHE") or Path.home() / ".cache" / "brainmri")


_warned: set[str] = set()


def cache_unwritable(what: str, path, error: BaseException) -> None:
    """A cache that cannot be written (full disk, quota, read-only) is an optimisation lost, never a
    failure: one warning per kind of cache and process, and the work goes on without it."""
    if what in _warned:
        return
    _warned.add(what)
    import logging

    reason = getattr(error, "reason", None) or getattr(error, "strerror", None) or str(error)
    logging.getLogger("brainmri").warning("the %s cache under %s cannot be written (%s); going on without it",
                                          what, path, reason)
