"""Low-rank forms of a tuned tensor's change (``--save-rank``); ``subjects.use.tuned_values`` applies them.

For a tuned matrix W' of base W, the change D = W' - W is replaced by its best rank-R
approximation U_R S_R V_R^T (Eckart-Young), stored as ``lora_up = U_R S_R``
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
    """``(up_OR, down_RI)`` with ``up @ down`` the best rank-``rank`` approximation of ``delta``.

    From the eigenvectors of the smaller Gram matrix in float64 rather than a full SVD: the same
    subspace, and on a GPU a 2048 x 2048 ``eigh`` takes milliseconds where a CPU SVD of an
    8192 x 2048 change took seconds (infinity-2b has 160 such matrices)."""
    if delta_OI.ndim != 2:
        raise ValueError(f"expected a matrix, got shape {tuple(delta_OI.shape)}")
    O, I = delta_OI.shape
    r = min(rank, O, I)
    D = delta_OI.double()
    if not D.any():  # an untouched tensor (cuSOLVER's eigh can fail on an all-zero matrix)
        return delta_OI.new_zeros(O, r, dtype=torch.float32), delta_OI.new_zeros(r, I, dtype=torch.float32)
    try:
        return _from_gram(D, r)
    except torch.linalg.LinAlgError:  # a GPU solver that did not converge: the SVD on the CPU
        U, S, Vh = torch.linalg.svd(D.cpu(), full_matrices=False)
        up, down = (U[:, :r] * S[:r]).float(), Vh[:r].float()
        return up.to(delta_OI.device).contiguous(), down.to(delta_OI.device).contiguous()


def _from_gram(D: Tensor, r: int) -> tuple[Tensor, Tensor]:
    O, I = D.shape
    if O >= I:
        _, V_IR = torch.linalg.eigh(D.T @ D)  # ascending: the last r are the top right singular vectors
        V_IR = V_IR[:, -r:].flip(-1)
        return (D @ V_IR).float().contiguous(), V_IR.T.float().contiguous()
    evals, U_OR = torch.linalg.eigh(D @ D.T)
    U_OR, S_R = U_OR[:, -r:].flip(-1), evals[-r:].flip(-1).clamp_min(0).sqrt()
    # down = S^-1 U^T D = V^T; a zero singular value's row is zero (its column of up is too)
    down_RI = (U_OR.T @ D) / torch.where(S_R > 0, S_R, torch.ones_like(S_R))[:, None]
    return (U_OR * S_R).float().contiguous(), down_RI.float().contiguous()


def compress(tuned: Mapping[str, Tensor], base: Mapping[str, Tensor], rank: int,
             dtype: torch.dtype = torch.bfloat16) -> tuple[dict[str, Tensor], LowRankReport]:
    """The low-rank entries of a subject file, and what they cost."""
    out: dict[str, Tensor] = {}
    err2 = tot2 = 0.0
    bytes_full = 0
    for name, w in tuned.items():
        bytes_full += w.numel() * w.element_size()
        delta = w.float() - base[name].to(w.device).float()  # on the tuned tensor's device (a GPU's eigh)
        tot2 += float(delta.square().sum())
        if delta.ndim == 2 and rank < min(delta.shape):
            up, down = lowrank_factors(delta, rank)
            out[f"{name}.lora_up"], out[f"{name}.lora_down"] = up.to("cpu", dtype), down.to("cpu", dtype)
            err2 += float((delta - up.to(dtype).float() @ down.to(dtype).float()).square().sum())
        else:
            out[f"{name}.delta"] = delta.to("cpu", dtype)
            err2 += float((delta - delta.to(dtype).float()).square().sum())
    nbytes = sum(t.numel() * t.element_size() for t in out.values())
    rel = (err2 / tot2) ** 0.5 if tot2 > 0 else 0.0
    return out, LowRankReport(rank, bytes_full, nbytes, rel)
