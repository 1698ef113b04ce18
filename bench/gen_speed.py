"""Benchmark: `arbooth gen` sampling speed and peak GPU memory with random weights of the real size.

    python bench/gen_speed.py --models infinity-2b,infinity-8b --batches 1,8 --out gen_speed.json
    python bench/gen_speed.py --variants exact,cfg-until:9,skip:1,skip:2,cfg-until:9+skip:1 --engines graphs+compile

``--variants`` times the training-free speed-ups of `arbooth gen` against exact sampling (each
``name:value`` joined by ``+``: ``cfg-until:K`` is ``--cfg-until-scale K``, ``skip:N`` is
``--skip-scales N``, ``prune:S:R/S:R`` is ``--prune S:R,S:R``) and, at the first batch size, how far each strays from exact sampling with
the same seeds: per scale, the share of bits drawn identically, and the mean absolute difference
of the decoded images (0-255). With random weights these say how the code behaves, not how a
trained model's images look.

Times ``sample_images`` end to end from text features to decoded uint8 images (KV-cached
next-scale sampling with CFG in one batched pass, top-p 0.97, the VAE decode included), at 1024x1024
(13 scales), after warm-up runs; the text encoder is not on the GPU. ``--engines`` lists the
:class:`SamplingEngine` settings to time (plain: none; graphs: CUDA graphs; compile: compiled
stages and decoder; graphs+compile: both), each with a fresh engine per batch size;
the first call's time (capture / compilation included) is reported apart. Peak memory is
``torch.cuda.max_memory_allocated`` over the timed runs (and ``max_memory_reserved``, which also
counts the memory of CUDA-graph pools). Separately times the flan-t5-xl encoder (random weights,
fp16) on one prompt padded to 512 tokens, as the official pipeline pads.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from arbooth_cli.config import parse_prune  # noqa: E402
from arbooth_cli.models.build import build_transformer, build_vae, transformer_tensor_shapes, vae_tensor_shapes  # noqa: E402
from arbooth_cli.models.schedules import get_schedule  # noqa: E402
from arbooth_cli.models.text_encoder import TextCond  # noqa: E402
from arbooth_cli.registry import get_spec  # noqa: E402
from arbooth_cli.sampling.sample import SamplingEngine, SamplingParams, sample_images  # noqa: E402


class RandomWeights(Mapping):
    """Random tensors of the given shapes, made on the GPU when asked for (no files, no host copy)."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], device: torch.device, seed: int = 0) -> None:
        self.shapes, self.device, self.seed = shapes, device, seed

    def __getitem__(self, name: str) -> torch.Tensor:
        shape = self.shapes[name]
        g = torch.Generator(device=self.device).manual_seed(self.seed + hash(name) % 100_000)
        if name.endswith("scale_mul_1H11"):
            return torch.full(shape, math.log(4.0), device=self.device)
        if len(shape) == 1 and "norm" in name and name.endswith("weight"):
            return torch.ones(shape, device=self.device)
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
        std = 0.02 if len(shape) <= 1 else 1 / math.sqrt(fan_in)
        return torch.randn(shape, generator=g, device=self.device) * std

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def make_engine(kind: str, attention: str) -> SamplingEngine | None:
    if kind == "plain":
        return None
    return SamplingEngine(cuda_graphs="graphs" in kind, compile="compile" in kind, attention=attention)


def parse_variant(text: str) -> dict:
    """``cfg-until:9+skip:1+prune:9:0.4/10:0.5`` -> SamplingParams fields; ``exact`` -> {}."""
    if text == "exact":
        return {}
    out: dict = {}
    for part in text.split("+"):
        key, _, value = part.partition(":")
        if key == "prune":  # S:R/S:R, as --prune's S:R,S:R (commas separate the variants)
            out["prune"] = parse_prune(value.replace("/", ","))
            continue
        field = {"cfg-until": "cfg_until_scale", "skip": "skip_scales"}.get(key)
        if field is None or not value.isdigit():
            raise ValueError(f"variant part {part!r}: use cfg-until:K, skip:N or prune:S:R/S:R")
        out[field] = int(value)
    return out


def agreement(tr, vae, text, scales, exact: SamplingParams, fast: SamplingParams, dev, engine) -> dict:
    """Per scale, the share of bits the fast settings draw as exact sampling does (same seeds), and
    the mean absolute difference of the decoded images."""
    from arbooth_cli.sampling.sample import decode_images, sample_token_maps

    B = text.batch
    maps = [sample_token_maps(tr, vae, text, scales, p, [torch.Generator(device=dev).manual_seed(i) for i in range(B)],
                              engine=engine) for p in (exact, fast)]
    same = [round(float((a == b).float().mean()), 4) for a, b in zip(maps[0].bits_per_scale, maps[1].bits_per_scale)]
    imgs = [decode_images(vae, m.summed_Bd1HW, engine=engine).float() for m in maps]
    out = {"bits_identical_per_scale": same, "image_mean_abs_diff": round(float((imgs[0] - imgs[1]).abs().mean()), 3)}
    if engine is not None and engine.cuda_graphs and not engine.compile and engine.attention == "auto":
        # the CUDA-graph path of the fast settings against their eager path: the same kernels, so
        # every bit should match
        eager = sample_token_maps(tr, vae, text, scales, fast,
                                  [torch.Generator(device=dev).manual_seed(i) for i in range(B)])
        out["graphs_vs_eager_bits_identical"] = [round(float((a == b).float().mean()), 4)
                                                 for a, b in zip(eager.bits_per_scale, maps[1].bits_per_scale)]
    return out


