#!/usr/bin/env python
"""Numerical parity of arbooth's Infinity core with the official FoundationVision/Infinity code.

Builds the official modules and ours on the same random weights (ours load the official modules'
state dicts through arbooth's strict loader) and compares, in float32 on the CPU:

* scale schedules of every aspect-ratio template and size, and the 2D RoPE tables (exact);
* the BSQ tokenizer (d32, and d56 with spatial patchify): encoder features, decode, bit labels
  (exact) and teacher-forcing inputs of the official ``BitwiseSelfCorrection.flip_requant``;
* the transformer at three widths: teacher-forced logits of the official ``forward`` and the
  per-scale logits of the official KV-cached sampler ``autoregressive_infer_cfg`` (with and
  without classifier-free guidance), whose sampled bits are fed back into arbooth's cached path;
* with ``--fastvar``: token pruning (``gen --prune``) against the Infinity fork released with
  FastVAR (csguoh/FastVAR, folder ``Infinity/``): its KV-cached sampler on a depth-32 model over
  the 13 scales of 1M 1:1 (it skips the last two, prunes 32x32 and 40x40 in blocks 3..27), its
  sampled bits fed into arbooth's cached path with ``plan_pruning``.

The official code never enters this repository: pass the path of a checkout you made. It needs a
scratch virtualenv in which it imports (see docs/parity.md). This harness provides the
``flash_attn`` module it imports unconditionally (SDPA-based), disables its bf16 cast in
cross-attention (by giving ``infinity.models.basic`` a ``torch`` whose ``bfloat16`` is float32:
no file is edited) and runs the eager original of its ``torch.compile``d fused AdaLN norm
(``fused_norm=True``, the inference flag). The FastVAR fork gets the same, plus empty ``cv2`` and
``matplotlib`` modules where those are not installed (it imports them for plotting only).

    python tools/parity_infinity.py --official /path/to/Infinity [--json out.json] [--only NAME]
    python tools/parity_infinity.py --fastvar /path/to/FastVAR [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from arbooth_cli.models import bsq_vae as ours_vae  # noqa: E402
from arbooth_cli.models.build import build_transformer, build_vae, transformer_tensor_shapes  # noqa: E402
from arbooth_cli.models.pruning import plan_pruning  # noqa: E402
from arbooth_cli.models.schedules import SIZE_SCALES, TEMPLATES, get_schedule  # noqa: E402
from arbooth_cli.models.text_encoder import TextCond  # noqa: E402
from arbooth_cli.models.transformer import rope_tables  # noqa: E402
from arbooth_cli.registry import TransformerConfig, VAEConfig  # noqa: E402
from arbooth_cli.sampling.sample import SamplingParams, sample_images  # noqa: E402

RESULTS: list[dict] = []
OFFICIAL_CHECKS = ("schedules", "tiny", "2b", "8b")


def record(check: str, what: str, value: float | bool, limit: float | None = None, exact: bool = False,
           at_least: float | None = None) -> None:
    """``at_least``: a control that must differ (value >= at_least) rather than agree."""
    if exact:
        ok = bool(value)
    elif at_least is not None:
        ok = float(value) >= at_least
    else:
        ok = limit is None or float(value) <= limit
    shown_limit = "exact" if exact else (f">= {at_least:g}" if at_least is not None else limit)
    RESULTS.append({"check": check, "what": what, "value": value, "limit": shown_limit, "ok": ok})
    shown = ("equal" if value else "DIFFERENT") if exact else f"{float(value):.3e}"
    print(f"  [{'ok' if ok else 'FAIL'}] {check:24s} {what:52s} {shown}", flush=True)


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """max |a - ref| / max |ref|."""
    a, ref = a.detach().double(), ref.detach().double()
    return float((a - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


# ---------------------------------------------------------------------------------------------
# the official code, made importable and fp32 on a CPU
# ---------------------------------------------------------------------------------------------


def _sdpa_flash_attn_module() -> types.ModuleType:
    mod = types.ModuleType("flash_attn")

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, **_):  # BLHc
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=softmax_scale, is_causal=causal)
        return o.transpose(1, 2)

    def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0, softmax_scale=None, **_):
        outs = []
        for i in range(len(cu_seqlens_q) - 1):
            qi = q[cu_seqlens_q[i] : cu_seqlens_q[i + 1]].transpose(0, 1)
            kvi = kv[cu_seqlens_k[i] : cu_seqlens_k[i + 1]]
            o = F.scaled_dot_product_attention(qi, kvi[:, 0].transpose(0, 1), kvi[:, 1].transpose(0, 1), scale=softmax_scale)
            outs.append(o.transpose(0, 1))
        return torch.cat(outs)

    mod.flash_attn_func = flash_attn_func
    mod.flash_attn_varlen_kvpacked_func = flash_attn_varlen_kvpacked_func
    return mod


class _TorchWithoutBf16Cast(types.ModuleType):
    """``torch`` as seen by the official basic.py, except that ``torch.bfloat16`` is float32."""

    def __init__(self) -> None:
        super().__init__("torch")

    def __getattr__(self, name):
        return torch.float32 if name == "bfloat16" else getattr(torch, name)


def _stub_if_missing(*names: str) -> None:
    """Empty modules for imports that only serve plotting/saving, where the package is not installed."""
    for name in names:
        if name in sys.modules or importlib.util.find_spec(name.split(".")[0]) is not None:
            continue
        parent = None
        for i, part in enumerate(name.split(".")):
            full = ".".join(name.split(".")[: i + 1])
            mod = sys.modules.setdefault(full, types.ModuleType(full))
            if parent is not None:
                setattr(parent, part, mod)
            parent = mod


def _forget_infinity() -> None:
    """Drop an ``infinity`` package imported before (the official code and the FastVAR fork share the
    name): the next import reads the other tree. Objects built from the old one keep working."""
    for name in [n for n in sys.modules if n == "infinity" or n.startswith("infinity.")]:
        del sys.modules[name]


def _import_infinity_tree(root: Path, fastvar: bool) -> types.SimpleNamespace:
    """The ``infinity`` package under ``root``, made importable and fp32 on a CPU."""
    _forget_infinity()
    sys.path[:] = [p for p in sys.path if not (Path(p) / "infinity" / "models" / "infinity.py").is_file()]
    sys.path.insert(0, str(root))
    sys.modules.setdefault("flash_attn", _sdpa_flash_attn_module())
    if fastvar:
        _stub_if_missing("cv2", "matplotlib.pyplot")
    with contextlib.redirect_stdout(io.StringIO()):
        import infinity.models.basic as basic
        import infinity.models.bitwise_self_correction as bsc
        import infinity.models.bsq_vae.vae as vae
        import infinity.models.infinity as inf
        import infinity.utils.dynamic_resolution as dyn
    patched = [basic]
    if fastvar:
        import infinity.models.fastvar_basic as fastvar_basic  # its own CrossAttention has the same cast

        patched.append(fastvar_basic)
    for mod in patched:
        mod.torch = _TorchWithoutBf16Cast()
    fused = inf.fused_ada_layer_norm  # torch.compile'd in the official code, plain in the FastVAR fork
    inf.fused_ada_layer_norm = getattr(fused, "_torchdynamo_orig_callable", None) or getattr(fused, "__wrapped__", fused)
    return types.SimpleNamespace(basic=basic, inf=inf, vae=vae, bsc=bsc, dyn=dyn)


def import_official(path: Path) -> types.SimpleNamespace:
    if not (path / "infinity" / "models" / "infinity.py").is_file():
        sys.exit(f"{path} does not look like a checkout of FoundationVision/Infinity")
    return _import_infinity_tree(path, fastvar=False)


def import_fastvar(path: Path) -> types.SimpleNamespace:
    """The Infinity fork of a FastVAR checkout (csguoh/FastVAR): its ``Infinity/`` folder."""
    root = path / "Infinity"
    if not (root / "infinity" / "models" / "fastvar_basic.py").is_file():
        sys.exit(f"{path} does not look like a checkout of csguoh/FastVAR (no Infinity/infinity/models/fastvar_basic.py)")
    return _import_infinity_tree(root, fastvar=True)


def perturb_(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Random offsets on every parameter, so zero-initialised biases and unit norms are tested too."""
    with torch.no_grad():
        for p in module.parameters():
            scale = float(p.std()) if p.numel() > 1 and float(p.std()) > 0 else 0.05
            p.add_(torch.randn(p.shape, generator=gen) * 0.1 * scale + torch.randn(p.shape, generator=gen) * 0.01)


