"""KV-cached next-scale sampling with classifier-free guidance batched into one pass.

Random streams: with ``stream="per-image"`` (the default) every image draws its bits from its own
generator, one uniform draw per bit and scale, so an image depends only on its seed and settings,
not on its batch or its place in it. ``stream="batch"`` draws one ``torch.multinomial`` per scale over
the whole batch from a single generator, the order the official Infinity sampler uses, so the same
generator state reproduces its images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..errors import InvalidInputError
from ..models.bsq_vae import BSQVAE
from ..models.text_encoder import TextCond
from ..models.transformer import InfinityTransformer, Scale
from .filters import bit_one_probability, cfg_mix

Stream = Literal["per-image", "batch"]


@dataclass(frozen=True)
class SamplingParams:
    """How bits are drawn. ``cfg`` and ``tau`` are one value or one per scale."""

    cfg: float | tuple[float, ...] = 3.0
    tau: float | tuple[float, ...] = 0.5
    top_k: int = 0
    top_p: float = 0.97

    def per_scale(self, n: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        def expand(v: float | tuple[float, ...], what: str) -> tuple[float, ...]:
            if isinstance(v, (int, float)):
                return (float(v),) * n
            if len(v) != n:
                raise InvalidInputError(f"{what} has {len(v)} values but the schedule has {n} scales")
            return tuple(float(x) for x in v)

        return expand(self.cfg, "cfg"), expand(self.tau, "tau")

    def problems(self) -> list[str]:
        out = []
        taus = self.tau if isinstance(self.tau, tuple) else (self.tau,)
        if any(not t > 0 for t in taus):
            out.append("--tau must be > 0")
        if not 0 < self.top_p <= 1:
            out.append("--top-p must be in (0, 1]")
        if self.top_k < 0:
            out.append("--top-k must be >= 0 (0 keeps all)")
        return out


@torch.no_grad()
def sample_images(
    transformer: InfinityTransformer,
    vae: BSQVAE,
    text: TextCond,
    scales: Sequence[Scale],
    params: SamplingParams,
    generators: Sequence[torch.Generator],
    *,
    stream: Stream = "per-image",
    on_scale: Callable[[int], None] | None = None,
) -> Tensor:
    """Sample one image per prompt of ``text``; returns ``img_B3HW`` as uint8 RGB.

    ``generators``: one per image for ``stream="per-image"``, exactly one for ``"batch"``; they must
    live on the transformer's device.
    """
    B = text.batch
    if stream == "per-image" and len(generators) != B:
        raise InvalidInputError(f"{B} images need {B} generators, got {len(generators)}")
    if stream == "batch" and len(generators) != 1:
        raise InvalidInputError("the batch stream takes exactly one generator")
    scales = tuple(scales)
    cfgs, taus = params.per_scale(len(scales))
    guided = any(c != 1.0 for c in cfgs)
    dev = transformer.device
    d = transformer.cfg.bits

    both = TextCond.cat([text, transformer.null_text(text)]) if guided else text
    cache = transformer.new_cache(both.to(dev), scales)
    acc = vae.new_accumulator(scales, batch=B)
    x_Bld: Tensor | None = None
    for si, (t, h, w) in enumerate(scales):
        l = t * h * w
        logits = transformer.forward_scale(cache, x_Bld)
        if guided:
            logits = cfg_mix(logits[:B], logits[B:], cfgs[si], taus[si])
        else:
            logits = logits / taus[si]
        p1_Bld = bit_one_probability(logits.view(B, l, d, 2), top_k=params.top_k, top_p=params.top_p)
        if stream == "per-image":
            u_Bld = torch.stack([torch.rand((l, d), generator=g, device=dev) for g in generators])
            bits_Bld = (u_Bld < p1_Bld).to(torch.int64)
        else:
            probs = torch.stack([1 - p1_Bld, p1_Bld], dim=-1).view(-1, 2)
            bits_Bld = torch.multinomial(probs, 1, replacement=True, generator=generators[0]).view(B, l, d)
        nxt = acc.add(bits_Bld)
        if nxt is not None:
            x_Bld = torch.cat([nxt, nxt]) if guided else nxt
        if on_scale is not None:
            on_scale(si)
    # One image at a time: convolution kernels chosen for another batch size round differently,
    # and an image must not depend on its batch.
    feats = acc.summed_Bd1HW.to(vae.dtype)
    img = torch.cat([vae.decode(feats[i : i + 1]) for i in range(B)])
    # Truncation (not rounding) to uint8, as the official pipeline writes its images.
    return ((img.float() + 1) * 127.5).clamp(0, 255).to(torch.uint8)
