"""Where brainmri keeps its caches (decoded images, fingerprints, features, file indices)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_base(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else $BRAINMRI_CACHE, else ~/.cache/brainmri."""
    return Path(cache_dir or os.environ.get("BRAINMRI_CACHE") or Path.home() / ".cache" / "brainmri")
