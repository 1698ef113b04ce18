"""AdamW for low-precision tuning: bf16 weights, and moments kept in fp32, bf16 or fp8.

The update is torch's AdamW (decoupled weight decay, bias-corrected moments), computed in float32
per tensor. What differs is storage:

* weights in bf16 are written back with **stochastic rounding** (rounded up or down at random, in
  proportion to the distance): at the official learning rate a step changes a weight by about
  1e-3 of its size, below bf16's resolution (2^-8), so round-to-nearest would drop most updates;
  rounding at random keeps them in expectation at no memory cost;
* ``state="fp32"``: both moments in float32 (8 bytes per tuned weight);
* ``state="bf16"``: both moments in bf16, stochastically rounded (4 bytes);
* ``state="fp8"``: the first moment and the square root of the second in float8 (e4m3) with one
  float32 scale per block of 128 values, stochastically rounded (about 2 bytes). The square root
  halves the dynamic range the 8 bits must cover; a moment that underflows its block's range reads
  as 0, so each element's update is clipped to +-``FP8_UPDATE_CLIP`` (exact AdamW stays within
  (1 - b1) / sqrt(1 - b2) = 3.2 with the default betas).

Tensors with fewer than ``SMALL_TENSOR`` values always keep float32 moments.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor

StateKind = Literal["fp32", "bf16", "fp8"]
FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
FP8_BLOCK = 128
FP8_UPDATE_CLIP = 4.0
SMALL_TENSOR = 4096
#: low float32 mantissa bits that a format drops (bf16 keeps 7 of 23, e4m3 keeps 3)
_DROPPED_BITS = {torch.bfloat16: 16, FP8: 20}


def stochastic_round(x: Tensor, dtype: torch.dtype, generator: torch.Generator | None) -> Tensor:
    """``x`` (float32) to ``dtype`` (bf16 or float8 e4m3), rounding away from or towards zero at
    random with the probabilities that make the result unbiased; ``generator=None`` rounds to
    nearest. Values below the format's normal range round to nearest."""
    if generator is None or dtype not in _DROPPED_BITS:
        return x.to(dtype)
    drop = _DROPPED_BITS[dtype]
    x = x.float().contiguous()
    noise = torch.randint(0, 1 << drop, x.shape, generator=generator, device=x.device, dtype=torch.int32)
    # Adding below the kept bits then truncating rounds the magnitude up with probability equal
    # to the dropped fraction; a carry into the exponent is the correct next value.
    bits = (x.view(torch.int32) + noise) & ~((1 << drop) - 1)
    out = torch.where(torch.isfinite(x), bits.view(torch.float32), x)
    if dtype == FP8:
        out = out.clamp(-FP8_MAX, FP8_MAX)
    return out.to(dtype)


class _Fp8Blocks:
    """A float32 tensor stored as float8 values with one float32 scale per block."""

    def __init__(self, numel: int, device: torch.device) -> None:
        nblocks = math.ceil(numel / FP8_BLOCK)
        self.numel = numel
        self.q = torch.zeros(nblocks, FP8_BLOCK, dtype=FP8, device=device)
        self.scale = torch.zeros(nblocks, 1, dtype=torch.float32, device=device)

    def read(self) -> Tensor:
        return (self.q.float() * self.scale).view(-1)[: self.numel]

    def write(self, x: Tensor, generator: torch.Generator | None) -> None:
        flat = torch.nn.functional.pad(x.float().reshape(-1), (0, self.q.numel() - self.numel)).view(self.q.shape)
        amax = flat.abs().amax(dim=1, keepdim=True)
        self.scale.copy_(amax / FP8_MAX)
        safe = torch.where(amax > 0, self.scale, torch.ones_like(self.scale))
        self.q.copy_(stochastic_round(flat / safe, FP8, generator))