# ---------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------


def check_schedules(off) -> None:
    print("schedules and RoPE", flush=True)
    table = off.dyn.dynamic_resolution_h_w
    same = True
    n = 0
    for ratio, sizes in table.items():
        for pn, info in sizes.items():
            if pn not in SIZE_SCALES:
                continue
            ours = get_schedule(pn, float(ratio)).scales
            theirs = tuple((1, h, w) for _, h, w in info["scales"])
            same &= ours == theirs and abs(get_schedule(pn, float(ratio)).h_div_w - float(ratio)) < 1e-9
            n += 1
    record("schedules", f"{n} (template, size) schedules", same, exact=True)
    missing = [r for r in TEMPLATES if not any(abs(r - float(t)) < 1e-9 for t in table)]
    record("schedules", "same 15 aspect-ratio templates", not missing and len(table) == len(TEMPLATES), exact=True)

    for head_dim in (64, 128):
        grid = off.basic.precompute_rope2d_freqs_grid(
            dim=head_dim, dynamic_resolution_h_w=table, rope2d_normalized_by_hw=2, pad_to_multiplier=128
        )
        worst = 0.0
        for ratio in table:
            scales = tuple((1, h, w) for _, h, w in table[ratio]["1M"]["scales"])
            cos, sin = rope_tables(scales, scales[-1][1:], head_dim, 10000.0, torch.device("cpu"))
            ref = grid[str(tuple(scales))][:, 0, 0, 0, : cos.shape[0]]
            worst = max(worst, float((cos - ref[0]).abs().max()), float((sin - ref[1]).abs().max()))
        record("rope", f"cos/sin tables, head dim {head_dim}, all templates", worst == 0.0, exact=True)


