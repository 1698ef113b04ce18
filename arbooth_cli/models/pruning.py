"""Token pruning of the large scales during sampling, with a refill of the pruned tokens (FastVAR).

At a pruned scale, inside a range of middle blocks, each of the three sublayers (self-attention,
text cross-attention, FFN) runs on the ``n`` tokens of the residual stream that stray furthest from
the scale's mean token; the other tokens get, in place of a computed update, the same block and
sublayer's update of a coarser *source* scale resized to this scale (area interpolation). The
residual stream stays full length, so the head sees every token. Pruned tokens are absent from
the self-attention as queries and as keys: a pruned block caches the kept tokens' keys and values
only, so a later scale of that block attends to fewer rows.

What the released FastVAR code does for Infinity, and how this generalises it, is in
docs/fast-sampling-sources.md (section 1) and docs/sampling.md: scores before every sublayer, one
top-k per batch row (a guided pass's two branches keep different tokens), the source is the scale
just before the first pruned one, and blocks ``[round(3 D / 32), D - round(4 D / 32))`` of a depth-D
model prune (blocks 3..27 of the 32 of infinity-2b, the range FastVAR hard-codes).

Notation as in :mod:`.transformer`; ``n``: tokens kept at a scale; ``s``: tokens of the source scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import prune_problems
from ..errors import InvalidInputError

Scale = tuple[int, int, int]


@dataclass(frozen=True)
class PrunePlan:
    """Which scales prune how many tokens, in which blocks, refilled from which scale."""

    #: (scale index, tokens kept per batch row), ascending
    keep: tuple[tuple[int, int], ...]
    #: blocks [start, end) prune; the others run every token
    blocks: tuple[int, int]
    #: the scale whose branch outputs refill the pruned tokens (the one before the first pruned)
    source: int
    #: (h, w) of every scale of the schedule
    hw: tuple[tuple[int, int], ...]

    def kept(self, si: int) -> int | None:
        return dict(self.keep).get(si)

    def prunes(self, si: int, block: int) -> bool:
        return self.in_range(block) and self.kept(si) is not None

    def in_range(self, block: int) -> bool:
        """Whether ``block`` prunes (its scales named in ``keep``); it then also records its
        sublayers' updates at the source scale."""
        return self.blocks[0] <= block < self.blocks[1]

    def kv_start(self, si: int, block: int) -> int:
        """Row of ``block``'s key/value buffers where scale ``si`` writes: a pruned block cached only
        the kept tokens of the pruned scales before ``si``."""
        rows = 0
        for s in range(si):
            n = self.kept(s) if self.in_range(block) else None
            rows += n if n is not None else math.prod(self.hw[s])
        return rows


def default_blocks(depth: int) -> tuple[int, int]:
    """FastVAR's pruned blocks scaled to ``depth``: 3..27 of 32 (the first 3 and last 4 run in full)."""
    return round(3 * depth / 32), depth - round(4 * depth / 32)


def plan_pruning(scales: Sequence[Scale], ratios: Sequence[tuple[int, float]], depth: int,
                 blocks: tuple[int, int] | None = None) -> PrunePlan:
    """A :class:`PrunePlan` for ``ratios``: (scale index, share of that scale's tokens removed)."""
    problems = prune_problems(ratios, len(scales)) or (["--prune needs at least one SCALE:RATIO"] if not ratios else [])
    if problems:
        raise InvalidInputError(problems[0])
    if any(t != 1 for t, _, _ in scales):
        raise InvalidInputError("--prune works on image schedules (one frame a scale)")
    keep = []
    for si, ratio in sorted(ratios):
        L = math.prod(scales[si])
        keep.append((si, L - int(L * ratio)))  # FastVAR's count: int() of the removed share
    blocks = blocks or default_blocks(depth)
    if not 0 <= blocks[0] < blocks[1] <= depth:
        raise InvalidInputError(f"pruned blocks {blocks[0]}..{blocks[1] - 1} are outside the model's {depth} blocks")
    return PrunePlan(tuple(keep), blocks, keep[0][0] - 1, tuple((h, w) for _, h, w in scales))


