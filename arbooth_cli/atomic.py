"""Writes that a reader sees whole or not at all: a temporary file or folder beside the target,
renamed into place in one step. Every file or folder arbooth writes goes through here.

A failed write removes its temporary (and never fails a second time while cleaning up) and
raises a typed error: :class:`DiskFullError` for a full disk, :class:`ResourceError` otherwise.
No torch import.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from .errors import DiskFullError, ResourceError

#: the hint of a full disk while writing into arbooth's home (the cache, subjects, runs)
HOME_HINT = "free some disk space, or point ARBOOTH_HOME at a larger disk"
#: suffix of the temporary folders of :func:`write_dir_atomic` (left only by a killed process)
PARTIAL_SUFFIX = ".partial"


def raise_if_disk_full(exc: OSError, hint: str = HOME_HINT) -> None:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        raise DiskFullError(f"no space left on the device while writing: {exc}", hint=hint) from exc


def write_file_atomic(path: Path, write: Callable[[Path], object], *, hint: str | None = None) -> None:
    """``write(tmp)`` a temporary file beside ``path``, then rename it to ``path``.

    ``hint``: what the user can do when the folder is not writable or full (default: about
    ARBOOTH_HOME)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")  # hidden, beside it: one rename
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        if not isinstance(exc, OSError) or isinstance(exc, ResourceError):
            raise
        raise_if_disk_full(exc, hint or HOME_HINT)
        raise ResourceError(f"cannot write {path}: {exc.strerror or exc}", hint=hint) from None


def write_text_atomic(path: Path, text: str, *, hint: str | None = None) -> None:
    write_file_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), hint=hint)


def write_dir_atomic(target: Path, write: Callable[[Path], None]) -> None:
    """Fill a new folder with ``write`` and swap it in for ``target``; a reader finds the old or
    the new folder (as ``target`` or ``target.old``), never a half-written one."""
    tmp = target.with_name(f"{target.name}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}")
    old = target.with_name(target.name + ".old")
    try:
        tmp.mkdir(parents=True)
        write(tmp)
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:  # whatever stopped the write, no half-written folder stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(exc, OSError) or isinstance(exc, ResourceError):  # already typed (DiskFullError)
            raise
        raise_if_disk_full(exc)
        raise ResourceError(f"cannot write {target}: {exc.strerror or exc}") from None


def writable_folder(folder: Path, what: str, hint: str) -> Path:
    """Make ``folder`` (and its parents) and check that a file can be written in it, before any
    work that would write there; ``what`` names it in the error ("the output directory")."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".arbooth-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise_if_disk_full(exc, hint)
        raise ResourceError(f"cannot write to {what} {folder}: {exc.strerror or exc}", hint=hint) from None
    return folder


def remove_partials(folder: Path) -> list[Path]:
    """Delete the temporary folders and files a killed :func:`write_dir_atomic` or
    :func:`write_file_atomic` left in ``folder``; returns what was removed."""
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if p.name.endswith(PARTIAL_SUFFIX) or (p.name.startswith(".") and p.name.endswith(".tmp")):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with suppress(OSError):
                    p.unlink()
            removed.append(p)
    return removed
