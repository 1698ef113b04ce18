"""How far tuning moved each tensor from the base model (the measures of `arbooth inspect weights`).

Per tuned tensor the relative change ``||w' - w|| / ||w||`` (Frobenius norms) and the official
analysis script's element-wise mean ``mean(|w' - w| / (|w| + eps))``, then both aggregated per
module type (self-attention, cross-attention, FFN, other) and per block. A group's ``relative``
is ``sqrt(sum ||dw||^2) / sqrt(sum ||w||^2)`` over its tensors, so big tensors count by size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any


from .._version import __version__

GROUPS = ("self-attention", "cross-attention", "FFN", "other")
#: the official script's guard against division by zero
ELEMENTWISE_EPS = 1e-8



def module_group(local_name: str) -> str:
    """The module type of a parameter, from its name inside a block (or the full name)."""
    parts = local_name.split(".")
    if "sa" in parts:
        return "self-attention"
    if "ca" in parts or "ca_norm" in parts:
        return "cross-attention"
    if "ffn" in parts:
        return "FFN"
    return "other"


@dataclass(frozen=True)
class TensorChange:
    name: str
    block: int | None  # None: outside the blocks
    group: str
    numel: int
    base_norm: float
    delta_norm: float
    elementwise: float  # mean |w' - w| / (|w| + eps)

    @property
    def relative(self) -> float:
        return self.delta_norm / self.base_norm if self.base_norm > 0 else (0.0 if self.delta_norm == 0 else math.inf)


def tensor_change(name: str, base: Any, tuned: Any, *, block: int | None, group: str) -> TensorChange:
    """The change of one tensor; both are compared in float64 after ``base`` is cast to the tuned
    tensor's dtype (the precision the tuning started from)."""
    if tuple(base.shape) != tuple(tuned.shape):
        raise ValueError(f"{name}: base {tuple(base.shape)} and tuned {tuple(tuned.shape)} differ")
    w = base.to(tuned.dtype).double().cpu()
    d = tuned.double().cpu() - w
    return TensorChange(name, block, group, int(w.numel()), float(w.norm()), float(d.norm()),
                        float((d.abs() / (w.abs() + ELEMENTWISE_EPS)).mean()) if w.numel() else 0.0)


@dataclass
class GroupChange:
    tensors: int = 0
    numel: int = 0
    relative: float = 0.0
    mean_relative: float = 0.0  # plain mean of the tensors' relative changes
    elementwise: float = 0.0  # element-weighted mean of the official measure


def aggregate(changes: Iterable[TensorChange], key: Callable[[TensorChange], Any]) -> dict[Any, GroupChange]:
    """Changes grouped by ``key`` (e.g. the module type or the block)."""
    buckets: dict[Any, list[TensorChange]] = {}
    for ch in changes:
        buckets.setdefault(key(ch), []).append(ch)
    out = {}
    for k, chs in buckets.items():
        base2 = sum(c.base_norm**2 for c in chs)
        delta2 = sum(c.delta_norm**2 for c in chs)
        numel = sum(c.numel for c in chs)
        out[k] = GroupChange(
            tensors=len(chs), numel=numel,
            relative=math.sqrt(delta2 / base2) if base2 > 0 else 0.0,
            mean_relative=sum(c.relative for c in chs) / len(chs),
            elementwise=sum(c.elementwise * c.numel for c in chs) / numel if numel else 0.0,
        )
    return out


@dataclass
class WeightsReport:
    subject: str
    subject_hash: str
    subject_file: str
    model: str
    model_hash: str
    tensors: list[TensorChange]
    by_type: dict[str, GroupChange]
    by_block: dict[int, GroupChange]
    by_block_and_type: dict[str, dict[str, GroupChange]]  # block -> type -> change
    embedding: dict[str, Any] | None  # shape and RMS of the learned subject vectors
    files: dict[str, str]
    seconds: float
    config: dict[str, Any] = field(default_factory=dict)
    arbooth_version: str = __version__

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tensors"] = [{**asdict(t), "relative": t.relative} for t in self.tensors]
        d["by_block"] = {str(k): v for k, v in d["by_block"].items()}
        return d


def compare(base: Mapping[str, Any], tuned: Mapping[str, Any], block_of: Mapping[str, tuple[int, str]]) -> list[TensorChange]:
    """Every tuned tensor against its base. ``block_of[name] = (block, name inside the block)``."""
    out = []
    for name in sorted(tuned):
        block, local = block_of.get(name, (None, name))
        out.append(tensor_change(name, base[name], tuned[name], block=block, group=module_group(local)))
    return out
