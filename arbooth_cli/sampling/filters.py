"""Pure logit filters for bitwise sampling. Shapes: ``*`` any leading dims, last dim = classes (2 per bit)."""

from __future__ import annotations

import torch
from torch import Tensor


def cfg_mix(logits_cond: Tensor, logits_uncond: Tensor, cfg: Tensor | float, tau: Tensor | float) -> Tensor:
    """Classifier-free guidance on logits, with temperature, as Infinity applies it.

    ``cfg * (cond / tau) + (1 - cfg) * (uncond / tau)``; ``cfg`` and ``tau`` broadcast (e.g. (B, 1, 1)).
    """
    return cfg * (logits_cond / tau) + (1 - cfg) * (logits_uncond / tau)


def top_k_(logits: Tensor, k: int) -> Tensor:
    """Keep the ``k`` largest logits of the last dim (in place); k <= 0 or k >= classes keeps all."""
    if 0 < k < logits.shape[-1]:
        kth = logits.topk(k, dim=-1).values[..., -1:]
        logits.masked_fill_(logits < kth, float("-inf"))
    return logits


def top_p_(logits: Tensor, p: Tensor | float) -> Tensor:
    """Nucleus filter (in place): drop the least likely classes whose total probability is <= 1 - p.

    The most likely class always survives. ``p`` is a float or broadcasts to ``logits[..., :1]``.
    For two classes this drops a bit value whose probability is <= 1 - p (Infinity's rule).
    """
    if isinstance(p, float) and p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1)  # ascending
    cum = sorted_logits.softmax(-1).cumsum(-1)
    remove_sorted = cum <= (1 - p)
    remove_sorted[..., -1] = False
    remove = torch.zeros_like(remove_sorted).scatter_(-1, order, remove_sorted)
    return logits.masked_fill_(remove, float("-inf"))


def bit_probabilities(logits_Bld2: Tensor, *, top_k: int = 0, top_p: Tensor | float = 1.0) -> Tensor:
    """Probabilities (..., 2) of bit 0 and bit 1 after top-k / top-p (class 1 = bit 1)."""
    logits = logits_Bld2.float().clone()
    top_k_(logits, top_k)
    top_p_(logits, top_p)
    return logits.softmax(-1)


def bit_one_probability(logits_Bld2: Tensor, *, top_k: int = 0, top_p: Tensor | float = 1.0) -> Tensor:
    """P(bit = 1) of each bit after top-k / top-p."""
    return bit_probabilities(logits_Bld2, top_k=top_k, top_p=top_p)[..., 1]