def token_scores(x_BLC: Tensor) -> Tensor:
    """``score_BL``: each token's squared distance from its row's mean token (float32)."""
    x = x_BLC.float()
    return (x - x.mean(dim=1, keepdim=True)).square().sum(-1)


def top_tokens(x_BLC: Tensor, n: int) -> Tensor:
    """``idx_Bn``: per row, the ``n`` tokens of highest :func:`token_scores`, highest first."""
    return torch.topk(token_scores(x_BLC), n, dim=1, sorted=True).indices


def gather_tokens(x_BLC: Tensor, idx_Bn: Tensor) -> Tensor:
    return torch.gather(x_BLC, 1, idx_Bn[..., None].expand(-1, -1, x_BLC.shape[-1]))


def refill(src_BsC: Tensor, src_hw: tuple[int, int], hw: tuple[int, int], idx_Bn: Tensor, fresh_BnC: Tensor) -> Tensor:
    """(B, h*w, C) float32: the source scale's map area-resized to ``hw``, with the kept tokens'
    fresh values written at ``idx_Bn``."""
    B, _, C = src_BsC.shape
    grid = src_BsC.float().transpose(1, 2).reshape(B, C, *src_hw)
    full = F.interpolate(grid, size=hw, mode="area").reshape(B, C, -1).transpose(1, 2).contiguous()
    return full.scatter_(1, idx_Bn[..., None].expand(-1, -1, C), fresh_BnC.float())


@dataclass
class PruneState:
    """A pass's pruning: the plan and, per block that prunes, its three branch outputs (SA, CA, FFN)
    at the source scale, (3, B, s, C) in the blocks' dtype (written when the source scale runs)."""

    plan: PrunePlan
    branches: list[Tensor | None]

    @staticmethod
    def new(plan: PrunePlan, batch: int, width: int, depth: int, dtype: torch.dtype, device: torch.device) -> PruneState:
        s = math.prod(plan.hw[plan.source])
        return PruneState(plan, [torch.zeros(3, batch, s, width, dtype=dtype, device=device) if plan.in_range(i)
                                 else None for i in range(depth)])

    def rows(self, n: int) -> PruneState:
        return PruneState(self.plan, [None if b is None else b[:, :n] for b in self.branches])


def pruned_block(block, x_BLC: Tensor, a, text_kv: tuple[Tensor, Tensor], text_mask_BT: Tensor, cos_LP: Tensor,
                 sin_LP: Tensor, kv: tuple[Tensor, Tensor, int], ops, *, si: int, state: PruneState,
                 index: int) -> Tensor:
    """Block ``index`` on pruned scale ``si``: each sublayer runs on the top tokens of the residual
    stream and the others are refilled from the block's record of the source scale (written by
    ``InfinityBlock.forward(..., record_3BLC=...)``); ``cos_LP``/``sin_LP``: this scale's RoPE rows."""
    plan = state.plan
    n = plan.kept(si)
    src, src_hw, hw = state.branches[index], plan.hw[plan.source], plan.hw[si]
    assert n is not None and src is not None
    dt, eps = block.compute_dtype, block.eps

    idx = top_tokens(x_BLC, n)
    h = ops.ln_modulate(gather_tokens(x_BLC, idx), a.scale1p, a.shift1, eps, dt)
    d = block.sa(h, cos_LP[idx][:, :, None], sin_LP[idx][:, :, None], None, kv, ops).float() * a.gamma1
    x_BLC = x_BLC + refill(src[0], src_hw, hw, idx, d)

    idx = top_tokens(x_BLC, n)
    h = F.layer_norm(gather_tokens(x_BLC, idx), (x_BLC.shape[-1],), block.ca_norm.weight.float(),
                     block.ca_norm.bias.float(), eps)
    d = block.ca(h.to(dt), text_kv, text_mask_BT, ops).float()
    x_BLC = x_BLC + refill(src[1], src_hw, hw, idx, d)

    idx = top_tokens(x_BLC, n)
    d = block.ffn(ops.ln_modulate(gather_tokens(x_BLC, idx), a.scale2p, a.shift2, eps, dt)).float() * a.gamma2
    return x_BLC + refill(src[2], src_hw, hw, idx, d)
