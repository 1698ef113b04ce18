"""Low-rank forms of a tuned tensor's change (``--save-rank``); ``subjects.use.tuned_values`` applies them.

For a tuned matrix W' of base W, the change D = W' - W is replaced by its best rank-R
approximation U_R S_R V_R^T (truncated SVD, Eckart-Young), stored as ``lora_up = U_R S_R``
(out, R) and ``lora_down = V_R^T`` (R, in). 1-D tensors (biases) keep their whole change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class LowRankReport:
    rank: int
    bytes_full: int  # the tuned tensors as stored in the full subject file
    bytes_lowrank: int
    relative_error: float  # ||D - D_R||_F / ||D||_F over all tuned tensors together


def lowrank_factors(delta_OI: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """``(up_OR, down_RI)`` with ``up @ down`` the best rank-``rank`` approximation of ``delta``."""
    if delta_OI.ndim != 2:
        raise ValueError(f"expected a matrix, got shape {tuple(delta_OI.shape)}")
    r = min(rank, *delta_OI.shape)
    U, S, Vh = torch.linalg.svd(delta_OI.float(), full_matrices=False)
    return (U[:, :r] * S[:r]).contiguous(), Vh[:r].contiguous()


def compress(tuned: Mapping[str, Tensor], base: Mapping[str, Tensor], rank: int,
             dtype: torch.dtype = torch.bfloat16) -> tuple[dict[str, Tensor], LowRankReport]:
    """The low-rank entries of a subject file, and what they cost."""
    out: dict[str, Tensor] = {}
    err2 = tot2 = 0.0
    bytes_full = 0
    for name, w in tuned.items():
        bytes_full += w.numel() * w.element_size()
        delta = w.float().cpu() - base[name].float().cpu()
        tot2 += float(delta.square().sum())
        if delta.ndim == 2 and rank < min(delta.shape):
            up, down = lowrank_factors(delta, rank)
            out[f"{name}.lora_up"], out[f"{name}.lora_down"] = up.to(dtype), down.to(dtype)
            err2 += float((delta - out[f"{name}.lora_up"].float() @ out[f"{name}.lora_down"].float()).square().sum())
        else:
            out[f"{name}.delta"] = delta.to(dtype)
            err2 += float((delta - out[f"{name}.delta"].float()).square().sum())
    nbytes = sum(t.numel() * t.element_size() for t in out.values())
    rel = (err2 / tot2) ** 0.5 if tot2 > 0 else 0.0
    return out, LowRankReport(rank, bytes_full, nbytes, rel)