def official_vae(off, cfg: VAEConfig, gen: torch.Generator):
    patch = cfg.stride
    with contextlib.redirect_stdout(io.StringIO()):
        v = off.vae.vae_model(None, "dynamic", cfg.bits, 2**cfg.bits, patch_size=patch,
                              encoder_ch_mult=list(cfg.ch_mult), decoder_ch_mult=list(cfg.ch_mult), test_mode=True)
    perturb_(v, gen)
    return v.eval()


def check_vae(off, name: str, cfg: VAEConfig, scales, gen: torch.Generator):
    """Returns (official vae, our vae, official raw features, official TF inputs, labels)."""
    print(f"tokenizer {name}", flush=True)
    ref = official_vae(off, cfg, gen)
    ours = build_vae(cfg, weights=ref.state_dict())
    vs = ours_vae.vae_scales(scales, cfg.spatial_patchify)
    _, H, W = vs[-1]
    img = torch.rand(2, 3, H * cfg.stride, W * cfg.stride, generator=gen) * 2 - 1
    with torch.no_grad():
        raw_ref, _, _ = ref.encode_for_raw_features(img, scale_schedule=vs)
        raw = ours.encode_features(img)
        record(name, f"encoder features {tuple(raw_ref.shape)}", rel_err(raw[:, :, 0], raw_ref), 1e-4)
        dec_ref = ref.decode(raw_ref)
        dec = ours.decode(raw_ref)
        record(name, f"decode {tuple(dec_ref.shape)}", rel_err(dec, dec_ref), 1e-4)

        args = types.SimpleNamespace(noise_apply_layers=-1, noise_apply_requant=1, noise_apply_strength=-1,
                                     apply_spatial_patchify=int(cfg.spatial_patchify), debug_bsc=0)
        fix = off.bsc.BitwiseSelfCorrection(ref, args)
        x_ref, labels_ref = fix.flip_requant(list(vs), img, raw_ref, img.device)
        tf = ours_vae.teacher_forcing(raw_ref, vs, patchify=cfg.spatial_patchify)
        labels_same = all(torch.equal(a.long(), b.long()) for a, b in zip(tf.bits_per_scale, labels_ref))
        record(name, f"bit labels, {len(vs)} scales", labels_same and len(labels_ref) == len(tf.bits_per_scale), exact=True)
        record(name, f"teacher-forcing inputs {tuple(x_ref.shape)}", rel_err(tf.inputs_BLd, x_ref), 1e-6)
        # the sampling-side accumulator fed with the labels reproduces the training inputs
        acc = ours.new_accumulator(scales, batch=img.shape[0])
        ins = [acc.add(b) for b in tf.bits_per_scale][:-1]
        record(name, "accumulator(labels) == teacher-forcing inputs", rel_err(torch.cat(ins, 1), tf.inputs_BLd), 1e-6)
    return ref, ours, x_ref, labels_ref


