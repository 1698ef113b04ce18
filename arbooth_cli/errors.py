"""Typed exceptions of the arbooth library.

Every error a user can cause is an :class:`ArboothError` subclass with a documented ``exit_code``.
The CLI maps them to one-line messages in one table (``arbooth_cli.cli._errors``); library users
catch them by type. Several also subclass a stdlib type so generic handlers keep working.

Exit codes (also in docs/cli.md):

====  =====================================================================
0     success
1     unexpected internal error (a bug: please report it)
2     usage error (bad option or argument, from the CLI parser)
3     model or subject not found, or not in the local cache
4     invalid input: config, file contents, checkpoint, hash mismatch
5     resource problem: disk full, unwritable directory, out of memory, device
6     network / download problem
130   interrupted (Ctrl-C)
====  =====================================================================
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_INVALID = 4
EXIT_RESOURCE = 5
EXIT_NETWORK = 6
EXIT_INTERRUPTED = 130


class ArboothError(Exception):
    """Base class of every error arbooth raises on purpose."""

    exit_code: int = EXIT_INTERNAL
    #: What the user can run or do next; shown after the message by the CLI.
    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return self.message


# ---- not found (3) -------------------------------------------------------------------------


class NotFoundError(ArboothError, LookupError):
    exit_code = EXIT_NOT_FOUND


class UnknownModelError(NotFoundError, KeyError):
    """No model spec with that name is registered."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        known = sorted(known)
        self.name = name
        self.suggestions = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        msg = f"unknown model {name!r}"
        if self.suggestions:
            msg += f"; did you mean {' or '.join(repr(s) for s in self.suggestions)}?"
        super().__init__(msg, hint="run 'arbooth models list' to see every known model")


class ModelNotCachedError(NotFoundError):
    """The spec is known but its files are not in the local cache."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"model {name!r} is not in the local cache",
            hint=f"run 'arbooth models pull {name}' (online) or "
            f"'arbooth models add {name} FILE...' (files you already have)",
        )


# ---- invalid input (4) ---------------------------------------------------------------------


class InvalidInputError(ArboothError, ValueError):
    exit_code = EXIT_INVALID


class ConfigError(InvalidInputError):
    """A configuration has one or more invalid fields (all listed in ``problems``)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration: " + "; ".join(self.problems))


class ModelFilesError(InvalidInputError):
    """Files given for a model are missing, extra, or of the wrong kind."""


class CheckpointError(InvalidInputError):
    """A checkpoint file is truncated, corrupt, or does not hold what the spec needs."""


class UnsafeCheckpointError(CheckpointError):
    """A pickled checkpoint holds something other than tensors and plain containers."""


class HashMismatchError(CheckpointError):
    def __init__(self, path: str, expected: str, actual: str, *, hint: str | None = None) -> None:
        self.path, self.expected, self.actual = path, expected, actual
        super().__init__(
            f"sha256 of {path} is {actual[:12]}…, expected {expected[:12]}…: the file is corrupt "
            "or not the one the model needs",
            hint=hint,
        )


class ModelExistsError(InvalidInputError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"model {name!r} is already in the cache",
            hint=f"pass --force to replace it, or 'arbooth models rm {name}' first",
        )


class NoToySubjectError(InvalidInputError):
    """`arbooth eval` on a toy-world model: no subject can be read from the subject's photos."""

    def __init__(self, folder: str, reason: str, photos: int) -> None:
        self.folder, self.reason = folder, reason
        super().__init__(
            f"cannot read a subject from the {photos} photos in {folder}: {reason}",
            hint="eval reads a toy subject from photos of one shape of a toy class in two or more colours, "
                 "on a plain or striped background (docs/eval.md)",
        )


class PluginError(ArboothError):
    """A plugin broke the contract (e.g. registered a model name that already exists)."""

    exit_code = EXIT_INVALID


# ---- resources (5) -------------------------------------------------------------------------


class ResourceError(ArboothError, OSError):
    exit_code = EXIT_RESOURCE


class CacheNotWritableError(ResourceError):
    pass


class DiskFullError(ResourceError):
    pass


class CacheBusyError(ResourceError):
    """Another arbooth process holds the lock of that model for too long."""


class RunBusyError(ResourceError):
    """Another arbooth tune of the same subject name is running."""


# ---- network (6) ---------------------------------------------------------------------------


class DownloadError(ArboothError, ConnectionError):
    exit_code = EXIT_NETWORK


class OfflineError(DownloadError):
    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        super().__init__(
            f"cannot download model {name!r}: {reason}",
            hint=f"import files you already have with 'arbooth models add {name} FILE...'",
        )


class TrainingDivergedError(ArboothError):
    """A tuning run's loss became NaN or infinite (exit code 4, like other bad settings)."""

    exit_code = EXIT_INVALID
