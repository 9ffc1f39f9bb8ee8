"""How the command-line tools end on bad input or a full disk: one line on stderr, never a traceback.

Bad input (a missing run, a bad config value, unknown data, ...) is exit 2; a full disk or an
exceeded quota is exit 75 (EX_TEMPFAIL: retry once space is freed), the old output file kept.

The bad-input classes may be named as ``"module:Class"`` strings, so that a tool need not import
the (heavy) module that defines them before it has parsed its arguments: an exception can only be an
instance of a class whose module is already imported.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

from brainmri.atomic import EX_TEMPFAIL, DiskFullError, is_disk_full

ErrorSpec = type[BaseException] | str


def _classes(specs: tuple[ErrorSpec, ...]) -> tuple[type[BaseException], ...]:
    out: list[type[BaseException]] = []
    for spec in specs:
        if isinstance(spec, str):
            module, _, name = spec.partition(":")
            if module in sys.modules:
                out.append(getattr(sys.modules[module], name))
        else:
            out.append(spec)
    return tuple(out)


def one_line_errors(*bad_input: ErrorSpec) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Wrap a tool's ``main(argv)``: ``bad_input`` errors end it with ``error: ...`` and exit 2, a full
    disk with exit 75."""

    def wrap(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def wrapper(argv: list[str] | None = None) -> int:
            try:
                return main(argv)
            except DiskFullError as e:
                note = getattr(e, "status_note", None)
                print(f"error: {e}" + (f"; {note}" if note else ""), file=sys.stderr)
                return EX_TEMPFAIL
            except Exception as e:
                if isinstance(e, OSError) and is_disk_full(e):  # met outside brainmri.atomic (a library's own write)
                    where = f" (writing {e.filename})" if e.filename else ""
                    print(f"error: no space left on device{where}: {e.strerror}", file=sys.stderr)
                    return EX_TEMPFAIL
                if not isinstance(e, _classes(bad_input)):
                    raise
                print(f"error: {e}", file=sys.stderr)
                return 2

        return wrapper

    return wrap


full_disk_is_one_line = one_line_errors()
