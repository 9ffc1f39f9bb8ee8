"""How the command-line tools end on bad input or a full disk: one line on stderr, never a traceback.

Bad input (a missing run, a bad config value, unknown data, ...) is exit 2; a full disk or an
exceeded quota is exit 75 (EX_TEMPFAIL: retry once space is freed), the old output file kept.
"""

from __future__ import annotations

import functools
import sys

from brainmri.atomic import EX_TEMPFAIL, DiskFullError, is_disk_full


def one_line_errors(*bad_input: type[BaseException]):
    """Wrap a tool's ``main(argv)``: ``bad_input`` errors end it with ``error: ...`` and exit 2, a full
    disk with exit 75."""

    def wrap(main):
        @functools.wraps(main)
        def wrapper(argv: list[str] | None = None) -> int:
            try:
                return main(argv)
            except DiskFullError as e:
                note = getattr(e, "status_note", None)
                print(f"error: {e}" + (f"; {note}" if note else ""), file=sys.stderr)
                return EX_TEMPFAIL
            except OSError as e:  # a full disk met outside brainmri.atomic (a folder, a library's own write)
                if not is_disk_full(e):
                    raise
                where = f" (writing {e.filename})" if e.filename else ""
                print(f"error: no space left on device{where}: {e.strerror}", file=sys.stderr)
                return EX_TEMPFAIL
            except bad_input as e:
                print(f"error: {e}", file=sys.stderr)
                return 2

        return wrapper

    return wrap


full_disk_is_one_line = one_line_errors()
