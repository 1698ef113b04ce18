"""Self-attention in training: one autograd node for a block's attention calls, and the outputs a
recomputed block keeps (selective recomputation).

**One node.** Block-causal attention runs as a few calls (:class:`.transformer.ScalePrefixes`): the
queries of rows ``[s, e)`` against the keys of rows ``[0, e)``. Through autograd, every call's
slices of the queries, keys and values give back a gradient of the whole tensor (zeros but for
the slice), and the engine adds those up: at infinity-2b, 1024x1024, batch 4 that is ten 172-MB
zero fills and nine 172-MB additions a block (the slices' backward alone took 128 ms of CUDA
time in a 2.1-s step on an H100).
:func:`attention` is one node instead: its backward writes the query gradients into their rows and
adds each call's key and value gradients into the prefix they cover.

**Kept outputs.** A recomputed (checkpointed) block runs its forward twice, the second time inside
the backward pass. Its self-attention is the block's most expensive op per byte of output: about
5 ms a block at that size, for 175 MB of outputs (values and softmax log-sum-exp), where the whole
block's activations are about 4.07 GiB. :class:`KeptAttention` keeps those outputs from a block's
first forward for its recomputation, which then runs only the matmuls and element-wise stages.
The backward kernels get the recomputed queries, keys and values (the same values: the forward is
deterministic) and the kept outputs, so the gradients are those of plain recomputation. PyTorch's
own selective checkpointing is not used: its dispatch modes stop ``torch.compile`` from running the
blocks' compiled element-wise stages inside the checkpoint.

A call the fused kernels do not serve (a masked call on a GPU, a dtype they refuse) runs through
PyTorch's SDPA without a graph in the forward and again, with one, in the backward pass: on a GPU
that is the masked call of the small scales, about a tenth of the attention.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

_aten = torch.ops.aten


class Call(NamedTuple):
    """One attention call: the queries of rows ``[q0, q1)`` against the keys of rows ``[0, k1)``."""

    q0: int
    q1: int
    k1: int
    mask: Tensor | None


class Ran(NamedTuple):
    """What a call's forward gave: its output (B, H, l, c); for a fused call also the softmax
    log-sum-exp and what the backward kernel needs besides (``lse`` None: PyTorch's SDPA ran)."""

    out: Tensor
    lse: Tensor | None
    extra: tuple


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
    """Whether the fused kernels called directly serve this call: on a GPU cuDNN's, unmasked,
    in bf16 or fp16; on the CPU the flash kernel in float32."""
    if q.is_cuda:
        return (mask is None and q.dtype in (torch.float16, torch.bfloat16)
                and hasattr(_aten, "_scaled_dot_product_cudnn_attention_backward")
                and torch.backends.cuda.cudnn_sdp_enabled() and torch.cuda.get_device_capability(q.device) >= (8, 0))
    return q.device.type == "cpu" and q.dtype == torch.float32 and (mask is None or mask.dtype == torch.bool)


def _run(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float) -> Ran:
    if fused_kernel_runs(q, mask):
        try:
            out, lse, extra = _fused_forward(q, k, v, mask, scale)
            return Ran(out, lse, extra)
        except torch.OutOfMemoryError:
            raise
        except RuntimeError:  # the kernel refused these inputs: PyTorch's choice, run again in the backward
            pass
    return Ran(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale), None, ())


