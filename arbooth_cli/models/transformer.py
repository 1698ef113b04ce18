"""Infinity-compatible next-scale ("visual autoregressive") transformer.

The module tree reproduces the parameter names and shapes of FoundationVision's Infinity 2B/8B
checkpoints exactly (``block_chunks.{c}.module.{j}.sa.mat_qkv.weight``, ``cfg_uncond``, ...), so their
state dicts load strictly. The maths follows the official inference flags (shared AdaLN, QK-norm, 2D
RoPE "normalized by hw", level embedding once before the first block, bitwise head); see
docs/parity.md for the measured agreement with the official code.

Two forward paths:

* :meth:`InfinityTransformer.forward`: teacher forcing over all scales at once with a block-causal
  mask (training); returns ``logits_BLV``.
* :meth:`InfinityTransformer.new_cache` + :meth:`InfinityTransformer.forward_scale`: one scale at a
  time with an explicit :class:`KVCache` (sampling). Nothing is stored on the modules::

      cache = model.new_cache(TextCond.cat([text, model.null_text(text)]), scales)  # CFG batch
      acc, x = vae.new_accumulator(scales, batch=B), None
      while not cache.done:
          logits_BlV = model.forward_scale(cache, x)       # (2B, l, 2d): [cond; uncond]
          bits_Bld = ...                                   # CFG, temperature, top-p, sampling
          x = acc.add(bits_Bld)                            # None after the last scale
          x = None if x is None else x.repeat(2, 1, 1)
      image = vae.decode(acc.summed_Bd1HW)

  :class:`ScaleGraphs` replays that pass as one CUDA graph per scale for a fixed batch size, text
  width and schedule (see :class:`arbooth_cli.sampling.sample.SamplingEngine`), and
  :func:`compiled_block_ops` fuses the element-wise stages between the matmuls.

Notation (shape suffixes of tensor names):

====  ====================================================================================
B     batch (for classifier-free guidance the caller stacks [cond; uncond] into B)
L     tokens of all scales of a schedule, coarse to fine; l: tokens of one scale (h * w)
C     transformer width; D: condition width (== C); H: heads; c: head width (C / H)
T     text tokens (padded); Ct: text feature width (2048 for flan-t5-xl)
d     bits per token as the transformer sees them; V: logits per token (2 * d)
P     RoPE rotation pairs per head (c / 2)
====  ====================================================================================

Precision: residual stream, AdaLN, the condition path and the head always run in float32; the
attention/FFN matmuls run in the dtype of the block weights (float32, bfloat16 or float16). This
mirrors the official bf16 recipe (blocks cast to bf16, everything else fp32), with explicit casts
instead of autocast.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..errors import InvalidInputError
from ..registry import TransformerConfig
from . import pruning
from .offload import HostOffload
from .pruning import PrunePlan, PruneState
from .recompute import KeptAttention
from .schedules import TEMPLATES
from .text_encoder import TextCond

Scale = tuple[int, int, int]  # (t, h, w), t == 1 for images

# exp(scale_mul) of the QK-norm temperature is capped at 100 (checkpoints rely on the cap).
_MAX_LOG_QK_SCALE = math.log(100.0)


# ---------------------------------------------------------------------------------------------
# 2D rotary position embedding, "normalized by hw" (Infinity's mode 2)
# ---------------------------------------------------------------------------------------------


def rope_frame(scales: Sequence[Scale]) -> tuple[int, int]:
    """The RoPE coordinate frame of a schedule: last '1M' scale of the template it comes from.

    Every scale of every size maps into this frame, so a 0.06M schedule uses the same positions
    as the first 7 scales of the 1M one. Raises :class:`InvalidInputError` when the schedule is
    not a prefix of exactly one template frame (then pass ``frame_hw`` explicitly).
    """
    hws = [(h, w) for _, h, w in scales]
    frames = {ladder[-1] for ladder in TEMPLATES.values() if list(ladder[: len(hws)]) == hws}
    if len(frames) != 1:
        what = "matches no" if not frames else f"matches {len(frames)}"
        raise InvalidInputError(
            f"scale schedule {hws} {what} aspect-ratio template; pass frame_hw explicitly"
        )
    return frames.pop()


def _rope_inv_freq(head_dim: int, theta: float) -> Tensor:
    # half the head is for y, half for x; each half rotates head_dim / 4 pairs
    half = head_dim // 2
    return 1.0 / (theta ** (torch.arange(0, half, 2, dtype=torch.int64).float() / half))


def rope_angles(h: int, w: int, frame_hw: tuple[int, int], head_dim: int, theta: float) -> Tensor:
    """Rotation angles (h * w, P) of one scale's tokens (row-major), float32 on the CPU.

    Token (i, j) of an (h, w) map sits at grid cell (round(i * H_f / h), round(j * W_f / w)) of the
    frame (H_f, W_f); pairs [0, P/2) rotate by y * inv_freq, pairs [P/2, P) by x * inv_freq.
    """
    frame_h, frame_w = frame_hw
    inv_freq = _rope_inv_freq(head_dim, theta)
    # same float32 arithmetic as the official grid lookup, so positions match exactly
    ys = (torch.arange(h) * (frame_h / h)).round()
    xs = (torch.arange(w) * (frame_w / w)).round()
    ang_y = (ys[:, None] * inv_freq[None, :])[:, None, :].expand(h, w, -1)
    ang_x = (xs[:, None] * inv_freq[None, :])[None, :, :].expand(h, w, -1)
    return torch.cat([ang_y, ang_x], dim=-1).reshape(h * w, -1)


def rope_tables(
    scales: Sequence[Scale], frame_hw: tuple[int, int], head_dim: int, theta: float, device: torch.device
) -> tuple[Tensor, Tensor]:
    """(cos_LP, sin_LP) for the tokens of ``scales`` concatenated in order (float32)."""
    ang = torch.cat([rope_angles(h, w, frame_hw, head_dim, theta) for t, h, w in scales for _ in range(t)])
    ang = ang.to(device)
    return ang.cos(), ang.sin()


def apply_rope(x: Tensor, cos_P: Tensor, sin_P: Tensor) -> Tensor:
    """Rotate interleaved pairs (x[2p], x[2p+1]) by the angle of pair p; float32 result.

    ``cos_P``/``sin_P`` broadcast against ``x``'s pairs, e.g. (L, 1, P) tables for (B, L, H, c).
    """
    x = x.float().unflatten(-1, (-1, 2))
    x0, x1 = x[..., 0], x[..., 1]
    out = torch.stack([cos_P * x0 - sin_P * x1, sin_P * x0 + cos_P * x1], dim=-1)
    return out.flatten(-2)


def block_causal_mask(scales: Sequence[Scale], device: torch.device) -> Tensor:
    """(L, L) bool, True where query token may attend: keys of its own and all coarser scales."""
    level_L = scale_index_per_token(scales, device)
    return level_L[None, :] <= level_L[:, None]


def scale_index_per_token(scales: Sequence[Scale], device: torch.device) -> Tensor:
    sizes = [t * h * w for t, h, w in scales]
    return torch.repeat_interleave(torch.arange(len(scales), device=device), torch.tensor(sizes, device=device))


# ---------------------------------------------------------------------------------------------
# element-wise stages of a block
# ---------------------------------------------------------------------------------------------
# Everything between two matmuls / attentions of a block, as pure functions. Eagerly they run the
# same operations in the same order as a plain transcription of the block (the float32 results on
# the CPU are unchanged); torch.compile can fuse each into one or two kernels (see BlockOps).


def ln_modulate(x_BLC: Tensor, scale1p_B1C: Tensor, shift_B1C: Tensor, eps: float, dtype: torch.dtype) -> Tensor:
    """LayerNorm without affine in float32, AdaLN ``* (1 + scale) + shift``, cast to ``dtype``."""
    h = F.layer_norm(x_BLC.float(), (x_BLC.shape[-1],), None, None, eps)
    return h.mul(scale1p_B1C).add(shift_B1C).to(dtype)


def qk_norm_rope(
    qkv_BLV: Tensor, bias_V: Tensor, scale_mul_1H11: Tensor, cos_L1P: Tensor, sin_L1P: Tensor, heads: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Raw qkv (B, L, 3C) + bias -> q, k, v as (B, L, H, c) in qkv's dtype.

    QK-norm and RoPE in float32; RoPE is applied before the keys are cached, as the checkpoints
    expect. ``cos_L1P``/``sin_L1P``: this call's rows of the RoPE tables, (L, 1, P).
    """
    q_BLHc, k_BLHc, v_BLHc = (qkv_BLV + bias_V).unflatten(-1, (3, heads, -1)).unbind(2)
    gain_H1 = scale_mul_1H11.float().clamp_max(_MAX_LOG_QK_SCALE).exp().view(heads, 1)
    q_BLHc = F.normalize(q_BLHc.float(), dim=-1, eps=1e-12) * gain_H1
    k_BLHc = F.normalize(k_BLHc.float(), dim=-1, eps=1e-12)
    dt = qkv_BLV.dtype
    return apply_rope(q_BLHc, cos_L1P, sin_L1P).to(dt), apply_rope(k_BLHc, cos_L1P, sin_L1P).to(dt), v_BLHc


