"""The one table from library exceptions to one-line messages and exit codes.

Order matters: the first matching type wins, so subclasses come before their bases. Anything that
is not an :class:`ArboothError` (a bug) propagates with its traceback.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable

from ..errors import (
    EXIT_INTERRUPTED,
    ArboothError,
    CacheNotWritableError,
    ConfigError,
    DiskFullError,
    DownloadError,
    HashMismatchError,
    ModelNotCachedError,
    NoToySubjectError,
    TrainingDivergedError,
    UnknownModelError,
    UnsafeCheckpointError,
)

Formatter = Callable[[ArboothError], str]


def _plain(exc: ArboothError) -> str:
    return exc.message


#: (exception type, label shown before the message, formatter). Exit codes live on the types.
ERROR_TABLE: list[tuple[type[ArboothError], str, Formatter]] = [
    (UnknownModelError, "unknown model", _plain),
    (ModelNotCachedError, "not cached", _plain),
    (UnsafeCheckpointError, "unsafe checkpoint", _plain),
    (HashMismatchError, "hash mismatch", _plain),
    (ConfigError, "bad config", _plain),  # one line: "invalid configuration: a; b"
    (NoToySubjectError, "not a toy subject", _plain),
    (TrainingDivergedError, "diverged", _plain),
    (DiskFullError, "disk full", _plain),
    (CacheNotWritableError, "not writable", _plain),
    (DownloadError, "download failed", _plain),
    (ArboothError, "error", _plain),
]


def debug_enabled() -> bool:
    return os.environ.get("ARBOOTH_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def format_error(exc: ArboothError) -> tuple[str, int]:
    """The text the CLI prints for ``exc`` (message, then the hint on its own line), and the exit code."""
    for etype, _label, fmt in ERROR_TABLE:
        if isinstance(exc, etype):
            text = f"error: {fmt(exc)}"
            if exc.hint:
                text += f"\nhint: {exc.hint}"
            return text, exc.exit_code
    raise AssertionError("ArboothError is the table's last row")  # pragma: no cover


def report(exc: BaseException) -> int:
    """Print ``exc`` on stderr the way users see it; return the exit code."""
    if isinstance(exc, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    assert isinstance(exc, ArboothError)
    if debug_enabled():
        traceback.print_exception(exc, file=sys.stderr)
    text, code = format_error(exc)
    print(text, file=sys.stderr)
    return code
