"""Model specs as data: typed, frozen descriptions of every model arbooth knows.

A :class:`ModelSpec` says how to build a model (architecture hyper-parameters of each component),
which files it needs (hub repository, file name, format, size and sha256 where known), its text
encoder, default sampling settings, license and source (the types are in
:mod:`arbooth_cli.modelspec`). Specs come from built-in tables (``arbooth_cli.specs``) and
from plugins (entry-point group ``arbooth.models``), both through :meth:`ModelRegistry.register`.

No torch import here: ``arbooth models list`` must stay fast.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from ._version import __version__
from .errors import PluginError, UnknownModelError
from .modelspec import (ROLES, FileKind, FileSpec, ModelSpec, RegisterFn, SamplingDefaults,  # noqa: F401 (re-exported)
                        TextEncoderConfig, TransformerConfig, TuningDefaults, VAEConfig)

if TYPE_CHECKING:
    from .plugins import PluginRecord


class ModelRegistry:
    """Named specs; plugins and built-ins add theirs through :meth:`register`."""

    def __init__(self) -> None:
        self._specs: dict[str, ModelSpec] = {}
        #: the ``arbooth.models`` entry points seen while building this registry
        self.plugin_records: list[PluginRecord] = []

    def register(self, spec: ModelSpec, *, replace: bool = False) -> None:
        if not isinstance(spec, ModelSpec):
            raise PluginError(f"expected a ModelSpec, got {type(spec).__name__}")
        problems = spec.problems()
        if problems:
            raise PluginError(f"model spec {spec.name!r} is inconsistent: " + "; ".join(problems))
        if spec.name in self._specs and not replace:
            raise PluginError(f"model {spec.name!r} is registered twice")
        self._specs[spec.name] = spec

    def unregister(self, name: str) -> None:
        self._specs.pop(name, None)

    def get(self, name: str) -> ModelSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise UnknownModelError(name, self._specs) from None

    def names(self) -> list[str]:
        return sorted(self._specs)

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self._specs[n] for n in self.names())

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __len__(self) -> int:
        return len(self._specs)




def default_registry(env: Mapping[str, str] | None = None) -> ModelRegistry:
    """A registry with the built-in specs and those of the selected installed plugins.

    A plugin's specs are added all or nothing: if its hook raises, none of them are kept and the
    failure is listed in ``registry.plugin_records``.
    """
    from . import plugins
    from .specs import register_builtin_models

    reg = ModelRegistry()
    register_builtin_models(reg.register)
    reg.plugin_records.append(
        plugins.PluginRecord(
            "builtin-models", plugins.MODELS_GROUP, "arbooth_cli.specs:register_builtin_models",
            "arbooth", __version__, builtin=True,
        )
    )
    for rec, hook in plugins.load_group(plugins.MODELS_GROUP, env):
        if hook is not None:
            staged: list[ModelSpec] = []
            try:
                hook(staged.append)
                for spec in staged:
                    if not isinstance(spec, ModelSpec):
                        raise PluginError(f"registered a {type(spec).__name__}, not a ModelSpec")
                    if spec.name in reg:
                        raise PluginError(f"model {spec.name!r} is already registered")
                for spec in staged:
                    reg.register(replace(spec, plugin=rec.distribution or rec.name))
            except Exception as exc:  # a broken plugin must not break the built-ins
                rec = rec.failed(exc)
        reg.plugin_records.append(rec)
    return reg


def get_spec(name: str, env: Mapping[str, str] | None = None) -> ModelSpec:
    """The spec named ``name``; :class:`UnknownModelError` (with suggestions) otherwise."""
    return default_registry(env).get(name)


def list_specs(env: Mapping[str, str] | None = None) -> list[ModelSpec]:
    return list(default_registry(env))
