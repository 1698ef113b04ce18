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

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..errors import InvalidInputError
from ..registry import TransformerConfig
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


def apply_rope(x_BHLc: Tensor, cos_LP: Tensor, sin_LP: Tensor) -> Tensor:
    """Rotate interleaved pairs (x[2p], x[2p+1]) by the angle of pair p; float32 result."""
    x = x_BHLc.float().unflatten(-1, (-1, 2))
    x0, x1 = x[..., 0], x[..., 1]
    out = torch.stack([cos_LP * x0 - sin_LP * x1, sin_LP * x0 + cos_LP * x1], dim=-1)
    return out.flatten(-2)


def block_causal_mask(scales: Sequence[Scale], device: torch.device) -> Tensor:
    """(L, L) bool, True where query token may attend: keys of its own and all coarser scales."""
    level_L = scale_index_per_token(scales, device)
    return level_L[None, :] <= level_L[:, None]


def scale_index_per_token(scales: Sequence[Scale], device: torch.device) -> Tensor:
    sizes = [t * h * w for t, h, w in scales]
    return torch.repeat_interleave(torch.arange(len(scales), device=device), torch.tensor(sizes, device=device))


# ---------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------


def _layer_norm_fp32(x: Tensor, eps: float) -> Tensor:
    return F.layer_norm(x.float(), (x.shape[-1],), None, None, eps)


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
        cos_LP: Tensor,
        sin_LP: Tensor,
        mask_LL: Tensor | None,
        past_kv: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Returns the output and this call's (k, v) appended to ``past_kv`` (for the cache)."""
        B, L, C = x_BLC.shape
        # the module is called (not its .weight) so adapters wrapped around it take effect
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = (self.mat_qkv(x_BLC) + bias).view(B, L, 3, self.heads, self.head_dim)
        q_BHLc, k_BHLc, v_BHLc = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        # QK-norm and RoPE in float32 (RoPE is applied before caching, as the checkpoints expect)
        gain = self.scale_mul_1H11.float().clamp_max(_MAX_LOG_QK_SCALE).exp()
        q_BHLc = F.normalize(q_BHLc.float(), dim=-1, eps=1e-12) * gain
        k_BHLc = F.normalize(k_BHLc.float(), dim=-1, eps=1e-12)
        q_BHLc = apply_rope(q_BHLc, cos_LP, sin_LP).to(x_BLC.dtype)
        k_BHLc = apply_rope(k_BHLc, cos_LP, sin_LP).to(x_BLC.dtype)
        if past_kv is not None:
            k_BHLc = torch.cat((past_kv[0], k_BHLc), dim=2)
            v_BHLc = torch.cat((past_kv[1], v_BHLc), dim=2)
        out = F.scaled_dot_product_attention(q_BHLc, k_BHLc, v_BHLc, attn_mask=mask_LL, scale=1.0)
        return self.proj(out.transpose(1, 2).reshape(B, L, C)), (k_BHLc, v_BHLc)


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
        """Per-head keys and values (B, H, T, c) of the text; cacheable across scales."""
        B, T, _ = text_BTD.shape
        bias = torch.cat((self.zero_k_bias, self.v_bias))
        kv = (self.mat_kv(text_BTD) + bias).view(B, T, 2, self.heads, self.head_dim)
        k_BHTc, v_BHTc = kv.permute(2, 0, 3, 1, 4).unbind(0)
        return k_BHTc, v_BHTc

    def forward(self, x_BLC: Tensor, kv: tuple[Tensor, Tensor], text_mask_BT: Tensor) -> Tensor:
        B, L, C = x_BLC.shape
        q_BHLc = self.mat_q(x_BLC).view(B, L, self.heads, self.head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(
            q_BHLc, kv[0], kv[1], attn_mask=text_mask_BT[:, None, None, :], scale=self.head_dim**-0.5
        )
        return self.proj(out.transpose(1, 2).reshape(B, L, C))


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

    def forward(
        self,
        x_BLC: Tensor,
        ada_B16C: Tensor,
        text_kv: tuple[Tensor, Tensor],
        text_mask_BT: Tensor,
        cos_LP: Tensor,
        sin_LP: Tensor,
        mask_LL: Tensor | None,
        past_kv: tuple[Tensor, Tensor] | None = None,
        keep_B11: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """``x_BLC`` is the float32 residual stream; ``keep_B11`` are drop-path multipliers."""
        dt = self.compute_dtype
        gamma1, gamma2, scale1, scale2, shift1, shift2 = (self.ada_gss.float() + ada_B16C).unbind(2)

        h = _layer_norm_fp32(x_BLC, self.eps).mul(scale1 + 1).add(shift1)
        h, kv = self.sa(h.to(dt), cos_LP, sin_LP, mask_LL, past_kv)
        h = h.float() * gamma1
        x_BLC = x_BLC + (h if keep_B11 is None else h * keep_B11[0])

        # LayerNorm in float32 (with its affine weights) before the text attention, as CUDA
        # autocast does it in the official bf16 run
        h = F.layer_norm(x_BLC, (x_BLC.shape[-1],), self.ca_norm.weight.float(), self.ca_norm.bias.float(), self.eps)
        x_BLC = x_BLC + self.ca(h.to(dt), text_kv, text_mask_BT).float()

        h = _layer_norm_fp32(x_BLC, self.eps).mul(scale2 + 1).add(shift2)
        h = self.ffn(h.to(dt)).float() * gamma2
        x_BLC = x_BLC + (h if keep_B11 is None else h * keep_B11[1])
        return x_BLC, kv


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

    def forward(self, x_BLC: Tensor, cond_BD: Tensor) -> Tensor:
        scale_B1C, shift_B1C = self.ada_lin(cond_BD.float()).unflatten(-1, (1, 2, -1)).unbind(2)
        return _layer_norm_fp32(x_BLC, self.eps).mul(scale_B1C + 1).add(shift_B1C)


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

    Holds the self-attention keys/values of every block for the scales run so far (RoPE already
    applied) and the per-block text keys/values, which do not change between scales.
    """

    scales: tuple[Scale, ...]
    frame_hw: tuple[int, int]
    cond: Conditioning
    #: RoPE tables of the whole schedule (L, P); scale s uses the rows [offset_s, offset_s + l_s)
    cos_LP: Tensor
    sin_LP: Tensor
    self_kv: list[tuple[Tensor, Tensor] | None]
    text_kv: list[tuple[Tensor, Tensor] | None]
    next_scale: int = 0
    #: token offset of ``next_scale`` in the concatenated schedule
    offset: int = field(default=0)

    @property
    def done(self) -> bool:
        return self.next_scale >= len(self.scales)

    @property
    def cached_tokens(self) -> int:
        kv = self.self_kv[0]
        return 0 if kv is None else kv[0].shape[2]


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
        checkpoint_blocks: bool = False,
        drop_path_generator: torch.Generator | None = None,
    ) -> Tensor:
        """Teacher-forced logits over all scales, ``logits_BLV`` float32.

        ``tf_input_BLd``: (B, L - 1, d) accumulated VAE code features of scales 1..K-1, each
        interpolated to its scale (see :func:`arbooth_cli.models.bsq_vae.teacher_forcing`); scale 0
        is the SOS token made from the pooled text. Token i of scale s sees every token of scales
        <= s. ``drop_path_generator`` turns on stochastic depth (training mode only).
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
        mask_LL = block_causal_mask(scales, dev)
        keeps = self._drop_path_keep(B, drop_path_generator)
        for block, keep in zip(self.blocks, keeps):
            text_kv = block.ca.text_kv(cond.text_BTD)
            args = (x_BLC, cond.ada_B16C, text_kv, cond.text_mask_BT, cos_LP, sin_LP, mask_LL, None, keep)
            if checkpoint_blocks and torch.is_grad_enabled():
                x_BLC = checkpoint(lambda *a, _b=block: _b(*a)[0], *args, use_reentrant=False)
            else:
                x_BLC = block(*args)[0]
        return self.logits(x_BLC, cond.cond_BD)

    # ---- (b) one scale at a time with a KV cache -----------------------------------------

    def new_cache(
        self,
        text: TextCond | Conditioning,
        scales: Sequence[Scale],
        *,
        frame_hw: tuple[int, int] | None = None,
    ) -> KVCache:
        """Start an incremental pass over ``scales`` for the given text (batch as in ``text``)."""
        scales = self._check_scales(scales)
        cond = text if isinstance(text, Conditioning) else self.condition(text)
        frame_hw = frame_hw or rope_frame(scales)
        cos_LP, sin_LP = rope_tables(scales, frame_hw, self.cfg.head_dim, self.cfg.rope_theta, self.device)
        depth = self.cfg.depth
        return KVCache(scales, frame_hw, cond, cos_LP, sin_LP, [None] * depth, [None] * depth)

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
        t, h, w = cache.scales[si]
        l = t * h * w
        cond, dev = cache.cond, self.device
        if si == 0:
            if x_Bld is not None:
                raise InvalidInputError("scale 0 takes no input (it starts from the text)")
            x_BlC = self._sos(cond)
        else:
            if x_Bld is None or x_Bld.shape != (cond.batch, l, self.cfg.bits):
                got = None if x_Bld is None else tuple(x_Bld.shape)
                raise InvalidInputError(f"scale {si} needs an input of shape {(cond.batch, l, self.cfg.bits)}, got {got}")
            x_BlC = self.word_embed(x_Bld.to(dev).float())
        x_BlC = x_BlC + self.lvl_embed.weight[si].float()

        # this scale's rows of the schedule's RoPE table: positions continue after the cached
        # scales (an offset of 0 here would give every scale the positions of scale 0's rows)
        cos_lP = cache.cos_LP[cache.offset : cache.offset + l]
        sin_lP = cache.sin_LP[cache.offset : cache.offset + l]
        for i, block in enumerate(self.blocks):
            if cache.text_kv[i] is None:
                cache.text_kv[i] = block.ca.text_kv(cond.text_BTD)
            x_BlC, cache.self_kv[i] = block(
                x_BlC, cond.ada_B16C, cache.text_kv[i], cond.text_mask_BT, cos_lP, sin_lP, None, cache.self_kv[i]
            )
        cache.next_scale += 1
        cache.offset += l
        return self.logits(x_BlC, cond.cond_BD)
