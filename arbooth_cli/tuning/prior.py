"""The prior pool: class-prompt token maps of the frozen model, drawn before any weight changes.

The pool replaces the official code's second, frozen copy of the transformer: the KV-cached
sampler draws the class-prompt token maps that the teacher would draw, and keeps the teacher's
logits at every token on the way (the sampler computes them anyway). They wait in host memory
(and in the run folder, for resuming) until their step, so the distillation target is the same
KL(teacher || student) on teacher-drawn tokens with only one copy of the weights on the GPU.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..atomic import raise_if_disk_full, write_file_atomic
from ..checkpoint_io import write_safetensors
from ..config import TuneConfig
from ..errors import ResourceError
from ..models.bsq_vae import BSQVAE
from ..models.text_encoder import TextCond
from ..models.transformer import InfinityTransformer, Scale
from ..subjects.words import class_prompt_of, fill

POOL_FILE = "prior-pool.safetensors"


@dataclass
class PriorPool:
    """Class-prompt token maps of the frozen model: bits (N, L, d) uint8, the teacher's raw
    logits (N, L, V) bf16 and which class prompt each sample drew (N,) int64, on the host."""

    bits_NLd: Tensor
    logits_NLV: Tensor
    prompt_N: Tensor
    #: samples drawn so far (the first ``done`` rows); less than N for a pool cut short by Ctrl-C
    done: int = -1

    def __post_init__(self) -> None:
        if self.done < 0:
            self.done = len(self)

    def __len__(self) -> int:
        return self.bits_NLd.shape[0]

    @property
    def complete(self) -> bool:
        return self.done == len(self)


def pool_key(config: TuneConfig, model_hash: str, scales: tuple[Scale, ...], n: int,
             class_prompts: Sequence[str], numerics: str = "") -> str:
    """A digest of everything that determines a pool: equal keys, equal pools. ``numerics``: what
    changes the float rounding of the teacher (device type, dtype, compiled kernels)."""
    data = {"model_hash": model_hash, "seed": config.seed, "n": n, "scales": scales,
            "class_prompts": list(class_prompts), "tau": config.prior_tau, "top_p": config.prior_top_p,
            "numerics": numerics}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prior_class_prompts(config: TuneConfig, captions: Sequence[str]) -> list[str]:
    """The prompts of the prior samples: ``--class-prompt`` if given, else each caption with the
    subject's token taken out, in caption order without repeats. For the default caption that is
    the official code's one prompt, "a photo of {cls}"; for per-photo captions ("a large sks star
    on the left, green background") it is the class-prompt counterpart of each, as DreamBooth
    pairs instance and class prompts, so the prior holds the class under the same wording."""
    if config.class_prompt is not None:
        return [fill(config.class_prompt, token=config.token, cls=config.cls)]
    return list(dict.fromkeys(class_prompt_of(cap, config.token, config.cls) for cap in captions))


#: key/value cache memory the prior pool's sampling may use at once (the optimizer state does not
#: exist yet at that point)
POOL_KV_BUDGET = 14 * 2**30
#: --memory low: the pool stays below a training step's own peak (infinity-2b: two samples at once)
POOL_KV_BUDGET_LOW = 6 * 2**30
#: what sampling needs besides the cache (activations of the largest scale, logits, the decoder)
POOL_MARGIN = 2 * 2**30
#: pools at least this big are sampled with compiled stages (when --compile allows)
POOL_COMPILE_MIN = 300


def pool_batch(transformer: InfinityTransformer, scales: tuple[Scale, ...], memory: str,
               free: int | None = None) -> int:
    """Samples drawn together for the prior pool on this device (see :func:`pool_batch_size`);
    ``free``: the GPU memory the run may use (default: the device's free memory)."""
    dev = transformer.device
    if dev.type != "cuda":
        return 4
    if free is None:
        free, _ = torch.cuda.mem_get_info(dev)
    return pool_batch_size(transformer.kv_cache_bytes(scales), memory, free)


def pool_batch_size(per_sample: int, memory: str, free: int) -> int:
    """As many samples as the key/value budget (``memory`` low: the smaller one) and the free
    memory less a margin hold, at least 1, at most 32. GPU sampling is not batch-invariant to the
    last bit, so the pool's key records the batch it was drawn with."""
    budget = min(POOL_KV_BUDGET_LOW if memory == "low" else POOL_KV_BUDGET, free - POOL_MARGIN)
    return max(1, min(32, budget // per_sample))


def sample_prior_pool(transformer: InfinityTransformer, vae: BSQVAE, texts: Sequence[TextCond],
                      scales: tuple[Scale, ...], n: int, *, seed: int, tau: float, top_p: float, batch: int,
                      compile: bool = False, on_progress: Callable[[int, int], None] | None = None,
                      start_from: PriorPool | None = None, stop: Callable[[], bool] | None = None) -> PriorPool:
    """``n`` samples of the one-prompt ``texts`` in turn (sample i: prompt i mod P), each drawn
    from its own generator (seed + i), so the pool does not depend on being drawn in several
    goes, nor (up to GPU kernels' last-bit rounding) on the batch size it was drawn with:
    ``start_from`` (a pool cut short) gives its samples and drawing goes on after them;
    ``stop()`` true after a batch ends drawing early (the pool's ``done`` says how far it got)."""
    from ..sampling.sample import SamplingEngine, SamplingParams, sample_token_maps

    dev = transformer.device
    engine = SamplingEngine(compile=compile) if dev.type == "cuda" else None
    params = SamplingParams(cfg=1.0, tau=tau, top_k=0, top_p=top_p)
    L = sum(math.prod(s) for s in scales)
    d, V = transformer.cfg.bits, transformer.cfg.vocab
    bits = torch.empty((n, L, d), dtype=torch.uint8, pin_memory=dev.type == "cuda")
    logits = torch.empty((n, L, V), dtype=torch.bfloat16, pin_memory=dev.type == "cuda")
    prompt_N = torch.arange(n) % len(texts)
    first = 0
    if start_from is not None:
        first = start_from.done
        bits[:first].copy_(start_from.bits_NLd[:first])
        logits[:first].copy_(start_from.logits_NLV[:first])
    done = first
    was_training = transformer.training
    transformer.eval()
    try:
        for start in range(first, n, batch):
            if stop is not None and done > first and stop():
                break
            b = min(batch, n - start)
            gens = [torch.Generator(device=dev).manual_seed(seed + start + i) for i in range(b)]
            text = TextCond.cat([texts[int(k)] for k in prompt_N[start:start + b]])
            maps = sample_token_maps(transformer, vae, text, scales, params, gens, engine=engine,
                                     keep_logits=True)
            bits[start:start + b].copy_(torch.cat(maps.bits_per_scale, dim=1).to(torch.uint8), non_blocking=True)
            assert maps.logits_BLV is not None
            logits[start:start + b].copy_(maps.logits_BLV.to(torch.bfloat16), non_blocking=True)
            del maps  # not held while the next batch samples
            done = start + b
            if on_progress:
                on_progress(done, n)
    finally:
        transformer.train(was_training)
        if engine is not None:
            engine.release()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return PriorPool(bits, logits, prompt_N, done)


def inputs_from_bits(vae: BSQVAE, bits_BLd: Tensor, scales: tuple[Scale, ...]) -> Tensor:
    """The teacher-forcing inputs (B, L - 1, d) of sampled bits: what the sampler fed each scale."""
    from ..models.bsq_vae import CodeAccumulator

    B = bits_BLd.shape[0]
    acc = CodeAccumulator(scales, patchify=vae.cfg.spatial_patchify, bits=vae.cfg.bits, batch=B, device=bits_BLd.device)
    inputs = []
    start = 0
    for s in scales:
        l = math.prod(s)
        nxt = acc.add(bits_BLd[:, start:start + l].long())
        start += l
        if nxt is not None:
            inputs.append(nxt)
    return torch.cat(inputs, dim=1) if inputs else bits_BLd.new_zeros((B, 0, bits_BLd.shape[-1]), dtype=torch.float32)


def save_pool(path: Path, pool: PriorPool, key: str, info: dict[str, str] | None = None) -> None:
    """Write ``pool`` (its samples drawn so far) with its :func:`pool_key` (atomically); ``info``:
    more metadata (what :class:`PoolStore` lists)."""
    k = pool.done

    def write(tmp: Path) -> None:
        write_safetensors(tmp, {"bits": pool.bits_NLd[:k], "logits": pool.logits_NLV[:k], "prompt": pool.prompt_N},
                          {**(info or {}), "key": key, "done": str(k)})

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise_if_disk_full(exc)
        raise ResourceError(f"cannot write to {path.parent}: {exc.strerror or exc}") from None
    write_file_atomic(path, write)


def load_pool(path: Path, key: str) -> PriorPool | None:
    """The pool stored at ``path`` if it was drawn with the same :func:`pool_key` (perhaps cut
    short: see ``done``), else None."""
    if not path.is_file():
        return None
    from safetensors import SafetensorError, safe_open

    from ..errors import CheckpointError

    try:
        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("key") != key:
                return None
            bits, logits, prompt_N = f.get_tensor("bits"), f.get_tensor("logits"), f.get_tensor("prompt")
    except SafetensorError as exc:  # a damaged cache file (also one lacking a tensor)
        first = str(exc).splitlines()[0] if str(exc) else "corrupt"
        raise CheckpointError(f"{path} is not a readable prior pool: {first}",
                              hint="delete it: the pool is drawn again") from None
    done, n = bits.shape[0], prompt_N.shape[0]
    if done < n:  # cut short: room for the rest
        bits = torch.cat([bits, bits.new_zeros((n - done, *bits.shape[1:]))])
        logits = torch.cat([logits, logits.new_zeros((n - done, *logits.shape[1:]))])
    return PriorPool(bits, logits, prompt_N, done)
