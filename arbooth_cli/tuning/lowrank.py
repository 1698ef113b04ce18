"""Low-rank forms of a tuned tensor's change (``--save-rank``), and applying subject files.

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


def tuned_values(entries: Mapping[str, Tensor], base: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The tensors a subject file sets, from its entries (full values or low-rank changes) and the
    base model's tensors ``base`` (only those the file names are read)."""
    out: dict[str, Tensor] = {}
    for key, t in entries.items():
        if key == "subject_embedding":
            continue
        if key.endswith(".lora_up"):
            name = key[: -len(".lora_up")]
            down = entries[f"{name}.lora_down"]
            w = base[name]
            out[name] = (w.float() + (t.float().to(w.device) @ down.float().to(w.device))).to(w.dtype)
        elif key.endswith(".lora_down"):
            continue
        elif key.endswith(".delta"):
            name = key[: -len(".delta")]
            w = base[name]
            out[name] = (w.float() + t.float().to(w.device)).to(w.dtype)
        else:
            out[key] = t
    return out
