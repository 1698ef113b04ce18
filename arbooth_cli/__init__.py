"""arbooth: personalize visual autoregressive (next-scale) text-to-image models on a few photos.

The library is the product; the ``arbooth`` command is a thin view over it. Importing this package
does not import torch; the heavy parts load on first use.
"""

from __future__ import annotations

__version__ = "0.1.0.dev0"

__all__ = ["__version__", "build_components", "get_spec", "list_specs", "ModelCache", "ModelSpec"]


def __getattr__(name: str):  # lazy public API keeps `import arbooth_cli` light
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