class _Attention(torch.autograd.Function):
    """The calls of one attention as one node; (B, L, H, c) in, (B, L, H, c) out."""

    @staticmethod
    def forward(ctx: Any, q_BLHc: Tensor, k_BNHc: Tensor, v_BNHc: Tensor, calls: tuple[Call, ...], scale: float,
                kept: list[Ran] | None, keep: list | None) -> Tensor:
        q, k, v = q_BLHc.transpose(1, 2), k_BNHc.transpose(1, 2), v_BNHc.transpose(1, 2)
        gaps = _gaps(calls, q_BLHc.shape[1])
        out_BLHc = q_BLHc.new_zeros(q_BLHc.shape) if gaps else q_BLHc.new_empty(q_BLHc.shape)
        ran = []
        for i, (q0, q1, k1, mask) in enumerate(calls):
            r = kept[i] if kept is not None else _run(q[:, :, q0:q1], k[:, :, :k1], v[:, :, :k1], mask, scale)
            out_BLHc[:, q0:q1] = r.out.transpose(1, 2)
            ran.append(r)
        if keep is not None:
            keep.append([Ran(r.out.detach(), r.lse, r.extra) for r in ran])
        # the backward kernels read the outputs from the node's own output (the next linear keeps
        # it anyway), so the calls' separate outputs are not kept as well
        lses = [r.lse for r in ran if r.lse is not None]
        ctx.save_for_backward(q_BLHc, k_BNHc, v_BNHc, out_BLHc, *lses)
        ctx.calls, ctx.scale, ctx.gaps = calls, scale, gaps
        ctx.extras = [r.extra if r.lse is not None else None for r in ran]
        return out_BLHc

    @staticmethod
    def backward(ctx: Any, g_BLHc: Tensor) -> tuple[Tensor | None, ...]:
        q_BLHc, k_BNHc, v_BNHc, out_BLHc, *lses = ctx.saved_tensors
        q, k, v = q_BLHc.transpose(1, 2), k_BNHc.transpose(1, 2), v_BNHc.transpose(1, 2)
        out, g = out_BLHc.transpose(1, 2), g_BLHc.transpose(1, 2)
        dq_BLHc = torch.zeros_like(q_BLHc) if ctx.gaps else torch.empty_like(q_BLHc)
        dk = dv = None
        lse_of = iter(lses)
        grads = []
        for (q0, q1, k1, mask), extra in zip(ctx.calls, ctx.extras):
            qi, ki, vi, gi = q[:, :, q0:q1], k[:, :, :k1], v[:, :, :k1], g[:, :, q0:q1]
            if extra is not None:
                grads.append(_fused_backward(gi, qi, ki, vi, out[:, :, q0:q1], next(lse_of), extra, ctx.scale))
            else:  # PyTorch's SDPA, run again with a graph
                with torch.enable_grad():
                    leaves = [t.detach().requires_grad_() for t in (qi, ki, vi)]
                    oi = F.scaled_dot_product_attention(*leaves, attn_mask=mask, scale=ctx.scale)
                    grads.append(torch.autograd.grad(oi, leaves, gi))
        # the widest call's key gradients first, so the others add into its prefix
        for i in sorted(range(len(grads)), key=lambda i: -ctx.calls[i].k1):
            q0, q1, k1, _ = ctx.calls[i]
            dqi, dki, dvi = grads[i]
            dq_BLHc[:, q0:q1] = dqi.transpose(1, 2)
            if dk is None:
                dk, dv = (t if k1 == k.shape[2] else _grow(t, k.shape[2]) for t in (dki, dvi))
            else:
                dk[:, :, :k1] += dki
                dv[:, :, :k1] += dvi
        return dq_BLHc, dk.transpose(1, 2), dv.transpose(1, 2), None, None, None, None


def _gaps(calls: tuple[Call, ...], rows: int) -> bool:
    """Whether some query row is in no call (its output and gradient are then zero)."""
    covered = sorted((c.q0, c.q1) for c in calls)
    end = 0
    for q0, q1 in covered:
        if q0 > end:
            return True
        end = max(end, q1)
    return end < rows


def _grow(t_BHkc: Tensor, rows: int) -> Tensor:
    """``t`` as the first rows of a zero tensor of ``rows`` rows (dim 2)."""
    full = t_BHkc.new_zeros(*t_BHkc.shape[:2], rows, t_BHkc.shape[3])
    full[:, :, : t_BHkc.shape[2]] = t_BHkc
    return full


class KeptAttention:
    """The self-attention outputs of one training step's recomputed blocks, kept from their first
    forward for their recomputation: those of the first ``blocks`` blocks. The transformer's
    training forward calls :meth:`start_step` first and :meth:`seal` after each block's first
    forward."""

    def __init__(self, blocks: int = 0) -> None:
        self.blocks = blocks
        self._kept: dict[int, list[list[Ran]]] = {}
        self._sealed: set[int] = set()

    def start_step(self) -> None:
        self._kept, self._sealed = {}, set()

    def seal(self, block: int) -> None:
        self._sealed.add(block)

    def slot(self, block: int) -> KeptSlot:
        """Where block ``block``'s attention calls keep (first forward) or find (recomputation) their outputs."""
        return KeptSlot(self, block)


class KeptSlot(NamedTuple):
    store: KeptAttention
    block: int

    def take(self) -> list[Ran] | None:
        """The recomputation's: the kept outputs of the next attention, in the order the first
        forward ran them; None in the first forward."""
        if self.block not in self.store._sealed:
            return None
        return self.store._kept[self.block].pop(0)

    def keeper(self) -> list | None:
        """The first forward's: where its outputs go; None in the recomputation."""
        return None if self.block in self.store._sealed else self.store._kept.setdefault(self.block, [])


def attention(q_BLHc: Tensor, k_BNHc: Tensor, v_BNHc: Tensor, calls: tuple[Call, ...], scale: float,
              slot: KeptSlot | None = None) -> Tensor:
    """The attention ``calls`` make, (B, L, H, c) in and out, as one autograd node; ``slot``: a
    recomputed block's :class:`KeptAttention` place (its recomputation runs no call again)."""
    kept = slot.take() if slot is not None else None
    if kept is not None and [r.out.shape[2] for r in kept] != [c.q1 - c.q0 for c in calls]:
        raise RuntimeError("kept attention outputs out of order: the recomputation made other calls")
    keep = slot.keeper() if slot is not None else None
    return _Attention.apply(q_BLHc, k_BNHc, v_BNHc, tuple(calls), scale, kept, keep)


def kept_attention_bytes(rows: int, tokens: int, width: int, heads: int, element_size: int) -> int:
    """What one block keeps with :class:`KeptAttention`: the attention values (rows x tokens x
    width in the blocks' dtype) and the float32 log-sum-exp (rows x heads x tokens)."""
    return rows * tokens * (width * element_size + heads * 4)
