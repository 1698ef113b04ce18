"""What a recomputed block may keep: its self-attention outputs (selective recomputation).

A recomputed (checkpointed) block runs its forward twice, the second time inside the backward
pass. The self-attention is the block's most expensive op per byte of output: at infinity-2b,
1024x1024, batch 4 its forward is about 5 ms a block and its outputs (attention values and the
softmax log-sum-exp the backward needs) are 175 MB, where the whole block's activations are about
4.07 GiB. :class:`KeptAttention` keeps those outputs from a block's first forward and hands them to
its recomputation, which then runs only the matmuls and element-wise stages again. The backward
kernel gets the recomputed queries, keys and values (the same values: the forward is
deterministic) and the kept outputs, so the gradients are those of plain recomputation.

Why not PyTorch's selective activation checkpointing: its dispatch modes stop ``torch.compile``
from running the blocks' compiled element-wise stages inside the checkpoint. So the attention call
itself (a small :class:`torch.autograd.Function` over the fused SDPA kernels) knows whether this is
the block's first forward or its recomputation: the transformer seals a block once its first
forward is done.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

_aten = torch.ops.aten


def _fused_forward(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float) -> tuple[Tensor, Tensor, tuple]:
    """(out, lse, what the backward kernel needs besides them) from PyTorch's fused kernel for this device."""
    if q.is_cuda:
        out, lse, cq, ck, mq, mk, seed, offset, _ = _aten._scaled_dot_product_cudnn_attention(
            q, k, v, None, True, 0.0, False, False, scale=scale)
        return out, lse, (seed, offset, cq, ck, mq, mk)
    if mask is not None and mask.dtype == torch.bool:  # the kernel takes an additive mask, as SDPA makes it
        mask = torch.zeros(mask.shape, dtype=q.dtype).masked_fill(~mask, float("-inf"))
    out, lse = _aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, attn_mask=mask, scale=scale)
    return out, lse, (mask,)


def _fused_backward(g: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, extra: tuple,
                    scale: float) -> tuple[Tensor, Tensor, Tensor]:
    if q.is_cuda:
        seed, offset, cq, ck, mq, mk = extra
        return _aten._scaled_dot_product_cudnn_attention_backward(
            g, q, k, v, out, lse, seed, offset, None, cq, ck, mq, mk, 0.0, False, scale=scale)
    (mask,) = extra
    return _aten._scaled_dot_product_flash_attention_for_cpu_backward(g, q, k, v, out, lse, 0.0, False,
                                                                       attn_mask=mask, scale=scale)


def fused_kernel_runs(q: Tensor, mask: Tensor | None) -> bool:
    """Whether :class:`KeptAttention` serves this call: the fused kernels it calls directly take
    no mask on a GPU (the masked call of the small scales is cheap and recomputed as before)."""
    if q.is_cuda:
        return (mask is None and q.dtype in (torch.float16, torch.bfloat16)
                and hasattr(_aten, "_scaled_dot_product_cudnn_attention_backward")
                and torch.backends.cuda.cudnn_sdp_enabled() and torch.cuda.get_device_capability(q.device) >= (8, 0))
    return q.device.type == "cpu" and q.dtype == torch.float32 and (mask is None or mask.dtype == torch.bool)


class _Attention(torch.autograd.Function):
    """SDPA whose forward may return kept outputs instead of running the kernel."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float,
                kept: tuple[Tensor, Tensor, tuple] | None, keep: list | None) -> Tensor:
        if kept is None:
            out, lse, extra = _fused_forward(q, k, v, mask, scale)
            if keep is not None:
                keep.append((out.detach(), lse, extra))
        else:
            out, lse, extra = kept
            out = out.detach()
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.extra, ctx.scale = extra, scale
        return out

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _fused_backward(g, q, k, v, out, lse, ctx.extra, ctx.scale)
        return dq, dk, dv, None, None, None, None


class KeptAttention:
    """The self-attention outputs of one training step's recomputed blocks, kept from their first
    forward for their recomputation: those of the first ``blocks`` blocks. The transformer's
    training forward calls :meth:`start_step` first and :meth:`seal` after each block's first
    forward."""

    def __init__(self, blocks: int = 0) -> None:
        self.blocks = blocks
        self._kept: dict[int, list[tuple[Tensor, Tensor, tuple] | None]] = {}
        self._sealed: set[int] = set()

    def start_step(self) -> None:
        self._kept, self._sealed = {}, set()

    def seal(self, block: int) -> None:
        self._sealed.add(block)

    def sdpa(self, block: int) -> Callable[..., Tensor]:
        """``F.scaled_dot_product_attention`` for block ``block``'s self-attention calls."""
        entries = self._kept.setdefault(block, [])

        def sdpa(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, scale: float | None = None) -> Tensor:
            s = q.shape[-1] ** -0.5 if scale is None else scale
            if block in self._sealed:
                # the recomputation: the same calls in the same order, each served as the first
                # forward decided (an entry for every call, None where PyTorch's SDPA ran)
                kept = entries.pop(0)
                if kept is None:
                    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
                if kept[0].shape[:-1] != q.shape[:-1]:
                    raise RuntimeError("kept attention outputs out of order: the recomputation made other calls")
                return _Attention.apply(q, k, v, attn_mask, s, kept, None)
            if torch.is_grad_enabled() and fused_kernel_runs(q, attn_mask):
                try:
                    return _Attention.apply(q, k, v, attn_mask, s, None, entries)
                except torch.OutOfMemoryError:
                    raise
                except RuntimeError:  # the kernel refused these inputs: PyTorch's choice, recomputed as before
                    pass
            entries.append(None)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)

        return sdpa


def kept_attention_bytes(rows: int, tokens: int, width: int, heads: int, element_size: int) -> int:
    """What one block keeps with :class:`KeptAttention`: the attention values (rows x tokens x
    width in the blocks' dtype) and the float32 log-sum-exp (rows x heads x tokens)."""
    return rows * tokens * (width * element_size + heads * 4)
