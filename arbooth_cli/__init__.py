"""arbooth: personalize visual autoregressive (next-scale) text-to-image models on a few photos.

The library is the product; the ``arbooth`` command is a thin view over it. Importing this package
does not import torch; the heavy parts load on first use.
"""

from __future__ import annotations

from ._version import __version__

#: the jobs, one per command (``arbooth_cli.jobs``), and their configs
JOBS = ("generate", "tune", "inspect_noise", "inspect_weights", "evaluate")
CONFIGS = ("GenConfig", "TuneConfig", "InspectNoiseConfig", "InspectWeightsConfig", "EvalConfig")

__all__ = ["__version__", "build_components", "get_spec", "list_specs", "ModelCache", "ModelSpec", *JOBS, *CONFIGS]


def __getattr__(name: str):  # lazy public API keeps `import arbooth_cli` light
    if name in JOBS:
        from . import jobs

        return getattr(jobs, name)
    if name in CONFIGS:
        from . import config

        return getattr(config, name)
    if name in ("get_spec", "list_specs", "ModelSpec"):
        from . import registry

        return getattr(registry, name)
    if name == "build_components":
        from .models.build import build_components

        return build_components
    if name == "ModelCache":
        from .cache import ModelCache

        return ModelCache
    raise AttributeError(f"module 'arbooth_cli' has no attribute {name!r}")
