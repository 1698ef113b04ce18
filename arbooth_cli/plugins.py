"""Plugins through standard entry points.

Two groups:

* ``arbooth.commands``: the object is a ``typer.Typer`` (mounted as a sub-command named after the
  entry point) or a callable ``register(app)`` that adds commands to the root app.
* ``arbooth.models``: a callable ``register_models(register)`` that calls ``register(ModelSpec(...))``.

The built-in commands and specs go through exactly the same hooks (see ``cli/__init__.py`` and
``specs``). A plugin that fails to import or to register is recorded with its error and
skipped; it never breaks another command.

``ARBOOTH_LOAD_PLUGINS`` selects what loads: unset loads every installed plugin, an empty value
loads none, and a comma-separated list loads only those entry-point or distribution names.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from importlib import metadata
from typing import Any

COMMANDS_GROUP = "arbooth.commands"
MODELS_GROUP = "arbooth.models"
ENV_LOAD = "ARBOOTH_LOAD_PLUGINS"


@dataclass(frozen=True)
class PluginRecord:
    """What ``arbooth plugins list`` shows for one entry point."""

    name: str
    group: str
    target: str  # "module:attr"
    distribution: str | None
    version: str | None
    error: str | None = None
    builtin: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    def failed(self, exc: BaseException) -> PluginRecord:
        return replace(self, error=f"{type(exc).__name__}: {exc}")


def selection(env: Mapping[str, str] | None = None) -> set[str] | None:
    """None: load all; a set: load only these names (empty set: none)."""
    env = os.environ if env is None else env
    if ENV_LOAD not in env:
        return None
    return {s.strip() for s in env[ENV_LOAD].split(",") if s.strip()}


def _record(ep: metadata.EntryPoint) -> PluginRecord:
    dist = getattr(ep, "dist", None)
    return PluginRecord(
        name=ep.name,
        group=ep.group,
        target=ep.value,
        distribution=dist.metadata["Name"] if dist is not None else None,
        version=dist.version if dist is not None else None,
    )


def load_group(group: str, env: Mapping[str, str] | None = None) -> list[tuple[PluginRecord, Any]]:
    """Load the entry points of ``group``; a failed import yields ``(record_with_error, None)``."""
    wanted = selection(env)
    if wanted is not None and not wanted:
        return []
    out: list[tuple[PluginRecord, Any]] = []
    for ep in sorted(metadata.entry_points(group=group), key=lambda e: e.name):
        rec = _record(ep)
        if wanted is not None and rec.name not in wanted and rec.distribution not in wanted:
            continue
        try:
            obj = ep.load()
        except Exception as exc:  # import errors of any kind are the plugin's, not ours
            out.append((rec.failed(exc), None))
            continue
        out.append((rec, obj))
    return out
