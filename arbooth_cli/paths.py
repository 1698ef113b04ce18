"""The one place that knows arbooth's directories.

``ARBOOTH_HOME`` (if set) is the root of everything arbooth stores; otherwise the platform's user
cache directory (``platformdirs.user_cache_dir("arbooth")``, e.g. ``~/.cache/arbooth`` on Linux).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from .errors import InvalidInputError

ENV_HOME = "ARBOOTH_HOME"
#: names of models, subjects and runs: a file-system- and shell-friendly word (never ".", "..",
#: empty, or anything with a path separator)
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
NAME_RULE = "letters, digits, '.', '_' or '-', starting with a letter or digit, at most 64"


def home(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    override = env.get(ENV_HOME)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("arbooth", appauthor=False))


def models_dir(root: Path) -> Path:
    """Ready models: ``models/<name>/`` holding ``manifest.json`` and the files."""
    return root / "models"


def staging_dir(root: Path) -> Path:
    """Half-built models and downloads; never read as ready, cleaned by ``models prune``."""
    return root / "tmp"


def locks_dir(root: Path) -> Path:
    return root / "locks"


def pools_dir(root: Path) -> Path:
    """Prior pools kept for reuse: ``pools/<key>.safetensors``."""
    return root / "pools"


def runs_dir(root: Path) -> Path:
    """Tuning runs: ``runs/<name>/`` holding checkpoints, validation images and the prior pool."""
    return root / "runs"


def run_lock(root: Path, name: str) -> Path:
    """The lock a running ``arbooth tune`` of subject ``name`` holds."""
    return locks_dir(root) / f"tune-{name}.lock"


def valid_name(name: object) -> bool:
    return isinstance(name, str) and re.fullmatch(NAME_PATTERN, name) is not None


def check_name(name: object, what: str) -> str:
    """``name`` if it can name a ``what`` (subject, run, model) in a store; InvalidInputError if not."""
    if not valid_name(name):
        raise InvalidInputError(f"{what} name {name!r} is not valid: use {NAME_RULE}")
    return name  # type: ignore[return-value]


def store_entry(folder: Path, name: object, what: str) -> Path:
    """``folder / name`` for a valid ``name``, refused if it leads outside ``folder`` (through a
    link, say). Every name that becomes a path in a store goes through here."""
    path = Path(folder) / check_name(name, what)
    if path.is_symlink() or not path.resolve().is_relative_to(Path(folder).resolve()):
        raise InvalidInputError(f"{what} {name!r} in {folder} is a link or leads outside it",
                                hint=f"remove it by hand if it is yours: {path}")
    return path