def residual_ln(
    x_BLC: Tensor, h_BLC: Tensor, gamma_B1C: Tensor, keep_B11: Tensor | None,
    weight_C: Tensor, bias_C: Tensor, eps: float, dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """``x + gamma * h`` (float32), then the affine LayerNorm of the sum cast to ``dtype``."""
    h = h_BLC.float() * gamma_B1C
    x_BLC = x_BLC + (h if keep_B11 is None else h * keep_B11)
    return x_BLC, F.layer_norm(x_BLC, (x_BLC.shape[-1],), weight_C.float(), bias_C.float(), eps).to(dtype)


def residual_ln_modulate(
    x_BLC: Tensor, h_BLC: Tensor, scale1p_B1C: Tensor, shift_B1C: Tensor, eps: float, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """``x + h`` (float32), then :func:`ln_modulate` of the sum."""
    x_BLC = x_BLC + h_BLC.float()
    return x_BLC, ln_modulate(x_BLC, scale1p_B1C, shift_B1C, eps, dtype)


def head_norm(x_BLC: Tensor, scale1p_B1C: Tensor, shift_B1C: Tensor, eps: float) -> Tensor:
    """The head's AdaLN (float32 out); apart from :func:`ln_modulate` so that compiling keeps the two apart."""
    return ln_modulate(x_BLC, scale1p_B1C, shift_B1C, eps, torch.float32)


def residual(x_BLC: Tensor, h_BLC: Tensor, gamma_B1C: Tensor, keep_B11: Tensor | None) -> Tensor:
    h = h_BLC.float() * gamma_B1C
    return x_BLC + (h if keep_B11 is None else h * keep_B11)


class ScalePrefixes(NamedTuple):
    """Block-causal attention in a few unmasked calls: the queries of rows ``[start, end)`` see the
    keys of rows ``[0, end)``, one call per large scale, which the fused flash kernels run (they
    take no mask) while skipping the masked ~40% of the score matrix at 1024x1024. The leading
    small scales (``head`` tokens) share one masked call. Same result as :func:`block_causal_mask`
    up to rounding."""

    head: int
    head_mask: Tensor | None
    bounds: tuple[tuple[int, int], ...]

    @staticmethod
    def of(scales: Sequence[Scale], device: torch.device, head_tokens: int = 2600) -> ScalePrefixes:
        sizes = [t * h * w for t, h, w in scales]
        ends = list(itertools.accumulate(sizes))
        k = 0
        while k < len(ends) and ends[k] <= head_tokens:
            k += 1
        head = ends[k - 1] if k else 0
        mask = block_causal_mask(scales[:k], device) if k > 1 else None
        return ScalePrefixes(head, mask, tuple((ends[i] - sizes[i], ends[i]) for i in range(k, len(ends))))


class _Prefixes(torch.autograd.Function):
    """The prefixes ``x[:, :, :e]`` of (B, H, N, c) ``x`` for each ``e`` of ``ends`` (ascending), as
    views; the backward adds their gradients into one tensor instead of one zero-filled whole-size
    tensor per prefix for autograd to add up."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, ends: list[int]) -> tuple[Tensor, ...]:
        ctx.ends, ctx.like = ends, torch.empty_like(x, device="meta")
        return tuple(x[:, :, :e] for e in ends)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor, None]:
        # in x's dimension order: after the transpose's backward the gradient is a contiguous
        # (B, N, H, c) tensor, which the backward of the stage that made the keys reads without a
        # transposing copy
        g = torch.empty_like(ctx.like, device=grads[-1].device)
        if ctx.ends[-1] < g.shape[2]:  # keys longer than the longest prefix (not in self-attention)
            g[:, :, ctx.ends[-1]:].zero_()
        g[:, :, : ctx.ends[-1]].copy_(grads[-1])
        for e, ge in zip(ctx.ends, grads[:-1]):
            g[:, :, :e] += ge
        return g, None


def attend(q_BLHc: Tensor, k_BNHc: Tensor, v_BNHc: Tensor, mask: Tensor | ScalePrefixes | None,
           scale: float, sdpa: Callable[..., Tensor] = F.scaled_dot_product_attention) -> Tensor:
    """SDPA on (batch, tokens, heads, c) tensors (strided views are fine); returns (B, L, H * c).

    The fused kernels take this layout as it is: a KV cache's buffers are read in place and the
    output needs no transpose copy. ``sdpa``: what runs each call (a recomputed block's
    :meth:`.recompute.KeptAttention.sdpa`).
    """
    B, L, H, c = q_BLHc.shape
    q, k, v = q_BLHc.transpose(1, 2), k_BNHc.transpose(1, 2), v_BNHc.transpose(1, 2)
    if isinstance(mask, ScalePrefixes):
        # (query rows start, end, mask): the masked head of small scales, then one call a scale
        calls = ([(0, mask.head, mask.head_mask)] if mask.head else []) + [(s, e, None) for s, e in mask.bounds]
        ends = [e for _, e, _ in calls]
        # the queries' rows split (their gradient comes back as one concatenation) and the keys'
        # and values' prefixes through _Prefixes: plain slices would each give back a zero-filled
        # gradient of the whole tensor for autograd to add up (several GB of memory traffic a
        # block at 1024x1024)
        qs = q.split([e - s for s, e, _ in calls], dim=2)
        ks, vs = (_Prefixes.apply(x, ends) if torch.is_grad_enabled() and x.requires_grad else [x[:, :, :e] for e in ends]
                  for x in (k, v))
        out = torch.cat([sdpa(qi, ki, vi, attn_mask=m, scale=scale)
                         for qi, ki, vi, (_, _, m) in zip(qs, ks, vs, calls)], dim=2)
    else:
        out = sdpa(q, k, v, attn_mask=mask, scale=scale)
    return out.transpose(1, 2).reshape(B, L, H * c)


class BlockOps(NamedTuple):
    """The element-wise stages and the attention call a block runs (eager, compiled, or a kernel choice)."""

    ln_modulate: Callable[..., Tensor] = ln_modulate
    qk_norm_rope: Callable[..., tuple[Tensor, Tensor, Tensor]] = qk_norm_rope
    residual_ln: Callable[..., tuple[Tensor, Tensor]] = residual_ln
    residual_ln_modulate: Callable[..., tuple[Tensor, Tensor]] = residual_ln_modulate
    residual: Callable[..., Tensor] = residual
    head_norm: Callable[..., Tensor] = head_norm
    attend: Callable[..., Tensor] = attend
    #: the self-attention's call, when it differs from ``attend`` (a recomputed block keeping its outputs)
    self_attend: Callable[..., Tensor] | None = None


EAGER_OPS = BlockOps()


def compiled_block_ops(attention: str = "auto") -> BlockOps:
    """The stages through ``torch.compile`` (CUDA; each becomes one or two fused kernels).

    Compiled on first use in a process: for the first shape, then once more with the token and
    batch counts that changed made dynamic (the width stays static, so LayerNorms are one-pass
    reductions). Float32 results differ from eager by rounding only (fused reductions, FMA).
    ``attention`` as in :func:`attention_op`.
    """
    def c(fn: Callable) -> Callable:
        return torch.compile(fn, fullgraph=True)

    return BlockOps(c(ln_modulate), c(qk_norm_rope), c(residual_ln), c(residual_ln_modulate), c(residual),
                    c(head_norm), attention_op(attention))


def attention_op(kind: str = "auto") -> Callable[..., Tensor]:
    """:func:`attend` with an SDPA backend preference: "auto" (PyTorch's choice), "cudnn" or "flash".

    A preferred backend that cannot run a call falls back to PyTorch's order; on the CPU the
    preference is ignored.
    """
    if kind == "auto":
        return attend
    from torch.nn.attention import SDPBackend, sdpa_kernel

    first = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}[kind]
    order = [first] + [b for b in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                                   SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH) if b != first]

    def attend_preferring(q_BLHc: Tensor, k_BNHc: Tensor, v_BNHc: Tensor, mask: Tensor | None, scale: float,
                          **kw: Any) -> Tensor:
        ctx = sdpa_kernel(order, set_priority=True) if q_BLHc.is_cuda else contextlib.nullcontext()
        with ctx:
            return attend(q_BLHc, k_BNHc, v_BNHc, mask, scale, **kw)

    return attend_preferring


# ---------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------


class TextRMSNorm(nn.Module):
    """RMSNorm over the text features with a learned weight, computed in float32."""

    def __init__(self, width: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: Tensor) -> Tensor:
        x = x.float()
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()


class ScaleSelfAttention(nn.Module):
    """Self-attention over scale tokens: QK-norm ("cosine" attention, softmax scale 1) + 2D RoPE.

    The K bias is a fixed zero buffer (``zero_k_bias``): checkpoints store it, it never trains.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.mat_qkv = nn.Linear(width, 3 * width, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.register_buffer("zero_k_bias", torch.zeros(width))
        # per-head log temperature of the normalised q; init ln 4
        self.scale_mul_1H11 = nn.Parameter(torch.full((1, heads, 1, 1), math.log(4.0)))
        self.proj = nn.Linear(width, width)

    def forward(
        self,
        x_BLC: Tensor,
        cos_L1P: Tensor,
        sin_L1P: Tensor,
        mask_LL: Tensor | ScalePrefixes | None,
        kv: tuple[Tensor, Tensor, int] | None = None,
        ops: BlockOps = EAGER_OPS,
    ) -> Tensor:
        """Self-attention of ``x_BLC``; RoPE tables as (L, 1, P) rows of this call's tokens.

        ``kv``: ``(k_BNHc, v_BNHc, start)`` key/value buffers of a KV cache: this call's keys and
        values (RoPE applied) are written at rows [start, start + L) and the queries attend to
        rows [0, start + L). None: attend to this call's own tokens only.
        """
        # the module is called (not its .weight) so adapters wrapped around it take effect
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        q_BLHc, k_BLHc, v_BLHc = ops.qk_norm_rope(self.mat_qkv(x_BLC), bias, self.scale_mul_1H11, cos_L1P, sin_L1P,
                                                  self.heads)
        if kv is not None:
            k_BNHc, v_BNHc, start = kv
            end = start + x_BLC.shape[1]
            k_BNHc[:, start:end].copy_(k_BLHc)
            v_BNHc[:, start:end].copy_(v_BLHc)
            k_BLHc, v_BLHc = k_BNHc[:, :end], v_BNHc[:, :end]
        # QK-norm ("cosine" attention): softmax scale 1
        return self.proj((ops.self_attend or ops.attend)(q_BLHc, k_BLHc, v_BLHc, mask_LL, 1.0))


class TextCrossAttention(nn.Module):
    """Cross-attention from scale tokens to padded text (key padding mask; no QK-norm)."""

    def __init__(self, width: int, text_width: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.mat_q = nn.Linear(width, width)
        self.mat_kv = nn.Linear(text_width, 2 * width, bias=False)
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.register_buffer("zero_k_bias", torch.zeros(width))
        self.proj = nn.Linear(width, width)

    def text_kv(self, text_BTD: Tensor) -> tuple[Tensor, Tensor]:
        """Per-head keys and values (B, T, H, c) of the text; cacheable across scales."""
        bias = torch.cat((self.zero_k_bias, self.v_bias))
        kv = (self.mat_kv(text_BTD) + bias).unflatten(-1, (2, self.heads, self.head_dim))
        k_BTHc, v_BTHc = kv.unbind(2)
        return k_BTHc, v_BTHc

    def forward(
        self, x_BLC: Tensor, kv: tuple[Tensor, Tensor], text_mask_BT: Tensor, ops: BlockOps = EAGER_OPS
    ) -> Tensor:
        B, L, C = x_BLC.shape
        q_BLHc = self.mat_q(x_BLC).view(B, L, self.heads, self.head_dim)
        out = ops.attend(q_BLHc, kv[0], kv[1], text_mask_BT[:, None, None, :], self.head_dim**-0.5)
        return self.proj(out)


class TextAttentionPool(nn.Module):
    """One learned query per head attends over the text: the pooled condition ``cond_BD``."""

    def __init__(self, width: int, text_width: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.mat_q = nn.Parameter(torch.zeros(1, heads, self.head_dim))
        self.mat_kv = nn.Linear(text_width, 2 * width, bias=False)
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.register_buffer("zero_k_bias", torch.zeros(width))
        self.proj = nn.Linear(width, width)

    def forward(self, text_BTCt: Tensor, text_mask_BT: Tensor) -> Tensor:
        B, T, _ = text_BTCt.shape
        bias = torch.cat((self.zero_k_bias, self.v_bias))
        kv = (self.mat_kv(text_BTCt) + bias).view(B, T, 2, self.heads, self.head_dim)
        k_BHTc, v_BHTc = kv.permute(2, 0, 3, 1, 4).unbind(0)
        q_BH1c = self.mat_q.to(k_BHTc.dtype).unsqueeze(2).expand(B, -1, -1, -1)
        out = F.scaled_dot_product_attention(
            q_BH1c, k_BHTc, v_BHTc, attn_mask=text_mask_BT[:, None, None, :], scale=self.head_dim**-0.5
        )
        return self.proj(out.transpose(1, 2).reshape(B, -1))


class TextAttentivePool(nn.Module):
    """Wrapper that only exists to give the checkpoint names ``text_proj_for_sos.ca.*``."""

    def __init__(self, width: int, text_width: int, heads: int) -> None:
        super().__init__()
        self.ca = TextAttentionPool(width, text_width, heads)

    def forward(self, text_BTCt: Tensor, text_mask_BT: Tensor) -> Tensor:
        return self.ca(text_BTCt, text_mask_BT)


class FeedForward(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class BlockAda(NamedTuple):
    """One block's AdaLN terms, each (B, 1, C) float32; the scales already have 1 added."""

    gamma1: Tensor
    gamma2: Tensor
    scale1p: Tensor
    scale2p: Tensor
    shift1: Tensor
    shift2: Tensor


class InfinityBlock(nn.Module):
    """Pre-norm block: AdaLN self-attention, plain-LN cross-attention to text, AdaLN FFN.

    AdaLN comes from the shared projection of the pooled text plus this block's ``ada_gss``
    offset, in the order gamma1, gamma2, scale1, scale2, shift1, shift2.
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        C = cfg.embed_dim
        self.eps = cfg.norm_eps
        self.ada_gss = nn.Parameter(torch.zeros(1, 1, 6, C))
        self.sa = ScaleSelfAttention(C, cfg.num_heads)
        self.ca = TextCrossAttention(C, C, cfg.num_heads)
        self.ca_norm = nn.LayerNorm(C, eps=cfg.norm_eps)
        self.ffn = FeedForward(C, cfg.ffn_hidden)

    @property
    def compute_dtype(self) -> torch.dtype:
        # read from a bare parameter: adapters may wrap any nn.Linear of the block
        return self.sa.q_bias.dtype

    def modulation(self, ada_B16C: Tensor) -> BlockAda:
        """This block's AdaLN terms from the shared projection (constant over the scales of a pass)."""
        gamma1, gamma2, scale1, scale2, shift1, shift2 = (self.ada_gss.float() + ada_B16C).unbind(2)
        return BlockAda(gamma1, gamma2, scale1 + 1, scale2 + 1, shift1, shift2)

    def forward(
        self,
        x_BLC: Tensor,
        ada: Tensor | BlockAda,
        text_kv: tuple[Tensor, Tensor],
        text_mask_BT: Tensor,
        cos_L1P: Tensor,
        sin_L1P: Tensor,
        mask_LL: Tensor | ScalePrefixes | None,
        kv: tuple[Tensor, Tensor, int] | None = None,
        keep_B11: tuple[Tensor, Tensor] | None = None,
        ops: BlockOps = EAGER_OPS,
        record_3BLC: Tensor | None = None,
    ) -> Tensor:
        """``x_BLC`` is the float32 residual stream; ``ada`` the shared ``ada_B16C`` or this block's
        :meth:`modulation` of it; ``kv`` as in :meth:`ScaleSelfAttention.forward`; ``keep_B11`` are
        drop-path multipliers; ``record_3BLC`` receives what the three sublayers add to the
        residual stream (the refill source of token pruning, :mod:`.pruning`)."""
        dt = self.compute_dtype
        a = self.modulation(ada) if isinstance(ada, Tensor) else ada
        keep1, keep2 = (None, None) if keep_B11 is None else keep_B11

        h = ops.ln_modulate(x_BLC, a.scale1p, a.shift1, self.eps, dt)
        h = self.sa(h, cos_L1P, sin_L1P, mask_LL, kv, ops)
        if record_3BLC is not None:
            record_3BLC[0].copy_(h.float() * a.gamma1)
        # LayerNorm in float32 (with its affine weights) before the text attention, as CUDA
        # autocast does it in the official bf16 run
        x_BLC, h = ops.residual_ln(x_BLC, h, a.gamma1, keep1, self.ca_norm.weight, self.ca_norm.bias, self.eps, dt)
        h = self.ca(h, text_kv, text_mask_BT, ops)
        if record_3BLC is not None:
            record_3BLC[1].copy_(h)
        x_BLC, h = ops.residual_ln_modulate(x_BLC, h, a.scale2p, a.shift2, self.eps, dt)
        h = self.ffn(h)
        if record_3BLC is not None:
            record_3BLC[2].copy_(h.float() * a.gamma2)
        return ops.residual(x_BLC, h, a.gamma2, keep2)


class BlockChunk(nn.Module):
    """A group of consecutive blocks; it only shapes the names ``block_chunks.{c}.module.{j}``."""

    def __init__(self, blocks: list[InfinityBlock]) -> None:
        super().__init__()
        self.module = nn.ModuleList(blocks)


class AdaLNHead(nn.Module):
    """LayerNorm without affine, modulated by (scale, shift) = Linear(SiLU(cond)); float32."""

    def __init__(self, width: int, cond_width: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(cond_width, 2 * width))

    def modulation(self, cond_BD: Tensor) -> tuple[Tensor, Tensor]:
        """(1 + scale, shift), each (B, 1, C) float32."""
        scale_B1C, shift_B1C = self.ada_lin(cond_BD.float()).unflatten(-1, (1, 2, -1)).unbind(2)
        return scale_B1C + 1, shift_B1C

    def forward(self, x_BLC: Tensor, cond_BD: Tensor) -> Tensor:
        return head_norm(x_BLC, *self.modulation(cond_BD), self.eps)


# ---------------------------------------------------------------------------------------------
# conditioning and KV cache
# ---------------------------------------------------------------------------------------------


@dataclass
class Conditioning:
    """What every block needs from the text, computed once per prompt batch."""

    cond_BD: Tensor  # pooled text, float32; also the SOS input and the head's AdaLN input
    ada_B16C: Tensor  # shared AdaLN (gamma/scale/shift x 2), float32
    text_BTD: Tensor  # projected text for cross-attention, compute dtype
    text_mask_BT: Tensor  # True for real text tokens

    @property
    def batch(self) -> int:
        return self.cond_BD.shape[0]


@dataclass
class KVCache:
    """State of one incremental (scale-by-scale) pass; create with :meth:`InfinityTransformer.new_cache`.

    Holds, per block, key/value buffers (B, L, H, c) for the whole schedule, allocated once: scale
    s writes its keys/values (RoPE applied) at rows [start_s, start_s + l_s) and attends to rows
    [0, start_s + l_s), so no scale copies the cache. Also holds what stays constant over the
    scales, derived from ``cond``: per-block text keys/values and AdaLN terms, the head's AdaLN.
    """

    scales: tuple[Scale, ...]
    frame_hw: tuple[int, int]
    cond: Conditioning
    #: RoPE tables of the whole schedule (L, P); scale s uses the rows [offset_s, offset_s + l_s)
    cos_LP: Tensor
    sin_LP: Tensor
    self_kv: list[tuple[Tensor, Tensor]]
    text_kv: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    block_ada: list[BlockAda] = field(default_factory=list)
    head_ada: tuple[Tensor, Tensor] | None = None
    ops: BlockOps = EAGER_OPS
    next_scale: int = 0
    #: token offset of ``next_scale`` in the concatenated schedule (its RoPE rows)
    offset: int = 0
    #: rows of the key/value buffers written so far
    kv_len: int = 0
    #: token pruning of the large scales (FastVAR; None: every token)
    prune: PruneState | None = None

    @property
    def done(self) -> bool:
        return self.next_scale >= len(self.scales)

    @property
    def cached_tokens(self) -> int:
        return self.kv_len

    def rewind(self) -> None:
        """Back to scale 0 (the buffers are overwritten as the scales run again)."""
        self.next_scale = self.offset = self.kv_len = 0

    def rows(self, n: int) -> KVCache:
        """The first ``n`` batch rows of this pass: a cache of views (no copy) that goes on from the
        same scale. Guided sampling keeps the conditional rows first, so ``rows(B)`` drops the
        unconditional branch for the scales left (rows are independent: the kept ones' keys,
        values and outputs do not change)."""
        c = self.cond
        cond = Conditioning(c.cond_BD[:n], c.ada_B16C[:n], c.text_BTD[:n], c.text_mask_BT[:n])
        return replace(self, cond=cond, self_kv=[(k[:n], v[:n]) for k, v in self.self_kv],
                       text_kv=[(k[:n], v[:n]) for k, v in self.text_kv],
                       block_ada=[BlockAda(*(t[:n] for t in a)) for a in self.block_ada],
                       head_ada=None if self.head_ada is None else (self.head_ada[0][:n], self.head_ada[1][:n]),
                       prune=None if self.prune is None else self.prune.rows(n))


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------


class InfinityTransformer(nn.Module):
    """Infinity's text-conditioned bitwise next-scale transformer (state-dict compatible)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        problems = cfg.problems()
        if problems:
            raise InvalidInputError("invalid transformer config: " + "; ".join(problems))
        self.cfg = cfg
        C, Ct = cfg.embed_dim, cfg.text_channels
        # learned null text for classifier-free guidance; a prompt of n tokens uses the first n rows
        self.cfg_uncond = nn.Parameter(torch.zeros(cfg.text_maxlen, Ct))
        self.pos_start = nn.Parameter(torch.zeros(1, 1, C))
        self.text_norm = TextRMSNorm(Ct, cfg.norm_eps)
        self.text_proj_for_sos = TextAttentivePool(C, Ct, cfg.pool_heads)
        self.text_proj_for_ca = nn.Sequential(nn.Linear(Ct, C), nn.GELU(approximate="tanh"), nn.Linear(C, C))
        self.lvl_embed = nn.Embedding(cfg.num_levels, C)
        self.word_embed = nn.Linear(cfg.bits, C)
        self.shared_ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))
        per_chunk = cfg.depth // cfg.block_chunks
        self.block_chunks = nn.ModuleList(
            BlockChunk([InfinityBlock(cfg) for _ in range(per_chunk)]) for _ in range(cfg.block_chunks)
        )
        self.head_nm = AdaLNHead(C, C, cfg.norm_eps)
        self.head = nn.Linear(C, cfg.vocab)

    # ---- helpers -------------------------------------------------------------------------

    @property
    def blocks(self) -> list[InfinityBlock]:
        """All blocks in execution order (block i of the paper = ``blocks[i]``)."""
        return [b for chunk in self.block_chunks for b in chunk.module]

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.blocks[0].compute_dtype

    @property
    def device(self) -> torch.device:
        return self.pos_start.device

    def kv_cache_bytes(self, scales: Sequence[Scale]) -> int:
        """Bytes of the self-attention key/value cache of one sequence over ``scales`` (a guided
        image holds two sequences: conditional and unconditional)."""
        L = sum(t * h * w for t, h, w in scales)
        return self.cfg.depth * 2 * L * self.cfg.embed_dim * torch.finfo(self.compute_dtype).bits // 8

    def null_text(self, text: TextCond) -> TextCond:
        """The unconditional text of the same lengths: prompt i becomes ``cfg_uncond[:len_i]``."""
        T = text.feats_BTC.shape[1]
        if T > self.cfg.text_maxlen:
            raise InvalidInputError(f"text of {T} tokens is longer than the null text ({self.cfg.text_maxlen})")
        rows = self.cfg_uncond[:T].float().unsqueeze(0).expand(text.batch, -1, -1)
        feats = torch.where(text.mask_BT[..., None], rows, torch.zeros_like(rows))
        return TextCond(feats, text.lens_B)

    def drop_text(self, text: TextCond, drop_B: Tensor) -> TextCond:
        """Replace the prompts where ``drop_B`` is True by the null text (training's CFG dropout).

        Gradients reach ``cfg_uncond`` through the replaced rows.
        """
        null = self.null_text(text)
        feats = torch.where(drop_B.to(text.feats_BTC.device)[:, None, None], null.feats_BTC, text.feats_BTC.float())
        return TextCond(feats, text.lens_B)

    def condition(self, text: TextCond) -> Conditioning:
        """Text features -> pooled condition, shared AdaLN and cross-attention text (float32 math)."""
        dev = self.device
        if text.feats_BTC.shape[-1] != self.cfg.text_channels:
            raise InvalidInputError(
                f"text features are {text.feats_BTC.shape[-1]} wide, the model expects {self.cfg.text_channels}"
            )
        feats = self.text_norm(text.feats_BTC.to(dev))
        mask = text.mask_BT.to(dev)
        lens = text.lens_B
        if int(lens.min()) < 1 or int(lens.max()) > text.feats_BTC.shape[1]:
            raise InvalidInputError(
                f"text lengths must be in [1, {text.feats_BTC.shape[1]}] (the padded width), got {lens.tolist()}"
            )
        cond_BD = self.text_proj_for_sos(feats, mask).float()
        ada_B16C = self.shared_ada_lin(cond_BD).unflatten(-1, (6, -1)).unsqueeze(1)
        text_BTD = self.text_proj_for_ca(feats).to(self.compute_dtype)
        return Conditioning(cond_BD, ada_B16C, text_BTD, mask)

    def logits(self, x_BLC: Tensor, cond_BD: Tensor) -> Tensor:
        """Head on the float32 residual stream: (B, L, V) float32 logits, read as (B, L, d, 2)."""
        return self.head(self.head_nm(x_BLC.float(), cond_BD))

    def _sos(self, cond: Conditioning) -> Tensor:
        return cond.cond_BD[:, None, :] + self.pos_start.float()

    def _check_scales(self, scales: Sequence[Scale]) -> tuple[Scale, ...]:
        scales = tuple(tuple(int(v) for v in s) for s in scales)  # type: ignore[misc]
        if not scales:
            raise InvalidInputError("empty scale schedule")
        if len(scales) > self.cfg.num_levels:
            raise InvalidInputError(f"{len(scales)} scales, but the model has {self.cfg.num_levels} level embeddings")
        if scales[0][0] * scales[0][1] * scales[0][2] != 1:
            raise InvalidInputError(f"the first scale must be a single token, got {scales[0]}")
        return scales  # type: ignore[return-value]

    def _drop_path_keep(self, B: int, generator: torch.Generator | None) -> list[tuple[Tensor, Tensor] | None]:
        """Per-block stochastic-depth multipliers (0 or 1/keep per sample), or None when off."""
        depth = self.cfg.depth
        if generator is None or not self.training or self.cfg.drop_path_rate <= 0:
            return [None] * depth
        out: list[tuple[Tensor, Tensor] | None] = []
        for i in range(depth):
            rate = self.cfg.drop_path_rate * i / max(depth - 1, 1)
            if rate <= 0:
                out.append(None)
                continue
            keep = 1.0 - rate
            r = torch.rand(2, B, 1, 1, generator=generator, device=generator.device).to(self.device)
            m = (r < keep).float() / keep
            out.append((m[0], m[1]))
        return out

    # ---- (a) teacher forcing -------------------------------------------------------------

    def forward(
        self,
        text: TextCond | Conditioning,
        tf_input_BLd: Tensor,
        scales: Sequence[Scale],
        *,
        frame_hw: tuple[int, int] | None = None,
        checkpoint_blocks: bool | int = False,
        drop_path_generator: torch.Generator | None = None,
        prefix_attention: bool = False,
        ops: BlockOps = EAGER_OPS,
        offload: HostOffload | None = None,
        kept: KeptAttention | None = None,
    ) -> Tensor:
        """Teacher-forced logits over all scales, ``logits_BLV`` float32.

        ``tf_input_BLd``: (B, L - 1, d) accumulated VAE code features of scales 1..K-1, each
        interpolated to its scale (see :func:`arbooth_cli.models.bsq_vae.teacher_forcing`); scale 0
        is the SOS token made from the pooled text. Token i of scale s sees every token of scales
        <= s. ``drop_path_generator`` turns on stochastic depth (training mode only).
        ``checkpoint_blocks`` recomputes each block's activations in the backward pass and keeps
        only each block's input, in the blocks' dtype (True: every block; a number N: the first N
        blocks, the others keep their activations: the same values, less recomputation);
        ``prefix_attention`` attends scale by scale (:class:`ScalePrefixes`) instead of through an
        (L, L) mask: faster on a GPU, equal up to rounding. ``ops``: the blocks' element-wise
        stages (e.g. :func:`compiled_block_ops`, whose fused kernels also serve the backward pass).
        ``offload``: the recomputed blocks keep their inputs in host memory until the backward pass
        (:mod:`.offload`; the same numbers). ``kept``: the first ``kept.blocks`` recomputed blocks
        keep their self-attention outputs, so their recomputation skips the attention
        (:mod:`.recompute`; the same numbers).
        """
        scales = self._check_scales(scales)
        frame_hw = frame_hw or rope_frame(scales)
        cond = text if isinstance(text, Conditioning) else self.condition(text)
        dev = self.device
        L = sum(t * h * w for t, h, w in scales)
        B = cond.batch
        if tf_input_BLd.shape != (B, L - 1, self.cfg.bits):
            raise InvalidInputError(
                f"teacher-forcing input must be {(B, L - 1, self.cfg.bits)} for this schedule, "
                f"got {tuple(tf_input_BLd.shape)}"
            )
        x_BLC = torch.cat([self._sos(cond), self.word_embed(tf_input_BLd.to(dev).float())], dim=1)
        x_BLC = x_BLC + self.lvl_embed(scale_index_per_token(scales, dev)).float()

        cos_LP, sin_LP = rope_tables(scales, frame_hw, self.cfg.head_dim, self.cfg.rope_theta, dev)
        mask_LL = ScalePrefixes.of(scales, dev) if prefix_attention else block_causal_mask(scales, dev)
        keeps = self._drop_path_keep(B, drop_path_generator)
        recompute = len(self.blocks) if checkpoint_blocks is True else int(checkpoint_blocks)
        if kept is not None:
            kept.start_step()
        for bi, (block, keep) in enumerate(zip(self.blocks, keeps)):
            text_kv = block.ca.text_kv(cond.text_BTD)
            rope = (cos_LP[:, None], sin_LP[:, None])
            args = (x_BLC, cond.ada_B16C, text_kv, cond.text_mask_BT, *rope, mask_LL, None, keep)
            if torch.is_grad_enabled():
                # in training a block's input is stored in the blocks' dtype, what a checkpoint
                # keeps (bf16 halves the largest training buffer; the official bf16 training keeps
                # the whole residual stream in bf16), so recomputing any number of blocks gives the
                # same numbers; the block itself adds in float32
                args = (x_BLC.to(self.compute_dtype), *args[1:])
            if bi < recompute and torch.is_grad_enabled():
                block_ops = ops
                if kept is not None and bi < kept.blocks:
                    block_ops = ops._replace(self_attend=partial(ops.attend, sdpa=kept.sdpa(bi)))
                with offload.hooks() if offload is not None else contextlib.nullcontext():
                    x_BLC = checkpoint(block, *args, ops=block_ops, use_reentrant=False)
                if kept is not None:
                    kept.seal(bi)
            else:
                x_BLC = block(*args, ops=ops)
        return self.logits(x_BLC, cond.cond_BD)

    # ---- (b) one scale at a time with a KV cache -----------------------------------------

    def new_cache(
        self,
        text: TextCond | Conditioning,
        scales: Sequence[Scale],
        *,
        frame_hw: tuple[int, int] | None = None,
        ops: BlockOps = EAGER_OPS,
        prune: PrunePlan | None = None,
    ) -> KVCache:
        """Start an incremental pass over ``scales`` for the given text (batch as in ``text``).

        Allocates the key/value buffers of the whole schedule at once (what the last scale needs
        anyway). ``ops``: the block stages to run (e.g. :func:`compiled_block_ops`). ``prune``: a
        :func:`arbooth_cli.models.pruning.plan_pruning` plan for these scales.
        """
        scales = self._check_scales(scales)
        cond = text if isinstance(text, Conditioning) else self.condition(text)
        frame_hw = frame_hw or rope_frame(scales)
        cos_LP, sin_LP = rope_tables(scales, frame_hw, self.cfg.head_dim, self.cfg.rope_theta, self.device)
        shape = (cond.batch, cos_LP.shape[0], self.cfg.num_heads, self.cfg.head_dim)
        kw = dict(dtype=self.compute_dtype, device=self.device)
        self_kv = [(torch.empty(shape, **kw), torch.empty(shape, **kw)) for _ in range(self.cfg.depth)]
        state = None
        if prune is not None:
            if prune.hw != tuple((h, w) for _, h, w in scales):
                raise InvalidInputError("this pruning plan was made for another schedule")
            state = PruneState.new(prune, cond.batch, self.cfg.embed_dim, self.cfg.depth, self.compute_dtype,
                                   self.device)
        cache = KVCache(scales, frame_hw, cond, cos_LP, sin_LP, self_kv, ops=ops, prune=state)
        self.derive_constants(cache)
        return cache

    def derive_constants(self, cache: KVCache) -> None:
        """(Re)compute what the scales of ``cache`` share from ``cache.cond``: per-block text
        keys/values and AdaLN terms, and the head's AdaLN."""
        cond = cache.cond
        cache.text_kv = [block.ca.text_kv(cond.text_BTD) for block in self.blocks]
        cache.block_ada = [block.modulation(cond.ada_B16C) for block in self.blocks]
        cache.head_ada = self.head_nm.modulation(cond.cond_BD)

    def forward_scale(self, cache: KVCache, x_Bld: Tensor | None = None) -> Tensor:
        """Run the next scale of ``cache``; returns its ``logits_BlV`` (float32) and advances it.

        ``x_Bld``: None for scale 0 (the SOS token); afterwards the (B, h*w, d) accumulated code
        features interpolated to this scale (see :class:`arbooth_cli.models.bsq_vae.CodeAccumulator`).
        """
        if cache.done:
            raise InvalidInputError("the KV cache has already run every scale of its schedule")
        if len(cache.self_kv) != self.cfg.depth:
            raise InvalidInputError("this KV cache belongs to a model of another depth")
        si = cache.next_scale
        self._check_scale_input(cache, si, x_Bld)
        logits = self._run_scale(cache, si, x_Bld, cache.offset, cache.kv_len)
        l = math.prod(cache.scales[si])
        cache.next_scale += 1
        cache.offset += l
        cache.kv_len += l
        return logits

    def _check_scale_input(self, cache: KVCache, si: int, x_Bld: Tensor | None) -> None:
        if si == 0:
            if x_Bld is not None:
                raise InvalidInputError("scale 0 takes no input (it starts from the text)")
            return
        shape = (cache.cond.batch, math.prod(cache.scales[si]), self.cfg.bits)
        if x_Bld is None or x_Bld.shape != shape:
            got = None if x_Bld is None else tuple(x_Bld.shape)
            raise InvalidInputError(f"scale {si} needs an input of shape {shape}, got {got}")

    def _run_scale(self, cache: KVCache, si: int, x_Bld: Tensor | None, rope_offset: int, kv_start: int) -> Tensor:
        """Scale ``si`` of ``cache`` with RoPE rows from ``rope_offset`` and key/value rows from
        ``kv_start``; touches no counters (so CUDA graphs can capture it)."""
        l = math.prod(cache.scales[si])
        cond = cache.cond
        x_BlC = self._sos(cond) if x_Bld is None else self.word_embed(x_Bld.to(self.device).float())
        x_BlC = x_BlC + self.lvl_embed.weight[si].float()
        # this scale's rows of the schedule's RoPE table: positions continue after the cached
        # scales (an offset of 0 here would give every scale the positions of scale 0's rows)
        cos_lP = cache.cos_LP[rope_offset : rope_offset + l]
        sin_lP = cache.sin_LP[rope_offset : rope_offset + l]
        p = cache.prune
        for i, block in enumerate(self.blocks):
            if p is None:
                kv = (*cache.self_kv[i], kv_start)
            else:  # a pruned block cached fewer rows of the pruned scales
                kv = (*cache.self_kv[i], p.plan.kv_start(si, i))
                if p.plan.prunes(si, i):
                    x_BlC = pruning.pruned_block(block, x_BlC, cache.block_ada[i], cache.text_kv[i],
                                                 cond.text_mask_BT, cos_lP, sin_lP, kv, cache.ops, si=si, state=p,
                                                 index=i)
                    continue
            record = p.branches[i] if p is not None and si == p.plan.source else None
            x_BlC = block(x_BlC, cache.block_ada[i], cache.text_kv[i], cond.text_mask_BT, cos_lP[:, None],
                          sin_lP[:, None], None, kv, ops=cache.ops, record_3BLC=record)
        assert cache.head_ada is not None
        return self.head(cache.ops.head_norm(x_BlC, *cache.head_ada, self.head_nm.eps))


# ---------------------------------------------------------------------------------------------
# CUDA graphs of the incremental pass
# ---------------------------------------------------------------------------------------------


class ScaleGraphs:
    """Every scale of :meth:`InfinityTransformer.forward_scale` captured as a CUDA graph, for one
    batch size, text width and schedule; replayed for new text and inputs.

    A scale of the 2B model is well over a thousand kernel launches: eagerly the small scales are
    bound by the host's launch rate, a replay submits them at once. Capture costs about two eager
    passes (a warm-up, which also compiles and tunes compiled ``ops``, then the capture). The
    key/value buffers, static inputs and the graphs' memory stay allocated while the object lives.
    Replays see in-place changes of the parameters, not replaced parameters or modules. CUDA only.

        graphs = ScaleGraphs(model, batch=2 * B, text_len=T, scales=scales)
        graphs.start(model.condition(text))        # text padded to T
        logits = graphs.forward_scale(None)        # then forward_scale(x) for every later scale
    """

    def __init__(
        self,
        model: InfinityTransformer,
        batch: int,
        text_len: int,
        scales: Sequence[Scale],
        *,
        frame_hw: tuple[int, int] | None = None,
        ops: BlockOps = EAGER_OPS,
        shed: tuple[int, int] | None = None,
        prune: PrunePlan | None = None,
    ) -> None:
        dev = model.device
        if dev.type != "cuda":
            raise InvalidInputError("CUDA graphs need the transformer on a CUDA device")
        C = model.cfg.embed_dim
        self.model = model
        static = Conditioning(
            cond_BD=torch.zeros(batch, C, device=dev),
            ada_B16C=torch.zeros(batch, 1, 6, C, device=dev),
            text_BTD=torch.zeros(batch, text_len, C, dtype=model.compute_dtype, device=dev),
            text_mask_BT=torch.ones(batch, text_len, dtype=torch.bool, device=dev),
        )
        with torch.no_grad():
            self.cache = model.new_cache(static, scales, frame_hw=frame_hw, ops=ops, prune=prune)
            sizes = [math.prod(s) for s in self.cache.scales]
            starts = [sum(sizes[:i]) for i in range(len(sizes))]
            # scales from shed[0] on run on the first shed[1] rows only (views of the same buffers),
            # sliced when each scale runs: the captured derive step replaces the per-pass tensors
            self.shed = shed
            self._rows = [batch if shed is None or si < shed[0] else shed[1] for si in range(len(sizes))]
            self._x_Bld = [None] + [torch.zeros(self._rows[si], l, model.cfg.bits, device=dev)
                                    for si, l in enumerate(sizes) if si > 0]
            def step(si: int) -> Tensor:
                cache = self.cache if self._rows[si] == batch else self.cache.rows(self._rows[si])
                return model._run_scale(cache, si, self._x_Bld[si], starts[si], starts[si])

            steps = [partial(step, si) for si in range(len(sizes))]
            side = torch.cuda.Stream(dev)
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):
                # warm-up: library handles and workspaces, compiling and tuning of compiled ops
                model.derive_constants(self.cache)
                for step in steps:
                    step()
            torch.cuda.current_stream(dev).wait_stream(side)
            pool = torch.cuda.graph_pool_handle()
            self._derive = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._derive, pool=pool):
                model.derive_constants(self.cache)
            self._graphs: list[torch.cuda.CUDAGraph] = []
            self._logits: list[Tensor] = []
            for step in steps:
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g, pool=pool):
                    self._logits.append(step())
                self._graphs.append(g)
        self.ops = ops

    def matches(
        self, model: InfinityTransformer, batch: int, text_len: int, scales: Sequence[Scale], ops: BlockOps,
        shed: tuple[int, int] | None = None, prune: PrunePlan | None = None,
    ) -> bool:
        """Whether these graphs run this model, shape and ``ops`` (the RoPE frame follows the schedule)."""
        same_scales = self.cache.scales == tuple(tuple(int(v) for v in s) for s in scales)
        same_text = tuple(self.cache.cond.text_BTD.shape[:2]) == (batch, text_len)
        same_prune = (self.cache.prune.plan if self.cache.prune is not None else None) == prune
        return model is self.model and ops is self.ops and same_scales and same_text and self.shed == shed and same_prune

    def start(self, cond: Conditioning) -> KVCache:
        """Load the conditioning of a new pass (same batch and text width) and rewind to scale 0."""
        static = self.cache.cond
        for name in ("cond_BD", "ada_B16C", "text_BTD", "text_mask_BT"):
            src, dst = getattr(cond, name), getattr(static, name)
            if src.shape != dst.shape:
                raise InvalidInputError(f"these graphs take {name} of shape {tuple(dst.shape)}, got {tuple(src.shape)}")
            dst.copy_(src)
        self._derive.replay()
        self.cache.rewind()
        return self.cache

    def forward_scale(self, x_Bld: Tensor | None = None) -> Tensor:
        """As :meth:`InfinityTransformer.forward_scale`. The returned logits are a static buffer:
        the next replay of the same scale overwrites them."""
        cache = self.cache
        if cache.done:
            raise InvalidInputError("every scale has run; call start() for the next pass")
        si = cache.next_scale
        if si > 0 and (x_Bld is None or x_Bld.shape != self._x_Bld[si].shape):
            got = None if x_Bld is None else tuple(x_Bld.shape)
            raise InvalidInputError(f"scale {si} needs an input of shape {tuple(self._x_Bld[si].shape)}, got {got}")
        if si == 0 and x_Bld is not None:
            raise InvalidInputError("scale 0 takes no input (it starts from the text)")
        if x_Bld is not None:
            self._x_Bld[si].copy_(x_Bld)
        self._graphs[si].replay()
        l = math.prod(cache.scales[si])
        cache.next_scale += 1
        cache.offset += l
        cache.kv_len += l
        return self._logits[si]
