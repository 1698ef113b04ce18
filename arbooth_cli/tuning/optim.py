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

The random draws of the rounding are counter-based (a hash of seed, step, tensor and position),
not a generator's stream: a checkpoint needs no random state, the updates of the tensors may run
in any order (as gradients complete in the backward pass) with the same result, and on a GPU
each tensor's whole update (moments, rounding, fp8 block scales) compiles into a fused kernel
instead of a dozen full-size float32 passes.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

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
_M32 = 0xFFFFFFFF
#: what a random draw rounds: a tensor's weights or its two moments
_ROLES = 3


def _mix32(x: Tensor) -> Tensor:
    """A 32-bit integer hash of int64 values in [0, 2**32). The multiplier is below 2**31, so no
    intermediate leaves int64's range and every device (and torch.compile) gives the same bits."""
    x = ((x >> 16) ^ x) * 0x45D9F3B & _M32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _M32
    return (x >> 16) ^ x


def rounding_noise(n: int, key: Tensor, bits: int, device: torch.device) -> Tensor:
    """``n`` random integers in [0, 2**bits) (int32), a pure function of ``key`` (a 0-dim int64
    tensor) and the position: counter-based, so a draw needs no generator state, any order of
    draws gives the same numbers, and a compiled update fuses it without a buffer."""
    k = _mix32((_mix32(key & _M32) + (key >> 32)) & _M32)  # both halves of the key
    idx = torch.arange(n, device=device, dtype=torch.int64)
    return (_mix32((idx + k) & _M32) & ((1 << bits) - 1)).to(torch.int32)


def stochastic_round(x: Tensor, dtype: torch.dtype, key: Tensor | None) -> Tensor:
    """``x`` (float32) to ``dtype`` (bf16 or float8 e4m3), rounding away from or towards zero at
    random with the probabilities that make the result unbiased; the draw is :func:`rounding_noise`
    of ``key``, ``key=None`` rounds to nearest. Values below the format's normal range round to
    nearest."""
    if key is None or dtype not in _DROPPED_BITS:
        return x.to(dtype)
    drop = _DROPPED_BITS[dtype]
    x = x.float().contiguous()
    noise = rounding_noise(x.numel(), key, drop, x.device).view(x.shape)
    # Adding below the kept bits then truncating rounds the magnitude up with probability equal
    # to the dropped fraction; a carry into the exponent is the correct next value.
    bits = (x.view(torch.int32) + noise) & ~((1 << drop) - 1)
    out = torch.where(torch.isfinite(x), bits.view(torch.float32), x)
    if dtype == FP8:
        out = out.clamp(-FP8_MAX, FP8_MAX)
    return out.to(dtype)


def _fp8_blocks(numel: int) -> int:
    return math.ceil(numel / FP8_BLOCK)


def _to_blocks(x: Tensor) -> Tensor:
    """A tensor's values, float32, zero-padded to (blocks, FP8_BLOCK)."""
    flat = x.float().reshape(-1)
    return torch.nn.functional.pad(flat, (0, _fp8_blocks(flat.numel()) * FP8_BLOCK - flat.numel())).view(
        -1, FP8_BLOCK)


def _fp8_write(x_NB: Tensor, q_NB: Tensor, scale_N1: Tensor, key: Tensor | None) -> None:
    """Store float32 blocks ``x_NB`` as e4m3 values with one float32 scale per block."""
    amax = x_NB.abs().amax(dim=1, keepdim=True)
    scale = amax / FP8_MAX
    scale_N1.copy_(scale)
    safe = torch.where(amax > 0, scale, torch.ones_like(scale))
    q_NB.copy_(stochastic_round(x_NB / safe, FP8, key))


class _Hyper(NamedTuple):
    lr: float
    b1: float
    b2: float
    eps: float
    weight_decay: float


def _adam_direction(g: Tensor, m: Tensor, v: Tensor, step: Tensor, h: _Hyper) -> tuple[Tensor, Tensor, Tensor]:
    """AdamW's moments after gradient ``g`` and the bias-corrected update direction (float32)."""
    m = m * h.b1 + g * (1 - h.b1)
    v = v * h.b2 + g * g * (1 - h.b2)
    t = step.float()
    bc1 = 1 - h.b1 ** t
    bc2_sqrt = (1 - h.b2 ** t).sqrt()
    return m, v, m / (v.sqrt() / bc2_sqrt + h.eps) / bc1


def _write_weight(p: Tensor, w: Tensor, key: Tensor | None) -> None:
    w = w.reshape(-1)[: p.numel()].view(p.shape)
    p.copy_(w if p.dtype == torch.float32 else stochastic_round(w, p.dtype, key))


def _draw_key(key_base: Tensor | None, step: Tensor, role: int) -> Tensor | None:
    """The key of one draw: the step in the high half, tensor (and seed) and role (0 weights,
    1 and 2 the moments) in the low one, so no two draws share a key; None rounds to nearest."""
    return None if key_base is None else (key_base + step * (1 << 32)) * _ROLES + role


