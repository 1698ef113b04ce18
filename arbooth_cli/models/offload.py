"""Recomputed blocks whose inputs wait for the backward pass in host memory (``tune --memory low``).

A recomputed (checkpointed) block keeps only its inputs for the backward pass; for infinity-2b at
1024x1024 with the prior the residual-stream input is 4 x 10,521 x 2048 bf16 values, 172 MB a
block, 5.5 GB for the 32. :class:`HostOffload` moves what a checkpoint saves to pinned host memory
as the forward goes on (a side stream copies it) and brings it back one block ahead of the backward
(block i - 1's input is copied in while block i recomputes), so the GPU holds one or two block
inputs at a time.

It works through :func:`torch.autograd.graph.saved_tensors_hooks` around
``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``: the checkpoint saves its inputs
for the backward pass outside its own hooks, so these hooks see exactly those inputs; what the
recomputation needs inside the block is the checkpoint's business. The arithmetic is untouched:
the same losses and gradients as plain recomputation.
"""

from __future__ import annotations

import weakref
from contextlib import AbstractContextManager

import torch
from torch import Tensor

#: tensors smaller than this stay where they are (AdaLN terms, text keys and values)
MIN_BYTES = 1 << 20


class _Stored:
    """One saved tensor in host memory until :meth:`HostOffload._unpack` brings it back."""

    def __init__(self, index: int, host: Tensor, done: torch.cuda.Event | None, device: torch.device) -> None:
        self.index, self.host, self.done, self.device = index, host, done, device
        self.back: Tensor | None = None
        self.back_done: torch.cuda.Event | None = None
        self.used = False  # handed to the backward pass once


class HostOffload:
    """The large tensors the recomputed blocks save in one training step, kept in host memory.

    On a CUDA device the copies run on one side stream (so a buffer reused by the next step cannot
    race an earlier copy) into pinned buffers kept from step to step; on a CPU device a copy is made
    all the same (the tests check the arithmetic, not the speed). ``min_bytes``: smaller tensors
    are left alone.
    """

    def __init__(self, device: torch.device, min_bytes: int = MIN_BYTES) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.min_bytes = min_bytes
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self._buffers: dict[int, Tensor] = {}
        self._order: list[_Stored] = []
        self._seen: dict[int, weakref.ref] = {}  # id -> the tensors packed this step

    def start_step(self) -> None:
        """Forget the last step's tensors (their buffers are reused)."""
        self._order = []
        self._seen = {}

    def finish_step(self) -> None:
        """After the backward pass: drop copies brought back for blocks whose backward never ran
        (frozen blocks below the tuned ones, which the prefetch cannot tell apart)."""
        for stored in self._order:
            stored.back = None

    def hooks(self) -> AbstractContextManager:
        """The context to run a checkpointed block in."""
        return torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _buffer(self, i: int, like: Tensor) -> Tensor:
        buf = self._buffers.get(i)
        if buf is None or buf.shape != like.shape or buf.dtype != like.dtype:
            buf = torch.empty(like.shape, dtype=like.dtype, pin_memory=self.cuda)
            self._buffers[i] = buf
        return buf

    def _pack(self, t: Tensor) -> Tensor | _Stored:
        if t.numel() * t.element_size() < self.min_bytes or t.device.type != self.device.type:
            return t
        seen = self._seen.get(id(t))
        if seen is not None and seen() is t:
            # saved by an earlier block too (the RoPE tables every block saves): it stays alive
            # on the device anyway, so a copy per block would only cost transfers
            return t
        self._seen[id(t)] = weakref.ref(t)
        index = len(self._order)
        buf = self._buffer(index, t)
        if not self.cuda:
            buf.copy_(t)
            stored = _Stored(index, buf, None, t.device)
        else:
            assert self.stream is not None
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.stream):
                buf.copy_(t, non_blocking=True)
                done = torch.cuda.Event()
                done.record()
            t.record_stream(self.stream)  # its memory is not reused before the copy has read it
            stored = _Stored(index, buf, done, t.device)
        self._order.append(stored)
        return stored

    def _fetch(self, stored: _Stored) -> None:
        """Start copying ``stored`` back to the device (nothing if it is on its way already)."""
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

    def _prefetch_before(self, index: int) -> None:
        """Start the next tensor the backward pass will ask for: going down from ``index``, the
        first one not handed over yet and not on its way. A block may save several tensors, which
        the backward unpacks in the order they were saved, so the one just below ``index`` may have
        been handed over already; fetching it again would leave a copy on the device that nothing
        uses until the next step (one block input per block, 5.1 GiB at infinity-2b)."""
        for stored in reversed(self._order[:index]):
            if stored.used:
                continue
            fresh = stored.back is None
            self._fetch(stored)
            if fresh:
                return

    def _unpack(self, packed: Tensor | _Stored) -> Tensor:
        if not isinstance(packed, _Stored):
            return packed
        self._fetch(packed)  # on its way already, unless asked for out of order or a second time
        packed.used = True
        self._prefetch_before(packed.index)
        x, packed.back = packed.back, None
        assert x is not None
        if self.cuda:
            assert packed.back_done is not None
            cur = torch.cuda.current_stream(self.device)
            cur.wait_event(packed.back_done)
            x.record_stream(cur)
        return x
