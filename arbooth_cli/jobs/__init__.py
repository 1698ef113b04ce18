"""The jobs: one public function per command, a typed config in and a typed result out.

- ``generate(GenConfig) -> GenResult`` (`arbooth gen`, ``jobs.gen``)
- ``tune(TuneConfig) -> TuneResult`` (`arbooth tune`, ``jobs.tune``)
- ``inspect_noise(InspectNoiseConfig) -> NoiseReport`` (`arbooth inspect noise`)
- ``inspect_weights(InspectWeightsConfig) -> WeightsReport`` (`arbooth inspect weights`)
- ``evaluate(EvalConfig) -> EvalReport`` (`arbooth eval`, ``jobs.evaluate``)

Each takes ``on_event(kind, data)`` for progress and shares its setup through ``session``. The
modules import torch; this package's ``__init__`` does not (the names load on first use).
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "generate": "gen", "GenResult": "gen",
    "tune": "tune", "TuneResult": "tune", "TuneInterrupted": "tune",
    "inspect_noise": "inspect_noise", "NoiseReport": "inspect_noise",
    "inspect_weights": "inspect_weights",
    "evaluate": "evaluate", "EvalReport": "evaluate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