def _update_plain(p: Tensor, g: Tensor, m_s: Tensor, v_s: Tensor, step: Tensor, key_base: Tensor | None,
                  h: _Hyper) -> None:
    """One AdamW step of ``p`` with moments stored as fp32 or bf16 tensors of its shape."""
    m, v, update = _adam_direction(g.float(), m_s.float(), v_s.float(), step, h)
    w = p.float() * (1 - h.lr * h.weight_decay) - h.lr * update
    _write_weight(p, w, _draw_key(key_base, step, 0))
    for role, (s, x) in enumerate(((m_s, m), (v_s, v)), start=1):
        s.copy_(x if s.dtype == torch.float32 else stochastic_round(x, s.dtype, _draw_key(key_base, step, role)))


def _update_fp8(p: Tensor, g: Tensor, mq: Tensor, ms: Tensor, vq: Tensor, vs: Tensor, step: Tensor,
                key_base: Tensor | None, h: _Hyper) -> None:
    """One AdamW step of ``p`` with fp8 block moments (the second stored as its square root)."""
    m_old = mq.float() * ms
    v_old = (vq.float() * vs).square()
    m, v, update = _adam_direction(_to_blocks(g), m_old, v_old, step, h)
    w = _to_blocks(p) * (1 - h.lr * h.weight_decay) - h.lr * update.clamp(-FP8_UPDATE_CLIP, FP8_UPDATE_CLIP)
    _write_weight(p, w, _draw_key(key_base, step, 0))
    _fp8_write(m, mq, ms, _draw_key(key_base, step, 1))
    _fp8_write(v.sqrt(), vq, vs, _draw_key(key_base, step, 2))


class _Fp8Blocks:
    """A float32 tensor stored as float8 values with one float32 scale per block."""

    def __init__(self, numel: int, device: torch.device) -> None:
        self.q = torch.zeros(_fp8_blocks(numel), FP8_BLOCK, dtype=FP8, device=device)
        self.scale = torch.zeros(_fp8_blocks(numel), 1, dtype=torch.float32, device=device)


class TuningAdamW:
    """AdamW over ``params`` (their ``.grad`` read at :meth:`step`); see the module docstring.

    ``seed``: the stochastic rounding's draws are a function of it, the step and the tensor's
    position (None: round to nearest), so :meth:`state_tensors` and :attr:`steps` are all a
    checkpoint needs for an exact resume. ``compile``: fuse each tensor's update into one or two
    kernels with torch.compile (None: on CUDA); the fused update rounds the float32 arithmetic
    in another order, so it matches the eager one up to rounding, not bit for bit.
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
        seed: int | None = None,
        compile: bool | None = None,
    ) -> None:
        if state not in ("fp32", "bf16", "fp8"):
            raise ValueError(f"unknown optimizer state kind {state!r}")
        self.params = list(params)
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.kind = state
        self.seed = seed
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
        devices = {p.device for p in self.params}
        # the step count and each tensor's rounding key live on the device: no host transfer per update
        self._step_t = {d: torch.zeros((), dtype=torch.int64, device=d) for d in devices}
        self._keys = [torch.tensor(self._key_base(i), dtype=torch.int64, device=p.device)
                      for i, p in enumerate(self.params)] if seed is not None else None
        if compile is None:
            compile = any(d.type == "cuda" for d in devices)
        self._plain, self._fp8 = ((torch.compile(_update_plain, dynamic=True), torch.compile(_update_fp8, dynamic=True))
                                  if compile else (_update_plain, _update_fp8))

    def _key_base(self, i: int) -> int:
        # the low half of a key: seed and tensor index below 2**28, so that key * _ROLES + role
        # (weights, first and second moment) stays below 2**32 and leaves the step's half alone
        assert self.seed is not None
        return (self.seed % 4096) * 65_536 + i % 65_536

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

    @torch.no_grad()
    def step(self) -> None:
        """One step for every parameter with a gradient."""
        self.begin_step()
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
        for t in self._step_t.values():
            t.add_(1)

    @torch.no_grad()
    def _hook(self, i: int, p: Tensor) -> None:
        self._update(i)
        p.grad = None

    def _update(self, i: int) -> None:
        p, ms, vs = self.params[i], self._m[i], self._v[i]
        assert p.grad is not None
        step = self._step_t[p.device]
        key = None if self._keys is None else self._keys[i]
        h = _Hyper(self.lr, *self.betas, self.eps, self.weight_decay)
        if isinstance(ms, _Fp8Blocks):
            assert isinstance(vs, _Fp8Blocks)
            fn, eager = self._fp8, _update_fp8
            args: tuple = (p.detach(), p.grad, ms.q, ms.scale, vs.q, vs.scale, step, key, h)
        else:
            assert isinstance(vs, Tensor)
            fn, eager = self._plain, _update_plain
            args = (p.detach(), p.grad, ms, vs, step, key, h)
        try:
            fn(*args)
        except torch._dynamo.exc.TorchDynamoException as e:
            # raised while compiling, before any tensor is written: the eager update is the same math
            warnings.warn(f"the fused optimizer update did not compile ({type(e).__name__}); "
                          "updating without it", RuntimeWarning, stacklevel=2)
            self._plain, self._fp8 = _update_plain, _update_fp8
            eager(*args)

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
        for t in self._step_t.values():
            t.fill_(steps)
