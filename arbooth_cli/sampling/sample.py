"""KV-cached next-scale sampling with classifier-free guidance batched into one pass.

Random streams: with ``stream="per-image"`` (the default) every image draws its bits from its own
generator, one uniform draw per bit and scale, so an image depends only on its seed and settings,
not on its batch or its place in it. ``stream="batch"`` draws one ``torch.multinomial`` per scale over
the whole batch from a single generator, the order the official Infinity sampler uses, so the same
generator state reproduces its images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import prune_problems
from ..errors import InvalidInputError
from ..models.bsq_vae import BSQVAE
from ..models.pruning import PrunePlan, plan_pruning
from ..models.text_encoder import TextCond
from ..models.transformer import (
    EAGER_OPS,
    BlockOps,
    InfinityTransformer,
    KVCache,
    Scale,
    ScaleGraphs,
    attention_op,
    compiled_block_ops,
)
from .filters import bit_probabilities, cfg_mix

Stream = Literal["per-image", "batch"]


@dataclass(frozen=True)
class SamplingParams:
    """How bits are drawn. ``cfg`` and ``tau`` are one value or one per scale."""

    cfg: float | tuple[float, ...] = 3.0
    tau: float | tuple[float, ...] = 0.5
    top_k: int = 0
    top_p: float = 0.97
    #: the last N scales are not sampled: the image is decoded from the codes of the others, which
    #: the accumulator already holds at the final size (FastVAR's scale skipping; 0: exact)
    skip_scales: int = 0
    #: guidance on the scales before this one only; later scales sample the conditional branch
    #: alone and do not compute the unconditional one (Switti's guidance cut-off; None: every scale)
    cfg_until_scale: int | None = None
    #: (scale index, share of its tokens removed): FastVAR's token pruning with the refill of the
    #: pruned tokens (see :mod:`arbooth_cli.models.pruning`; empty: every token)
    prune: tuple[tuple[int, float], ...] = ()

    def per_scale(self, n: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        def expand(v: float | tuple[float, ...], what: str) -> tuple[float, ...]:
            if isinstance(v, (int, float)):
                return (float(v),) * n
            if len(v) != n:
                raise InvalidInputError(f"{what} has {len(v)} values but the schedule has {n} scales")
            return tuple(float(x) for x in v)

        if not 0 <= self.skip_scales < n:
            raise InvalidInputError(f"--skip-scales {self.skip_scales}: the schedule has {n} scales, so it must be "
                                    f"in 0..{n - 1}")
        if self.cfg_until_scale is not None and not 1 <= self.cfg_until_scale <= n:
            raise InvalidInputError(f"--cfg-until-scale {self.cfg_until_scale}: the schedule has {n} scales, so it "
                                    f"must be in 1..{n} ({n}: every scale)")
        problems = prune_problems(self.prune, n)
        if problems:
            raise InvalidInputError(problems[0])
        cfgs = expand(self.cfg, "cfg")
        if self.cfg_until_scale is not None:
            cfgs = cfgs[: self.cfg_until_scale] + (1.0,) * (n - self.cfg_until_scale)
        return cfgs, expand(self.tau, "tau")

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


@dataclass(eq=False)
class SamplingEngine:
    """Speed-ups for repeated :func:`sample_images` calls on a CUDA device. Create one per model and
    pass it to every call: it keeps compiled code, CUDA graphs and their buffers between calls. On
    a CPU device it changes nothing. Results differ from the plain path by float rounding only.

    ``cuda_graphs``: replay each scale of the transformer as a CUDA graph. Captured on the first
    call of a (model, batch size, text width, schedule); one capture is kept and a call of another
    shape replaces it. Re-create the engine after replacing the model's parameters or modules.
    ``compile``: ``torch.compile`` the element-wise stages of the blocks (fused kernels) and the
    VAE decoder (fused GroupNorm + swish; eagerly GroupNorm at batch 1 parallelises badly). The
    first call of a process compiles them (infinity-2b at 1024x1024 on an H200 host: about 50 s
    with cold caches, 30 s with inductor's on-disk cache warm); a new batch size or image size
    recompiles once. ``attention``: SDPA backend preference, "auto" (PyTorch's),
    "cudnn" or "flash". ``text_bucket``: with graphs, text is padded (masked) to a multiple of
    this many tokens so that prompts of different lengths share one capture.
    """

    cuda_graphs: bool = True
    compile: bool = True
    attention: str = "auto"
    text_bucket: int = 64
    _ops: BlockOps | None = field(default=None, init=False, repr=False)
    _graphs: ScaleGraphs | None = field(default=None, init=False, repr=False)
    # (the decoder module, its compiled form)
    _decoder: tuple[torch.nn.Module, Callable[[Tensor], Tensor]] | None = field(
        default=None, init=False, repr=False
    )

    def ops(self, device: torch.device) -> BlockOps:
        if device.type != "cuda":
            return EAGER_OPS
        if self._ops is None:
            if self.compile:
                self._ops = compiled_block_ops(self.attention)
            else:
                self._ops = EAGER_OPS._replace(attend=attention_op(self.attention))
        return self._ops

    def release(self) -> None:
        """Free the captured graphs and their buffers."""
        self._graphs = None

    def decode(self, vae: BSQVAE, feats: Tensor) -> Tensor:
        """:meth:`BSQVAE.decode`, through a compiled decoder when ``compile`` and on CUDA."""
        if not (self.compile and vae.device.type == "cuda"):
            return vae.decode(feats)
        if self._decoder is None or self._decoder[0] is not vae.decoder:
            self._decoder = (vae.decoder, torch.compile(vae.decoder))
        return vae.decode(feats, decoder=self._decoder[1])

    def scale_runner(
        self, transformer: InfinityTransformer, text: TextCond, scales: tuple[Scale, ...],
        shed: tuple[int, int] | None = None, prune: PrunePlan | None = None,
    ) -> Callable[[Tensor | None], Tensor]:
        """``forward_scale`` of a new pass over ``scales`` for ``text`` (on the model's device);
        ``shed = (k, n)``: scales from k on run the first n rows only (a guided pass drops its
        unconditional rows); ``prune``: token pruning of the large scales."""
        dev = transformer.device
        ops = self.ops(dev)
        if not (self.cuda_graphs and dev.type == "cuda"):
            return _EagerRunner(transformer, transformer.new_cache(text, scales, ops=ops, prune=prune), shed)
        T = text.feats_BTC.shape[1]
        if self.text_bucket > 0 and T % self.text_bucket:
            T += self.text_bucket - T % self.text_bucket
            text = TextCond(F.pad(text.feats_BTC, (0, 0, 0, T - text.feats_BTC.shape[1])), text.lens_B)
        cond = transformer.condition(text)
        if self._graphs is None or not self._graphs.matches(transformer, cond.batch, T, scales, ops, shed, prune):
            # the old capture (its key/value buffers and graph memory) is freed before the new one
            # is made: no reference to it may outlive this line, or both are held at once
            self._graphs = None
            self._graphs = ScaleGraphs(transformer, cond.batch, T, scales, ops=ops, shed=shed, prune=prune)
        self._graphs.start(cond)
        return self._graphs.forward_scale


class _EagerRunner:
    """``forward_scale`` of one pass; with ``shed = (k, n)``, scales from k on run the first n
    batch rows of the cache only (the conditional branch of a guided pass)."""

    def __init__(self, transformer: InfinityTransformer, cache: KVCache, shed: tuple[int, int] | None) -> None:
        self.transformer, self.cache, self.shed = transformer, cache, shed

    def __call__(self, x_Bld: Tensor | None) -> Tensor:
        if self.shed is not None and self.cache.next_scale == self.shed[0]:
            self.cache = self.cache.rows(self.shed[1])
        return self.transformer.forward_scale(self.cache, x_Bld)


@dataclass
class TokenMaps:
    """What one pass of the sampler drew, for a batch of B prompts.

    ``bits_per_scale``: K tensors (B, l_s, d) int64. ``summed_Bd1HW``: the accumulated code
    features the tokenizer decodes. ``logits_BLV``: with ``keep_logits``, the raw transformer
    logits of the conditional branch at every token (before guidance, temperature and filters),
    float32 on the model's device.
    """

    bits_per_scale: list[Tensor]
    summed_Bd1HW: Tensor
    logits_BLV: Tensor | None = None


@torch.no_grad()
def sample_token_maps(
    transformer: InfinityTransformer,
    vae: BSQVAE,
    text: TextCond,
    scales: Sequence[Scale],
    params: SamplingParams,
    generators: Sequence[torch.Generator],
    *,
    stream: Stream = "per-image",
    on_scale: Callable[[int], None] | None = None,
    engine: SamplingEngine | None = None,
    keep_logits: bool = False,
    edit_bits: Callable[[int, Tensor], Tensor] | None = None,
) -> TokenMaps:
    """Draw one multi-scale token map per prompt of ``text`` (see :func:`sample_images`).

    ``edit_bits(scale_index, bits_Bld) -> bits_Bld``: replaces the bits just drawn at a scale before
    they are accumulated, so the later scales continue from the edited state (the noise analysis of
    ``arbooth inspect``). It must not draw from ``generators``: the later scales then get exactly
    the draws they would have got without the edit.
    """
    B = text.batch
    if stream == "per-image" and len(generators) != B:
        raise InvalidInputError(f"{B} images need {B} generators, got {len(generators)}")
    if stream == "batch" and len(generators) != 1:
        raise InvalidInputError("the batch stream takes exactly one generator")
    scales = tuple(tuple(int(v) for v in s) for s in scales)
    cfgs, taus = params.per_scale(len(scales))
    guided = any(c != 1.0 for c in cfgs)
    dev = transformer.device
    d = transformer.cfg.bits

    both = (TextCond.cat([text, transformer.null_text(text)]) if guided else text).to(dev)
    drawn = len(scales) - params.skip_scales
    # from the first scale after which guidance is 1 (cfg * cond + (1 - cfg) * uncond = cond), the
    # unconditional rows are not computed at all
    unguided_from = next((i for i in range(drawn) if all(c == 1.0 for c in cfgs[i:drawn])), drawn)
    shed = (unguided_from, B) if guided and unguided_from < drawn else None
    prune = plan_pruning(scales, params.prune, transformer.cfg.depth) if params.prune else None
    if engine is None:
        forward_scale: Callable[[Tensor | None], Tensor] = _EagerRunner(
            transformer, transformer.new_cache(both, scales, prune=prune), shed)
    else:
        forward_scale = engine.scale_runner(transformer, both, scales, shed, prune)
    acc = vae.new_accumulator(scales, batch=B)
    x_Bld: Tensor | None = None
    bits: list[Tensor] = []
    kept: list[Tensor] = []
    for si, (t, h, w) in enumerate(scales[:drawn]):
        l = t * h * w
        raw = forward_scale(x_Bld)
        if keep_logits:
            kept.append(raw[:B].clone())  # a graph replay reuses its output buffer
        two = guided and si < unguided_from
        if two:
            logits = cfg_mix(raw[:B], raw[B:], cfgs[si], taus[si])
        else:
            logits = raw[:B] / taus[si]
        probs_Bld2 = bit_probabilities(logits.view(B, l, d, 2), top_k=params.top_k, top_p=params.top_p)
        if stream == "per-image":
            u_Bld = torch.stack([torch.rand((l, d), generator=g, device=dev) for g in generators])
            bits_Bld = (u_Bld < probs_Bld2[..., 1]).to(torch.int64)
        else:  # the official draw: one multinomial over every bit of the batch, softmax probabilities
            bits_Bld = torch.multinomial(probs_Bld2.view(-1, 2), 1, replacement=True,
                                         generator=generators[0]).view(B, l, d)
        if edit_bits is not None:
            bits_Bld = edit_bits(si, bits_Bld)
        bits.append(bits_Bld)
        nxt = acc.add(bits_Bld)
        if nxt is not None:
            x_Bld = torch.cat([nxt, nxt]) if guided and si + 1 < unguided_from else nxt
        if on_scale is not None:
            on_scale(si)
    return TokenMaps(bits, acc.summed_Bd1HW, torch.cat(kept, dim=1) if keep_logits else None)


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
    engine: SamplingEngine | None = None,
) -> Tensor:
    """Sample one image per prompt of ``text``; returns ``img_B3HW`` as uint8 RGB.

    ``generators``: one per image for ``stream="per-image"``, exactly one for ``"batch"``; they must
    live on the transformer's device. ``engine``: CUDA graphs / compiled stages kept between calls
    (see :class:`SamplingEngine`); None runs the plain eager path.
    """
    maps = sample_token_maps(transformer, vae, text, scales, params, generators, stream=stream,
                             on_scale=on_scale, engine=engine)
    # The key/value cache is gone by now (a lower peak for the decode).
    feats = maps.summed_Bd1HW
    del maps
    return decode_images(vae, feats, engine=engine)


def guided_images_that_fit(transformer: InfinityTransformer, scales: Sequence[Scale], device: torch.device,
                           share: float) -> int:
    """How many guided images' key/value caches fit in ``share`` of the GPU's free memory (two
    sequences an image: the conditional and the unconditional row)."""
    per_image = 2 * transformer.kv_cache_bytes(scales)
    free, _ = torch.cuda.mem_get_info(device)
    return int(free * share) // per_image


@torch.no_grad()
def decode_images(vae: BSQVAE, summed_Bd1HW: Tensor, *, engine: SamplingEngine | None = None) -> Tensor:
    """Accumulated code features -> ``img_B3HW`` uint8 RGB."""
    feats = summed_Bd1HW.to(vae.dtype)
    decode = vae.decode if engine is None else partial(engine.decode, vae)
    # One image at a time: convolution kernels chosen for another batch size round differently,
    # and an image must not depend on its batch.
    img = torch.cat([decode(feats[i : i + 1]) for i in range(feats.shape[0])])
    # Truncation (not rounding) to uint8, as the official pipeline writes its images.
    return ((img.float() + 1) * 127.5).clamp(0, 255).to(torch.uint8)