def official_transformer(off, vae_ref, cfg: TransformerConfig, patchify: bool, gen: torch.Generator):
    with contextlib.redirect_stdout(io.StringIO()):
        m = off.inf.Infinity(
            vae_local=vae_ref, text_channels=cfg.text_channels, text_maxlen=cfg.text_maxlen,
            embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio,
            drop_path_rate=0.1, norm_eps=cfg.norm_eps, shared_aln=True, head_aln=True, cond_drop_rate=0.0,
            cross_attn_layer_scale=-1, cos_attn=True, swiglu=False, customized_flash_attn=False,
            fused_norm=True, block_chunks=cfg.block_chunks, pad_to_multiplier=128, use_flex_attn=False,
            add_lvl_embeding_only_first_block=1, use_bit_label=1, rope2d_each_sa_layer=1,
            rope2d_normalized_by_hw=2, pn="0.06M", train_h_div_w_list=[1.0],
            apply_spatial_patchify=int(patchify), inference_mode=True,
        )
    perturb_(m, gen)
    return m.eval()


def run_official_sampler(ref, vae_ref, scales, packed, B: int, cfg_scale: float):
    """The official KV-cached sampler (tau 1, top-p 0.97, CFG on logits, g_seed 0); returns the
    logits of every scale it ran (both CFG halves), the bits it drew and [the accumulated codes it
    decoded, the decoded image]."""
    K = len(scales)
    logits_ref: list[torch.Tensor] = []
    bits_ref: list[torch.Tensor] = []
    dec_ref: list[torch.Tensor] = []
    get_logits, to_codes, decode = ref.get_logits, vae_ref.quantizer.lfq.indices_to_codes, vae_ref.decode
    ref.get_logits = lambda h, c: logits_ref.append(get_logits(h, c)) or logits_ref[-1]
    vae_ref.quantizer.lfq.indices_to_codes = lambda idx, label_type: bits_ref.append(idx.clone()) or to_codes(idx, label_type)
    vae_ref.decode = lambda z: dec_ref.extend([z.clone(), decode(z)]) or dec_ref[-1]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            ref.autoregressive_infer_cfg(
                vae=vae_ref, scale_schedule=list(scales), label_B_or_BLT=packed.as_tuple(), B=B, g_seed=0,
                cfg_list=[cfg_scale] * K, tau_list=[1.0] * K, top_k=0, top_p=0.97, returns_vemb=1,
                cfg_insertion_layer=[0], vae_type=vae_ref.codebook_dim, ret_img=True, inference_mode=True,
            )
    finally:
        del ref.get_logits
        del vae_ref.quantizer.lfq.indices_to_codes
        del vae_ref.decode
    return logits_ref, bits_ref, dec_ref


