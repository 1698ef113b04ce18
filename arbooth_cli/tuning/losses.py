"""The losses of ARBooth as pure functions over tensors.

Shapes: ``logits_BLV`` with V = 2d (read as (B, L, d, 2), class 1 = bit 1), ``bits_BLd`` in {0, 1},
``w_K`` one weight per scale, ``w_L`` one weight per token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import SCALE_SCHEDULES

Scale = tuple[int, int, int]
#: one of :data:`arbooth_cli.config.SCALE_SCHEDULES`
ScheduleName = Literal["official-step", "uniform", "linear", "exp", "infinity"]


def scale_weights(
    scales: Sequence[Scale],
    schedule: ScheduleName | Sequence[float] = "official-step",
    *,
    split: int = 8,
    low: float = 0.5,
    end: float = 0.1,
    rate: float = 0.8,
) -> Tensor:
    """One weight per scale, coarse to fine.

    * ``official-step``: 1 for the first ``split`` scales, ``low`` after (ARBooth's released code:
      8 and 0.5, i.e. 1x1 ... 20x20 at full weight at 1024x1024);
    * ``uniform``: all 1 (plain token-mean cross-entropy);
    * ``linear``: from 1 at the first scale down to ``end`` at the last;
    * ``exp``: ``rate ** k`` for scale k;
    * ``infinity``: Infinity's pre-training reweighting, per token ∝ 1/side of its scale, so each
      scale's total weight grows like the square root of its area;
    * a sequence: explicit weights, one per scale.
    """
    K = len(scales)
    if not isinstance(schedule, str):
        w = [float(x) for x in schedule]
        if len(w) != K:
            raise ValueError(f"{len(w)} scale weights for {K} scales")
    elif schedule == "official-step":
        w = [1.0 if k < split else low for k in range(K)]
    elif schedule == "uniform":
        w = [1.0] * K
    elif schedule == "linear":
        w = [1.0 + (end - 1.0) * k / max(K - 1, 1) for k in range(K)]
    elif schedule == "exp":
        w = [rate**k for k in range(K)]
    elif schedule == "infinity":
        _, hK, wK = scales[-1]
        w = [((hK * wK) / (h * ww)) ** 0.5 for _, h, ww in scales]
    else:
        raise ValueError(f"unknown scale-weight schedule {schedule!r}; choose from {', '.join(SCALE_SCHEDULES)}")
    if any(x < 0 for x in w):
        raise ValueError("scale weights must be >= 0")
    return torch.tensor(w, dtype=torch.float32)


def token_weights(scales: Sequence[Scale], w_K: Tensor) -> Tensor:
    """Spread per-scale weights over the tokens of each scale: ``w_L``."""
    counts = torch.tensor([t * h * w for t, h, w in scales], device=w_K.device)
    return torch.repeat_interleave(w_K, counts)


def bitwise_ce(logits_BLV: Tensor, bits_BLd: Tensor) -> Tensor:
    """Per-token cross-entropy, the mean over the token's d two-way bit choices: ``ce_BL``."""
    B, L, V = logits_BLV.shape
    logits = logits_BLV.float().view(B, L, V // 2, 2)
    ce_BLd = F.cross_entropy(logits.permute(0, 3, 1, 2), bits_BLd.long(), reduction="none")
    return ce_BLd.mean(-1)


def scale_weighted_ce(logits_BLV: Tensor, bits_BLd: Tensor, w_L: Tensor) -> Tensor:
    """ARBooth's subject loss: ``sum_l w_l * ce_l / L``, averaged over the batch.

    As in the released code the weights are not renormalised, so uniform weights of 1 give the plain
    mean and lowering the fine scales' weights lowers the loss's scale too.
    """
    ce_BL = bitwise_ce(logits_BLV, bits_BLd)
    if w_L.shape != ce_BL.shape[1:]:
        raise ValueError(f"{w_L.shape[0]} token weights for {ce_BL.shape[1]} tokens")
    return (ce_BL * w_L.to(ce_BL)).sum(-1).div(ce_BL.shape[1]).mean()


def prior_distill(
    student_BLV: Tensor,
    teacher_BLV: Tensor,
    *,
    kind: Literal["soft", "hard"] = "soft",
    temperature: float = 1.0,
    per_bit: bool = True,
) -> Tensor:
    """Prior distillation: keep the tuned model's class-prompt predictions near the frozen model's.

    ``soft``: forward KL(teacher || student), averaged over tokens (and bits). ``per_bit=True`` takes
    each bit's own two-way distribution (the model's actual output distribution); ``per_bit=False``
    reproduces the released code's softmax over all 2d logits of a token at once. ``hard``: bitwise
    cross-entropy of the student against the teacher's most likely bits.
    """
    if student_BLV.shape != teacher_BLV.shape:
        raise ValueError(f"student {tuple(student_BLV.shape)} and teacher {tuple(teacher_BLV.shape)} differ")
    B, L, V = student_BLV.shape
    s, t = student_BLV.float(), teacher_BLV.float().detach()
    if kind == "hard":
        bits = t.view(B, L, V // 2, 2).argmax(-1)
        return bitwise_ce(s, bits).mean()
    if kind != "soft":
        raise ValueError(f"unknown distillation kind {kind!r}")
    if per_bit:
        s, t = s.view(B, L, V // 2, 2), t.view(B, L, V // 2, 2)
    log_ps = F.log_softmax(s / temperature, dim=-1)
    log_pt = F.log_softmax(t / temperature, dim=-1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1)  # per bit (or per token)
    return kl.mean()


def arbooth_loss(
    logits_BLV: Tensor,
    bits_BLd: Tensor,
    w_L: Tensor,
    teacher_BLV: Tensor | None = None,
    *,
    prior_weight: float = 0.5,
    prior_mode: Literal["soft", "hard"] = "soft",
    per_bit: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """The whole objective of one batch: ``(loss, ce, prior)``.

    The first ``bits_BLd.shape[0]`` rows of ``logits_BLV`` are the subject photos (scale-weighted
    CE against their bits); the rest, if ``teacher_BLV`` is given, are the prior samples (their
    distillation to the teacher's logits, weighted by ``prior_weight``). Without a teacher the
    prior term is 0.
    """
    Bs = bits_BLd.shape[0]
    ce = scale_weighted_ce(logits_BLV[:Bs], bits_BLd, w_L)
    if teacher_BLV is None:
        return ce, ce, torch.zeros((), device=ce.device)
    prior = prior_distill(logits_BLV[Bs:], teacher_BLV, kind=prior_mode, per_bit=per_bit)
    return ce + prior_weight * prior, ce, prior
