"""The one place that knows arbooth's directories.

``ARBOOTH_HOME`` (if set) is the root of everything arbooth stores; otherwise the platform's user
cache directory (``platformdirs.user_cache_dir("arbooth")``, e.g. ``~/.cache/arbooth`` on Linux).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

ENV_HOME = "ARBOOTH_HOME"


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