def check_transformer(off, name, cfg: TransformerConfig, vae_ref, vae_ours, x_ref, scales, patchify, gen, cfg_scales=(1.0, 3.0)):
    print(f"transformer {name}", flush=True)
    t0 = time.time()
    ref = official_transformer(off, vae_ref, cfg, patchify, gen)
    sd = ref.state_dict()
    same_shapes = {k: tuple(v.shape) for k, v in sd.items()} == transformer_tensor_shapes(cfg)
    record(name, f"state-dict names/shapes ({len(sd)} tensors)", same_shapes, exact=True)
    ours = build_transformer(cfg, weights=sd)
    del sd

    B = x_ref.shape[0]
    lens = [5, 11][:B]
    feats = torch.randn(sum(lens), cfg.text_channels, generator=gen)
    text = TextCond.from_packed(feats, lens)
    packed = text.pack()
    K = len(scales)
    with torch.no_grad():
        lg_ref = ref(packed.as_tuple(), x_ref.clone(), scale_schedule=list(scales))
        lg = ours(text, x_ref, scales)
        record(name, f"teacher-forced logits {tuple(lg_ref.shape)}", rel_err(lg, lg_ref), 1e-4)

        for cfg_scale in cfg_scales:
            logits_ref, bits_ref, dec_ref = run_official_sampler(ref, vae_ref, scales, packed, B, cfg_scale)
            guided = cfg_scale != 1.0
            run_text = TextCond.cat([text, ours.null_text(text)]) if guided else text
            cache = ours.new_cache(run_text, scales)
            acc = vae_ours.new_accumulator(scales, batch=B)
            worst, x = 0.0, None
            for si in range(K):
                lg_s = ours.forward_scale(cache, x)
                worst = max(worst, rel_err(lg_s, logits_ref[si]))
                nxt = acc.add(ours_vae.bits_to_tokens(bits_ref[si], patchify))
                x = None if nxt is None else (nxt.repeat(2, 1, 1) if guided else nxt)
            what = f"KV-cached logits, {K} scales" + (f", CFG {cfg_scale:g} (2B rows)" if guided else "")
            record(name, what, worst, 1e-4)
            record(name, "accumulated codes of the sampled bits" + (" (CFG)" if guided else ""),
                   rel_err(acc.summed_Bd1HW[:, :, 0], dec_ref[0]), 1e-6)
            record(name, "decode of the sampled image" + (" (CFG)" if guided else ""),
                   rel_err(vae_ours.decode(acc.summed_Bd1HW), dec_ref[1]), 1e-4)
            # A whole sample of ours, drawing from the same generator state in the official order
            # (--rng-stream batch): uint8 images equal up to the truncation of ~1e-5 decode noise.
            img = sample_images(ours, vae_ours, text, scales, SamplingParams(cfg=cfg_scale, tau=1.0, top_p=0.97),
                                [torch.Generator().manual_seed(0)], stream="batch")
            img_ref = ((dec_ref[1].float() + 1) * 127.5).clamp(0, 255).to(torch.uint8)
            diff = (img.int() - img_ref.int()).abs()
            record(name, "whole sample, same generator, batch stream: max |uint8 diff|" + (" (CFG)" if guided else ""),
                   float(diff.max()), 1.0)
    print(f"  ({time.time() - t0:.0f} s)", flush=True)
    del ref, ours


#: gen --prune as FastVAR hard-codes it for Infinity: (scale index, share of tokens removed) at 32x32 and 40x40
FASTVAR_PRUNE = ((9, 0.4), (10, 0.5))