def bench_model(name: str, batches: list[int], repeats: int, cfg: float, dev: torch.device,
                engines: list[str], attention: str = "auto", variants: tuple[str, ...] = ("exact",)) -> dict:
    spec = get_spec(name)
    tr = build_transformer(spec.transformer, device=dev, dtype=torch.bfloat16,
                           weights=RandomWeights(transformer_tensor_shapes(spec.transformer), dev))
    vae = build_vae(spec.vae, device=dev, dtype=torch.bfloat16, weights=RandomWeights(vae_tensor_shapes(spec.vae), dev))
    scales = get_schedule("1M", 1.0).scales
    exact = SamplingParams(cfg=cfg, tau=spec.sampling.tau, top_p=0.97)
    out = {"params_B": round(sum(p.numel() for p in tr.parameters()) / 1e9, 3), "engines": {}}
    for engine, variant, B in [(e, v, b) for e in engines for v in variants for b in batches]:
        params = SamplingParams(cfg=cfg, tau=spec.sampling.tau, top_p=0.97, **parse_variant(variant))
        g = torch.Generator(device=dev).manual_seed(0)
        lens = torch.full((B,), 24, dtype=torch.long, device=dev)
        feats = torch.randn(B, 24, spec.transformer.text_channels, generator=g, device=dev)
        text = TextCond(feats, lens)
        gens = [torch.Generator(device=dev).manual_seed(i) for i in range(B)]
        eng = make_engine(engine, attention)
        first = None
        for _ in range(2):  # warm-up (the first call captures / compiles)
            sync()
            t0 = time.perf_counter()
            sample_images(tr, vae, text, scales, params, gens, engine=eng)
            sync()
            first = first if first is not None else time.perf_counter() - t0
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            img = sample_images(tr, vae, text, scales, params, gens, engine=eng)
            sync()
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        res = out["engines"].setdefault(engine, {}).setdefault(variant, {})
        res[B] = {
            "times_s": [round(t, 4) for t in times], "median_s": round(med, 4),
            "s_per_image": round(med / B, 4), "images_per_s": round(B / med, 2), "first_call_s": round(first, 3),
            "peak_GiB": round(torch.cuda.max_memory_allocated() / 2**30, 2) if dev.type == "cuda" else None,
            "peak_reserved_GiB": round(torch.cuda.max_memory_reserved() / 2**30, 2) if dev.type == "cuda" else None,
            "image": list(img.shape),
        }
        if variant != "exact" and B == batches[0]:
            res[B]["vs_exact"] = agreement(tr, vae, text, scales, exact, params, dev, eng)
        del eng
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        print(name, engine, variant, B, res[B], flush=True)
    del tr, vae
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return out


def bench_t5(dev: torch.device, repeats: int) -> dict:
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(vocab_size=32128, d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_heads=32,
                   feed_forward_proj="gated-gelu", is_encoder_decoder=False)
    with torch.device(dev):
        model = T5EncoderModel(cfg).to(torch.float16).eval()
    ids = torch.randint(0, 32000, (1, 512), device=dev)
    mask = torch.zeros(1, 512, dtype=torch.long, device=dev)
    mask[:, :24] = 1
    with torch.no_grad():
        for _ in range(2):
            model(input_ids=ids, attention_mask=mask)
        times = []
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            model(input_ids=ids, attention_mask=mask)
            sync()
            times.append(time.perf_counter() - t0)
    return {"params_B": round(sum(p.numel() for p in model.parameters()) / 1e9, 3),
            "median_s": round(statistics.median(times), 4), "padded_len": 512}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="infinity-2b")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--t5", action="store_true", help="also time the flan-t5-xl encoder")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--engines", default="plain,graphs+compile",
                    help="comma-separated, each plain, graphs, compile or graphs+compile")
    ap.add_argument("--attention", default="auto", choices=["auto", "cudnn", "flash"])
    ap.add_argument("--variants", default="exact", help="comma-separated: exact, or cfg-until:K / skip:N / prune:S:R/S:R joined by +")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    for v in args.variants.split(","):
        try:
            parse_variant(v)
        except ValueError as exc:
            ap.error(str(exc))
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
    engines = args.engines.split(",")
    for e in engines:
        if e not in ("plain", "graphs", "compile", "graphs+compile"):
            ap.error(f"unknown engine {e}")
    res = {"device": name, "torch": torch.__version__, "attention": args.attention, "models": {}}
    for name in args.models.split(","):
        batches = [int(b) for b in args.batches.split(",")]
        res["models"][name] = bench_model(name, batches, args.repeats, args.cfg, dev, engines, args.attention,
                                          tuple(args.variants.split(",")))
    if args.t5:
        res["t5_xl_encoder_fp16"] = bench_t5(dev, args.repeats)
        print("t5", res["t5_xl_encoder_fp16"], flush=True)
    if args.out:
        args.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
