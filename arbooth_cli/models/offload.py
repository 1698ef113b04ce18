"""Recomputed blocks whose inputs wait for the backward pass in host memory (``tune --memory low``).

A recomputed (checkpointed) block keeps only its input for the backward pass; for infinity-2b at
1024x1024 with the prior that is 4 x 10,521 x 2048 bf16 values, 172 MB a block, 5.5 GB for the 32.
:class:`HostOffload` copies each input to pinned host memory on a side stream as the forward goes
on, and brings it back one block ahead of the backward (the copy of block i - 1's input overlaps
block i's recomputation and backward), so the GPU holds one or two block inputs at a time.

:func:`offloaded_block` is the recomputing block: a custom autograd function that runs the block
without keeping anything, then, in the backward pass, reloads the input, runs the block again with
gradients on and back-propagates through it. The recomputation is the same operations on the same
values as :func:`torch.utils.checkpoint.checkpoint`, so the losses and updates are the same.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


class _Stored:
    """One block input: in host memory (``host``) until :meth:`HostOffload.fetch` brings it back."""

    def __init__(self, host: Tensor, done: torch.cuda.Event | None, device: torch.device) -> None:
        self.host, self.done, self.device = host, done, device
        self.back: Tensor | None = None
        self.back_done: torch.cuda.Event | None = None


class HostOffload:
    """Block inputs of one training step, kept in host memory between the forward and the backward.

    On a CUDA device the copies run on a side stream into pinned buffers that are reused from step
    to step (one per block position); on a CPU device a copy is made all the same (what the tests
    check: the arithmetic, not the speed).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self._buffers: dict[int, Tensor] = {}
        self._order: list[_Stored] = []

    def start_step(self) -> None:
        """Forget the last step's inputs (their buffers are reused)."""
        self._order = []

    def _buffer(self, i: int, like: Tensor) -> Tensor:
        buf = self._buffers.get(i)
        if buf is None or buf.shape != like.shape or buf.dtype != like.dtype:
            buf = torch.empty(like.shape, dtype=like.dtype, pin_memory=self.cuda)
            self._buffers[i] = buf
        return buf

    def store(self, x: Tensor) -> _Stored:
        buf = self._buffer(len(self._order), x)
        if not self.cuda:
            buf.copy_(x)
            stored = _Stored(buf, None, x.device)
        else:
            assert self.stream is not None
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.stream):
                buf.copy_(x, non_blocking=True)
                done = torch.cuda.Event()
                done.record()
            x.record_stream(self.stream)  # its memory is not reused before the copy has read it
            stored = _Stored(buf, done, x.device)
        self._order.append(stored)
        return stored

    def _prefetch(self, stored: _Stored) -> None:
        if stored.back is not None:
            return
        if not self.cuda:
            stored.back = stored.host.clone()
            return
        assert self.stream is not None and stored.done is not None
        with torch.cuda.stream(self.stream):
            self.stream.wait_event(stored.done)
            stored.back = stored.host.to(stored.device, non_blocking=True)
            stored.back_done = torch.cuda.Event()
            stored.back_done.record()

    def fetch(self, stored: _Stored) -> Tensor:
        """The input back on the device; starts bringing back the input stored before it."""
        self._prefetch(stored)
        k = next((i for i, s in enumerate(self._order) if s is stored), 0)
        if k > 0:
            self._prefetch(self._order[k - 1])
        x, stored.back = stored.back, None
        assert x is not None
        if self.cuda:
            assert stored.back_done is not None
            cur = torch.cuda.current_stream(self.device)
            cur.wait_event(stored.back_done)
            x.record_stream(cur)
        return x


class _OffloadedBlock(torch.autograd.Function):
    @staticmethod
    def forward(ctx, run: Callable[..., Tensor], store: HostOffload, x: Tensor, *tensors: Tensor) -> Tensor:  # type: ignore[override]
        ctx.run, ctx.store = run, store
        ctx.stored = store.store(x)
        ctx.save_for_backward(*tensors)
        with torch.no_grad():
            return run(x, *tensors)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        x = ctx.store.fetch(ctx.stored)
        inputs = [x, *ctx.saved_tensors]
        wants = ctx.needs_input_grad[2:]
        detached = [t.detach().requires_grad_(w) for t, w in zip(inputs, wants)]
        with torch.enable_grad():
            out = ctx.run(*detached)
        torch.autograd.backward(out, grad_out)
        return (None, None, *[d.grad if w else None for d, w in zip(detached, wants)])


def offloaded_block(run: Callable[..., Tensor], store: HostOffload, x: Tensor, *tensors: Tensor) -> Tensor:
    """``run(x, *tensors)`` as a recomputed block whose input ``x`` waits in host memory; gradients
    reach ``x``, ``tensors`` (those that require them) and the parameters ``run`` uses."""
    return _OffloadedBlock.apply(run, store, x, *tensors)