class TuningAdamW:
    """AdamW over ``params`` (their ``.grad`` read at :meth:`step`); see the module docstring.

    ``generator``: the random stream of stochastic rounding, on the parameters' device (None:
    round to nearest). Its state belongs in a checkpoint for an exact resume.
    """

    def __init__(
        self,
        params: Sequence[Tensor],
        *,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        state: StateKind = "fp32",
        generator: torch.Generator | None = None,
    ) -> None:
        if state not in ("fp32", "bf16", "fp8"):
            raise ValueError(f"unknown optimizer state kind {state!r}")
        self.params = list(params)
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.kind = state
        self.generator = generator
        self.steps = 0
        self._m: list[Tensor | _Fp8Blocks] = []
        self._v: list[Tensor | _Fp8Blocks] = []
        for p in self.params:
            kind = "fp32" if p.numel() < SMALL_TENSOR else state
            if kind == "fp8":
                self._m.append(_Fp8Blocks(p.numel(), p.device))
                self._v.append(_Fp8Blocks(p.numel(), p.device))
            else:
                dt = torch.float32 if kind == "fp32" else torch.bfloat16
                self._m.append(torch.zeros(p.shape, dtype=dt, device=p.device))
                self._v.append(torch.zeros(p.shape, dtype=dt, device=p.device))

    def state_bytes(self) -> int:
        """Memory held by the moments."""
        total = 0
        for s in (*self._m, *self._v):
            parts = (s.q, s.scale) if isinstance(s, _Fp8Blocks) else (s,)
            total += sum(t.numel() * t.element_size() for t in parts)
        return total

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def _read(self, s: Tensor | _Fp8Blocks, shape: torch.Size) -> Tensor:
        return s.read().view(shape) if isinstance(s, _Fp8Blocks) else s.float()

    def _write(self, s: Tensor | _Fp8Blocks, x: Tensor) -> None:
        if isinstance(s, _Fp8Blocks):
            s.write(x, self.generator)
        elif s.dtype == torch.float32:
            s.copy_(x)
        else:
            s.copy_(stochastic_round(x, s.dtype, self.generator))

    @torch.no_grad()
    def step(self) -> None:
        """One step for every parameter with a gradient."""
        self.steps += 1
        for i, p in enumerate(self.params):
            if p.grad is not None:
                self._update(i)

    def step_in_backward(self) -> Callable[[], None]:
        """Update each parameter as soon as its gradient is complete, then drop that gradient,
        so the gradients of all tuned tensors never exist at once. Call :meth:`begin_step`
        before each backward pass. Returns a function that removes the hooks."""
        handles = [p.register_post_accumulate_grad_hook(functools.partial(self._hook, i))
                   for i, p in enumerate(self.params)]
        return lambda: [h.remove() for h in handles]  # type: ignore[func-returns-value]

    def begin_step(self) -> None:
        self.steps += 1

    @torch.no_grad()
    def _hook(self, i: int, p: Tensor) -> None:
        self._update(i)
        p.grad = None

    def _update(self, i: int) -> None:
        p, ms, vs = self.params[i], self._m[i], self._v[i]
        assert p.grad is not None
        b1, b2 = self.betas
        bc1 = 1 - b1**self.steps
        bc2_sqrt = math.sqrt(1 - b2**self.steps)
        g = p.grad.float()
        m = self._read(ms, p.shape).mul_(b1).add_(g, alpha=1 - b1)
        fp8 = isinstance(vs, _Fp8Blocks)
        v = self._read(vs, p.shape)
        if fp8:  # stored as sqrt(v)
            v = v.square_()
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        update = m / (v.sqrt() / bc2_sqrt + self.eps) / bc1
        if fp8:
            update.clamp_(-FP8_UPDATE_CLIP, FP8_UPDATE_CLIP)
        w = p.detach().float()
        w.mul_(1 - self.lr * self.weight_decay).sub_(update, alpha=self.lr)
        if p.dtype == torch.float32:
            p.detach().copy_(w)
        else:
            p.detach().copy_(stochastic_round(w, p.dtype, self.generator))
        self._write(ms, m)
        self._write(vs, v.sqrt_() if fp8 else v)

    # ---- checkpoints ---------------------------------------------------------------------

    def state_tensors(self) -> dict[str, Tensor]:
        """Every moment tensor by a stable name (for a safetensors checkpoint)."""
        out: dict[str, Tensor] = {}
        for i, (ms, vs) in enumerate(zip(self._m, self._v)):
            for tag, s in (("m", ms), ("v", vs)):
                if isinstance(s, _Fp8Blocks):
                    out[f"{i}.{tag}.q"] = s.q
                    out[f"{i}.{tag}.scale"] = s.scale
                else:
                    out[f"{i}.{tag}"] = s
        return out

    def load_state_tensors(self, tensors: dict[str, Tensor], steps: int) -> None:
        mine = self.state_tensors()
        if set(mine) != set(tensors):
            raise ValueError("the optimizer state does not match the tuned tensors (another --layers or --blocks?)")
        for k, t in mine.items():
            if t.shape != tensors[k].shape or t.dtype != tensors[k].dtype:
                raise ValueError(f"optimizer state {k}: {tuple(tensors[k].shape)} {tensors[k].dtype}, "
                                 f"expected {tuple(t.shape)} {t.dtype}")
            t.copy_(tensors[k])
        self.steps = steps
