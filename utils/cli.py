"""One error style for every command-line entry point.

A problem the user can fix (a ``utils.errors.UserError``: a missing or corrupt file, an output that exists without
``--force``, a bad flag value or config key) ends the command with ONE line on stderr that names
the file, key or value, and exit status 2 (what argparse uses for a bad flag); anything else is a
bug and keeps its traceback. Every ``if __name__ == "__main__":`` block reads::

    run_cli(main)

``main`` itself raises, so Python callers and tests see the exception. ``CONTRAFACE_TRACEBACK=1``
shows the traceback of a user error too.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable, NoReturn, Sequence

from utils.errors import UsageError, UserError

__all__ = ["EXIT_USER_ERROR", "UsageError", "UserError", "user_error_types", "error_line", "run_cli"]

EXIT_USER_ERROR = 2


# files that are missing, in the way, or of the wrong kind
_FILE_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError,
)


def user_error_types(extra: Sequence[type[BaseException]] = ()) -> tuple[type[BaseException], ...]:
    """The exception types :func:`run_cli` reports as one line: ``UserError``, file errors, ``extra``."""
    return (UserError, *_FILE_ERRORS, *extra)


def error_line(exc: BaseException) -> str:
    """``error: <Type>: <message>`` on one line (a multi-line message is joined with ' | ')."""
    parts = [p.strip() for p in str(exc).splitlines() if p.strip()]
    return f"error: {type(exc).__name__}: {' | '.join(parts) or repr(exc)}"


def _to_log_files(line: str) -> None:
    """Also write the line into the log files already open (e.g. a run's training.log)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.emit(logging.LogRecord("cli", logging.ERROR, __file__, 0, line, None, None))
            handler.flush()


def run_cli(
    main: Callable[..., Any],
    argv: Sequence[str] | None = None,
    extra: Sequence[type[BaseException]] = (),
) -> NoReturn:
    """Run ``main(argv)`` (``main()`` when argv is None) and exit: 0, its int result, or 2 on a user error."""
    try:
        result = main() if argv is None else main(list(argv))
    except user_error_types(extra) as exc:
        if os.environ.get("CONTRAFACE_TRACEBACK") == "1":
            raise
        line = error_line(exc)
        print(line, file=sys.stderr, flush=True)
        _to_log_files(line)
        sys.exit(EXIT_USER_ERROR)
    sys.exit(result if isinstance(result, int) and not isinstance(result, bool) else 0)
