"""How the command-line tools end on a full disk: one line, exit 75 (EX_TEMPFAIL: retry once space is freed)."""

from __future__ import annotations

import functools
import sys

from brainmri.atomic import EX_TEMPFAIL, DiskFullError


def full_disk_is_one_line(main):
    """Wrap a tool's ``main(argv)``: a full disk or exceeded quota ends it with one line and exit 75."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except DiskFullError as e:
            note = getattr(e, "status_note", None)
            print(f"error: {e}" + (f"; {note}" if note else ""), file=sys.stderr)
            return EX_TEMPFAIL

    return wrapper
