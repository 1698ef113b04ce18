"""Modules without values: a model's shapes, built before its weights are read into it.

Inside :func:`skeleton` modules are created on the meta device (no memory, whatever the model's
size) and the random initialisation their constructors run is skipped: every tensor is replaced
right after (from a checkpoint, a bundle or the seeded init of :mod:`.build`), so the draws would be
thrown away. Skipping them also keeps start-up short: a random draw on the meta device runs one of
torch's Python reference kernels, and the first of those imports ``torch._dynamo`` (about 1.5 s of
a CPU-only ``arbooth gen``). The global RNG is never touched.

The same holds for any other Python-implemented meta kernel (``2 ** tensor`` is one), so
constructors build their constant buffers with plain factory calls (see ``bsq_vae._BitPlaces``),
and :func:`zeros_` replaces ``Module.to_empty`` (whose ``empty_like`` of a meta tensor imports
sympy); ``tests/model/test_build.py`` checks that building the built-in models imports neither.
The skipping is a torch function mode, which is local to the thread that enters it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

#: ``torch.nn.init`` functions (the ones that dispatch through torch functions; the others call the
#: tensor methods below)
_INIT_FUNCTIONS = frozenset(
    getattr(nn.init, name)
    for name in ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
                 "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_")
    if hasattr(nn.init, name)
)
#: in-place random fills, skipped on meta tensors
_RANDOM_METHODS = frozenset(
    getattr(torch.Tensor, name)
    for name in ("normal_", "uniform_", "random_", "bernoulli_", "exponential_", "log_normal_", "cauchy_", "geometric_")
)


class _SkipInit(TorchFunctionMode):
    """Return meta tensors unchanged from ``torch.nn.init`` calls and in-place random fills (a real
    tensor is still initialised)."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _INIT_FUNCTIONS or func in _RANDOM_METHODS:
            target = args[0] if args else kwargs.get("tensor", kwargs.get("self"))
            if isinstance(target, torch.Tensor) and target.is_meta:
                return target
        return func(*args, **kwargs)


@contextlib.contextmanager
def skeleton() -> Iterator[None]:
    """Create modules on the meta device, with their random init skipped (fill every tensor after)."""
    with torch.device("meta"), _SkipInit():
        yield


def zeros_(module: nn.Module, device: torch.device | str = "cpu") -> nn.Module:
    """``module.to_empty(device=device)``, with zeros: every parameter and buffer becomes a zero tensor
    of its shape and dtype on ``device``, made by a factory call."""
    return module._apply(lambda t: torch.zeros(t.shape, dtype=t.dtype, device=device))