def check_fastvar(fv, gen: torch.Generator, cfg_scale: float = 3.0) -> None:
    """FastVAR's pruned KV-cached sampler vs arbooth's ``new_cache(..., prune=plan_pruning(...))``.

    One prompt with CFG (the fork gathers RoPE rows for exactly 2 batch rows), a depth-32 model (it
    prunes blocks 3..27 by global index, i.e. 8 chunks of 4 as infinity-2b), the 13 scales of 1M 1:1.
    The fork never runs scales 11 and 12 (48x48, 64x64); arbooth's ``skip_scales=2`` does the same.
    The tokenizer is a small one (2 levels, stride 2): only its codes and a decode matter here.
    """
    name = "fastvar (C128, depth 32)"
    print(f"token pruning vs FastVAR: {name}", flush=True)
    t0 = time.time()
    scales = get_schedule("1M", 1.0).scales
    assert [h for _, h, _ in scales] == [1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64]
    run = len(scales) - 2  # scales 0..10
    vcfg = VAEConfig(bits=32, ch_mult=(1, 2))
    vae_ref = official_vae(fv, vcfg, gen)
    vae_ours = build_vae(vcfg, weights=vae_ref.state_dict())
    cfg = TransformerConfig(depth=32, embed_dim=128, num_heads=2, block_chunks=8, bits=32, text_channels=256)
    ref = official_transformer(fv, vae_ref, cfg, False, gen)
    assert all(type(b).__name__ == "FastVARCrossAttnBlock" for b in ref.unregistered_blocks)
    sd = ref.state_dict()
    same_shapes = {k: tuple(v.shape) for k, v in sd.items()} == transformer_tensor_shapes(cfg)
    record(name, f"state-dict names/shapes ({len(sd)} tensors)", same_shapes, exact=True)
    ours = build_transformer(cfg, weights=sd)
    del sd

    B = 1
    text = TextCond.from_packed(torch.randn(7, cfg.text_channels, generator=gen), [7])
    plan = plan_pruning(scales, FASTVAR_PRUNE, depth=cfg.depth)
    record(name, f"plan: blocks {plan.blocks[0]}..{plan.blocks[1] - 1} prune, keep {dict(plan.keep)}, "
                 f"refill from scale {plan.source}",
           plan.blocks == (3, 28) and plan.keep == ((9, 615), (10, 800)) and plan.source == 8, exact=True)
    with torch.no_grad():
        logits_ref, bits_ref, dec_ref = run_official_sampler(ref, vae_ref, scales, text.pack(), B, cfg_scale)
        record(name, f"FastVAR ran scales 0..{run - 1} only (48x48, 64x64 skipped)", len(logits_ref) == run, exact=True)

        both = TextCond.cat([text, ours.null_text(text)])
        cache = ours.new_cache(both, scales, prune=plan)
        acc = vae_ours.new_accumulator(scales, batch=B)
        errs, x = [], None
        for si in range(run):
            errs.append(rel_err(ours.forward_scale(cache, x), logits_ref[si]))
            x = acc.add(ours_vae.bits_to_tokens(bits_ref[si], False)).repeat(2, 1, 1)
        print(f"  per-scale rel err: {' '.join(f'{e:.1e}' for e in errs)}", flush=True)
        record(name, f"KV-cached logits, scales 0-8 (1..24, not pruned), CFG {cfg_scale:g} (2 rows)", max(errs[:9]), 1e-4)
        record(name, "KV-cached logits, scale 9 (32x32: 615 of 1024 kept)", errs[9], 1e-4)
        record(name, "KV-cached logits, scale 10 (40x40: 800 of 1600 kept)", errs[10], 1e-4)
        record(name, "accumulated codes after scale 10 (what FastVAR decodes)",
               rel_err(acc.summed_Bd1HW[:, :, 0], dec_ref[0]), 1e-6)
        record(name, f"decode of the sampled image {tuple(dec_ref[1].shape)}",
               rel_err(vae_ours.decode(acc.summed_Bd1HW), dec_ref[1]), 1e-4)

        # control: the same bits through arbooth's unpruned path differ from FastVAR at the pruned scales
        cache = ours.new_cache(both, scales)
        acc = vae_ours.new_accumulator(scales, batch=B)
        x, full = None, []
        for si in range(run):
            full.append(rel_err(ours.forward_scale(cache, x), logits_ref[si]))
            x = acc.add(ours_vae.bits_to_tokens(bits_ref[si], False)).repeat(2, 1, 1)
        record(name, "control: arbooth without pruning, scales 0-8", max(full[:9]), 1e-4)
        record(name, "control: arbooth without pruning, scales 9-10 (must differ)", max(full[9:]), at_least=1e-2)

        # a whole sample of arbooth (gen --prune 9:0.4,10:0.5 --skip-scales 2 --rng-stream batch)
        params = SamplingParams(cfg=cfg_scale, tau=1.0, top_p=0.97, prune=FASTVAR_PRUNE, skip_scales=2)
        img = sample_images(ours, vae_ours, text, scales, params, [torch.Generator().manual_seed(0)], stream="batch")
        img_ref = ((dec_ref[1].float() + 1) * 127.5).clamp(0, 255).to(torch.uint8)
        record(name, "whole sample, same generator, batch stream: max |uint8 diff|",
               float((img.int() - img_ref.int()).abs().max()), 1.0)
    print(f"  ({time.time() - t0:.0f} s)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official", type=Path, help="checkout of github.com/FoundationVision/Infinity")
    ap.add_argument("--fastvar", type=Path, help="checkout of github.com/csguoh/FastVAR (its Infinity/ fork is used)")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--only", choices=[*OFFICIAL_CHECKS, "fastvar"], action="append",
                    help="run these checks (default: every check of the checkouts given)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # the official constructors draw from the global RNG
    gen = torch.Generator().manual_seed(args.seed)
    only = set(args.only or [*(OFFICIAL_CHECKS if args.official else ()), *(("fastvar",) if args.fastvar else ())])
    if not only:
        ap.error("give --official and/or --fastvar")
    if only & set(OFFICIAL_CHECKS) and not args.official:
        ap.error(f"{', '.join(sorted(only & set(OFFICIAL_CHECKS)))} need(s) --official")
    if "fastvar" in only and not args.fastvar:
        ap.error("fastvar needs --fastvar")
    off = import_official(args.official.resolve()) if only & set(OFFICIAL_CHECKS) else None
    t0 = time.time()

    if "schedules" in only:
        check_schedules(off)

    d32 = VAEConfig(bits=32)
    if only & {"tiny", "2b"}:
        s_square = get_schedule("0.06M", 1.0).scales
        s_wide = get_schedule("0.06M", 0.75).scales  # landscape template: a non-square RoPE frame
        vae_ref, vae_ours, x_sq, _ = check_vae(off, "vae d32 (1:1)", d32, s_square, gen)
        _, _, x_wide, _ = check_vae(off, "vae d32 (h/w 0.75)", d32, s_wide, gen)
        if "tiny" in only:
            tiny = TransformerConfig(depth=2, embed_dim=128, num_heads=2, block_chunks=2, bits=32, text_channels=256)
            check_transformer(off, "tiny (C128, 1:1)", tiny, vae_ref, vae_ours, x_sq, s_square, False, gen)
            check_transformer(off, "tiny (C128, h/w 0.75)", tiny, vae_ref, vae_ours, x_wide, s_wide, False, gen)
        if "2b" in only:
            two_b = TransformerConfig(depth=2, embed_dim=2048, num_heads=16, block_chunks=2, bits=32)
            check_transformer(off, "2B width, depth 2", two_b, vae_ref, vae_ours, x_sq, s_square, False, gen)
        del vae_ref, vae_ours
    if "8b" in only:
        d56 = VAEConfig(bits=14, ch_mult=(1, 2, 4, 4), spatial_patchify=True)
        s8 = get_schedule("0.06M", 1.0).scales
        vae_ref, vae_ours, x8, _ = check_vae(off, "vae d56 patchify (1:1)", d56, s8, gen)
        eight_b = TransformerConfig(depth=2, embed_dim=3584, num_heads=28, block_chunks=2, bits=56)
        check_transformer(off, "8B width, depth 2", eight_b, vae_ref, vae_ours, x8, s8, True, gen, cfg_scales=(3.0,))
        del vae_ref, vae_ours
    if "fastvar" in only:
        check_fastvar(import_fastvar(args.fastvar.resolve()), gen)

    bad = [r for r in RESULTS if not r["ok"]]
    print(f"\n{len(RESULTS) - len(bad)}/{len(RESULTS)} checks passed in {time.time() - t0:.0f} s "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads)")
    if args.json:
        args.json.write_text(json.dumps({"torch": torch.__version__, "results": RESULTS}, indent=1, default=float))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
