"""Train the embedded default model (``toy``) on the toy world, from scratch, with a fixed seed.

    python tools/train_toy.py --out runs/toy            # on a GPU: about 16 minutes (H100)
    python tools/train_toy.py --out /tmp/t --smoke      # a seconds-long run of every stage (CPU)

Stages, each logged to ``<out>/train-log.json`` (the curves and metrics of docs/embedded-model.md):
1. data: ``--images`` training examples (``arbooth_cli.toyworld.dataset``; held-out shapes never
   appear), rendered and byte-tokenized in worker processes;
2. tokenizer: the BSQ VAE learns to reconstruct images from the multi-scale residual codes
   (straight-through bits; L1 + MSE);
3. the transformer and the T5 text encoder learn together, with the bitwise cross-entropy of
   next-scale prediction over all scales, bitwise self-correction and 10% text dropout (the
   Infinity recipe, at toy size);
4. evaluation: images for held-out prompts are sampled with a few guidance settings and read back
   by the pixel detectors; the best setting is written as the model's sampling defaults.

The bundle (``<out>/toy.safetensors``, float32, all three components) is what ships as
``arbooth_cli/weights/toy.safetensors``. ``--vae FILE`` reuses a trained tokenizer (skips stage 2).
``--bits``/``--vae-channels`` train a variant of the spec (to ship it, set the same numbers in
``arbooth_cli/specs/toy.py``: the package loads the bundle strictly against that spec);
``--tokenizer-only`` stops after stage 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from arbooth_cli import __version__  # noqa: E402
from arbooth_cli.analysis.toy_scores import attribute_accuracy  # noqa: E402
from arbooth_cli.checkpoint_io import write_safetensors  # noqa: E402
from arbooth_cli.models.build import build_components, bundle_tensors, read_bundle  # noqa: E402
from arbooth_cli.models.schedules import model_scales  # noqa: E402
from arbooth_cli.specs.toy import TOY  # noqa: E402
from arbooth_cli.models.text_encoder import TextCond  # noqa: E402
from arbooth_cli.sampling.sample import SamplingParams, sample_images  # noqa: E402
from arbooth_cli.toyworld.dataset import (  # noqa: E402
    held_out_prompts,
    seen_prompts,
    tokenizer_example,
    training_example,
    weighted_classes,
)
from arbooth_cli.toyworld.detect import detect  # noqa: E402
from arbooth_cli.toyworld.scene import CLASSES  # noqa: E402
from arbooth_cli.models.bsq_vae import teacher_forcing  # noqa: E402
from arbooth_cli.tuning.losses import bitwise_ce  # noqa: E402

PX = 64
#: --minutes times the steps in [PROBE_FROM, PROBE_TO) (after compilation and warm-up)
PROBE_FROM, PROBE_TO = 20, 70


def toy_spec(bits: int | None = None, vae_channels: int | None = None):
    """The ``toy`` spec, or a variant with another code width / tokenizer width."""
    vae = TOY.vae if vae_channels is None else dataclasses.replace(TOY.vae, base_channels=vae_channels)
    tr = TOY.transformer
    if bits is not None:
        vae, tr = dataclasses.replace(vae, bits=bits), dataclasses.replace(tr, bits=bits)
    return dataclasses.replace(TOY, vae=vae, transformer=tr)


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------


def _tokenizer_chunk(args: tuple[int, int, int]) -> np.ndarray:
    seed, start, stop = args
    return np.stack([tokenizer_example(seed, i, PX) for i in range(start, stop)])


def _map_chunks(fn, n: int, seed: int, workers: int, *extra) -> list:
    """``fn((seed, start, stop, *extra))`` over ``range(n)`` in chunks, in worker processes when asked."""
    step = max(1, min(2000, n // max(workers, 1)))
    chunks = [(seed, s, min(s + step, n), *extra) for s in range(0, n, step)]
    if workers > 1:
        with mp.get_context("fork").Pool(workers) as pool:
            return pool.map(fn, chunks)
    return [fn(c) for c in chunks]


def make_tokenizer_data(n: int, seed: int, workers: int) -> np.ndarray:
    """Images for the tokenizer: training images and uncaptioned patterned shapes."""
    return np.concatenate(_map_chunks(_tokenizer_chunk, n, seed, workers))


def _render_chunk(args: tuple[int, int, int, tuple[str, ...]]) -> tuple[np.ndarray, list[list[int]]]:
    seed, start, stop, classes = args
    from transformers import ByT5Tokenizer

    tok = ByT5Tokenizer()
    imgs = np.empty((stop - start, PX, PX, 3), dtype=np.uint8)
    ids = []
    for k, i in enumerate(range(start, stop)):
        img, cap, _ = training_example(seed, i, PX, classes=classes)
        imgs[k] = img
        ids.append(tok(cap)["input_ids"])
    return imgs, ids


def class_weights(items: list[str] | None) -> dict[str, int]:
    """``--class-weight`` values (``CLASS=N``) as a dict."""
    out = {}
    for item in items or ():
        cls, _, n = item.partition("=")
        if not n.isdigit():
            raise SystemExit(f"--class-weight takes CLASS=N (a whole number), got {item!r}")
        out[cls] = int(n)
    return out


def make_data(n: int, seed: int, workers: int, classes: tuple[str, ...] = CLASSES
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images N,64,64,3 uint8; token ids N,T int64 zero-padded; lengths N)."""
    parts = _map_chunks(_render_chunk, n, seed, workers, classes)
    imgs = np.concatenate([p[0] for p in parts])
    ids = [x for p in parts for x in p[1]]
    T = min(max(len(x) for x in ids), TOY.text_encoder.max_length)
    arr = np.zeros((n, T), dtype=np.int64)
    lens = np.zeros(n, dtype=np.int64)
    for i, x in enumerate(ids):
        x = x[:T]
        arr[i, : len(x)] = x
        lens[i] = len(x)
    return imgs, arr, lens


def to_unit(img_BHW3: torch.Tensor) -> torch.Tensor:
    return img_BHW3.permute(0, 3, 1, 2).float() / 127.5 - 1.0


# ---------------------------------------------------------------------------------------------
# training helpers
# ---------------------------------------------------------------------------------------------


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


def trainable(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    module.train()
    params = []
    for p in module.parameters():
        p.requires_grad_(True)
        params.append(p)
    return params


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, params: list) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()


def init_transformer_for_training_(tr: torch.nn.Module) -> None:
    """Start near identity: small AdaLN projections, residual gates of 0.5, a small head."""
    with torch.no_grad():
        tr.shared_ada_lin[1].weight.mul_(0.1)
        tr.shared_ada_lin[1].bias.zero_()
        for block in tr.blocks:
            block.ada_gss.zero_()
            block.ada_gss[:, :, :2] = 0.5
        tr.head.weight.mul_(0.1)
        tr.head.bias.zero_()
        tr.head_nm.ada_lin[1].weight.mul_(0.1)
        tr.head_nm.ada_lin[1].bias.zero_()


def train_vae(vae, imgs_u8: torch.Tensor, scales, args, log: dict, device) -> None:
    params = trainable(vae)
    opt = torch.optim.AdamW(params, lr=args.vae_lr, betas=(0.9, 0.99), weight_decay=1e-4)
    g = torch.Generator(device="cpu").manual_seed(args.seed + 101)
    scales_vae = vae.vae_scales(scales)
    curve = []
    t0 = time.time()
    for step in range(args.vae_steps):
        for grp in opt.param_groups:
            grp["lr"] = lr_at(step, args.vae_steps, args.vae_lr, max(1, args.vae_steps // 20))
        idx = torch.randint(0, imgs_u8.shape[0], (args.vae_batch,), generator=g)
        x = to_unit(imgs_u8[idx].to(device, non_blocking=True))
        raw = vae.encode_features(x)
        tf = teacher_forcing(raw, scales_vae, patchify=vae.cfg.spatial_patchify)
        rec = vae.decoder(tf.summed_Bd1HW[:, :, 0])
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x)
        optimizer_step(opt, loss, params)
        if step % args.log_every == 0 or step == args.vae_steps - 1:
            with torch.no_grad():
                psnr = float(10 * torch.log10(4.0 / F.mse_loss(rec.clamp(-1, 1), x)))
            curve.append({"step": step, "loss": float(loss.detach()), "psnr": psnr, "seconds": round(time.time() - t0, 1)})
            print(f"vae {step:6d} loss {float(loss.detach()):.4f} psnr {psnr:.2f} dB  {time.time() - t0:.0f}s", flush=True)
    vae.eval().requires_grad_(False)
    log["vae"] = {"steps": args.vae_steps, "batch": args.vae_batch, "lr": args.vae_lr, "curve": curve,
                  "seconds": round(time.time() - t0, 1)}


@torch.no_grad()
def reconstruct(vae, imgs_BHW3: np.ndarray, scales, device) -> np.ndarray:
    x = to_unit(torch.from_numpy(imgs_BHW3).to(device))
    tf = teacher_forcing(vae.encode_features(x), vae.vae_scales(scales), patchify=vae.cfg.spatial_patchify)
    return ((vae.decode(tf.summed_Bd1HW) + 1) * 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def reconstruction_report(vae, scales, device, per_class: int = 24) -> dict:
    """What survives the tokenizer: the detectors on reconstructions of fresh renders of every
    (class, size), and of every shipped subject's photos. A shape the tokenizer cannot carry, the
    transformer cannot draw."""
    from arbooth_cli.toyworld.render import render
    from arbooth_cli.toyworld.scene import CLASSES, COLOURS, POSITIONS, SIZES, Background, Scene, Shape
    from arbooth_cli.toyworld.subjects import SUBJECTS, detect_subject, subject_photos

    rng = np.random.default_rng(12345)
    out: dict = {"classes": {}, "subjects": {}}
    for cls in CLASSES:
        for size in SIZES:
            scenes = []
            for _ in range(per_class):
                col, bg = rng.choice(list(COLOURS), 2, replace=False)
                scenes.append(Scene((Shape(cls, str(col), str(rng.choice(POSITIONS)), size),), Background((str(bg),))))
            rec = reconstruct(vae, np.stack([render(s, PX, rng=rng) for s in scenes]), scales, device)
            ok = sum(any(f.cls == cls and f.colour == s.shapes[0].colour for f in detect(im).shapes)
                     for s, im in zip(scenes, rec))
            out["classes"][f"{cls}-{size}"] = round(ok / per_class, 3)
    for name, sub in SUBJECTS.items():
        rec = reconstruct(vae, np.stack([im for im, _ in subject_photos(sub)]), scales, device)
        out["subjects"][name] = sum(bool(detect_subject(im, sub).found) for im in rec) / len(rec)
    return out


@torch.no_grad()
def encode_all(vae, imgs_u8: torch.Tensor, device, batch: int = 1024) -> torch.Tensor:
    out = []
    for s in range(0, imgs_u8.shape[0], batch):
        out.append(vae.encode_features(to_unit(imgs_u8[s : s + batch].to(device))))
    return torch.cat(out)


def ema_decay(step: int, decay: float) -> float:
    """The averaging rate at ``step``: short memory early, so the average does not hold the
    random init, then ``decay``."""
    return min(decay, (1 + step) / (10 + step))


def _save_checkpoint(ckpt: Path, comps, opt, step: int, g_dev: torch.Generator, seconds: float, curve: list,
                     ema: list[torch.Tensor] | None = None) -> None:
    """Everything the transformer stage needs to continue exactly: weights, AdamW state, the
    weight average, step, the device generator and the curve so far (safetensors + JSON; written
    aside, then renamed)."""
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    tensors = {f"transformer.{k}": v.detach().float().cpu().contiguous() for k, v in comps.transformer.state_dict().items()}
    tensors |= {f"text_encoder.{k}": v.detach().float().cpu().contiguous().clone()
                for k, v in comps.text_encoder.model.state_dict().items()}
    sd = opt.state_dict()
    for i, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"opt.{i}.{k}"] = v.detach().float().cpu().contiguous().reshape(v.shape)
    for i, v in enumerate(ema or []):
        tensors[f"ema.{i}"] = v.detach().float().cpu().contiguous()
    write_safetensors(tmp / "state.safetensors", tensors)
    meta = {"step": step, "seconds": seconds, "curve": curve, "param_groups": sd["param_groups"],
            "generator": g_dev.get_state().tolist()}
    (tmp / "state.json").write_text(json.dumps(meta))
    if ckpt.exists():
        import shutil

        shutil.rmtree(ckpt)
    os.replace(tmp, ckpt)


def _load_checkpoint(ckpt: Path, comps, opt, g_dev: torch.Generator, device,
                     ema: list[torch.Tensor] | None = None) -> tuple[int, float, list]:
    from safetensors.torch import load_file

    t = load_file(str(ckpt / "state.safetensors"))
    meta = json.loads((ckpt / "state.json").read_text())
    with torch.no_grad():
        for k, v in comps.transformer.state_dict().items():
            v.copy_(t[f"transformer.{k}"])
        for k, v in comps.text_encoder.model.state_dict().items():
            v.copy_(t[f"text_encoder.{k}"])
    state: dict = {}
    for k, v in t.items():
        if k.startswith("opt."):
            _, i, name = k.split(".", 2)
            state.setdefault(int(i), {})[name] = v.to(device)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    for i, v in enumerate(ema or []):
        if f"ema.{i}" not in t:
            raise SystemExit(f"{ckpt} holds no weight average: resume it without --ema, or start again")
        v.copy_(t[f"ema.{i}"])
    g_dev.set_state(torch.tensor(meta["generator"], dtype=torch.uint8))
    return int(meta["step"]), float(meta["seconds"]), list(meta["curve"])


def train_transformer(comps, raw_N: torch.Tensor, ids_NT: torch.Tensor, lens_N: torch.Tensor, scales, args,
                      log: dict, device) -> tuple[bool, list[torch.Tensor] | None]:
    """Returns whether every step ran (else the time budget stopped it and a checkpoint was
    saved), and the weight average of ``--ema`` (the transformer's, then the text encoder's
    parameters, in ``parameters()`` order), None without it."""
    tr, vae, te = comps.transformer, comps.vae, comps.text_encoder
    init_transformer_for_training_(tr)
    params = trainable(tr) + trainable(te.model)
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.02}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98), fused=device.type == "cuda")
    # indices, bit flips and text dropout all come from one device generator: no host round trips
    g_dev = torch.Generator(device=device).manual_seed(args.seed + 303)
    scales_vae = vae.vae_scales(scales)
    ids_NT, lens_N = ids_NT.to(device), lens_N.to(device)
    ckpt = args.checkpoint_dir or args.out / "checkpoint"
    step0, seconds0, curve = 0, 0.0, []
    ema = [p.detach().clone() for p in params] if args.ema else None
    if args.resume:
        step0, seconds0, curve = _load_checkpoint(ckpt, comps, opt, g_dev, device, ema)
        print(f"resumed at step {step0}", flush=True)
    t0 = time.time() - seconds0
    t_call = time.time()
    budget = 60 * args.max_minutes
    finished = True
    # --minutes: the step count is fixed once the speed is known (after PROBE steps); the log
    # records it, and --steps with that count repeats the run exactly
    total = args.steps if not args.minutes else 10**9
    warmup = 200 if args.minutes else max(1, args.steps // 25)
    t_probe = None
    fwd_tr = torch.compile(tr) if args.compile else tr
    fwd_te = torch.compile(te.model) if args.compile else te.model
    step = step0
    while step < total:
        if (budget and time.time() - t_call > budget) or step == args.stop_at:
            finished = False
            break
        if args.minutes and step == PROBE_FROM:
            t_probe = time.time()
        if args.minutes and step == PROBE_TO:
            dt = (time.time() - t_probe) / (PROBE_TO - PROBE_FROM)
            total = max(PROBE_TO + 1, int((60 * args.minutes - (time.time() - t0)) / dt) + PROBE_TO)
            print(f"{dt * 1000:.0f} ms/step: {total} steps fit in --minutes {args.minutes}", flush=True)
        for grp in opt.param_groups:
            grp["lr"] = lr_at(step, total, args.lr, warmup)
        idx = torch.randint(0, raw_N.shape[0], (args.batch,), generator=g_dev, device=device)
        tf = teacher_forcing(raw_N[idx], scales_vae, patchify=vae.cfg.spatial_patchify,
                             noise_layers=len(scales) - 1, noise_strength=args.bsc, generator=g_dev)
        ids, lens = ids_NT[idx], lens_N[idx]  # padded to the longest caption of the set: one shape throughout
        mask = torch.arange(ids.shape[1], device=device)[None] < lens[:, None]
        feats = fwd_te(input_ids=ids, attention_mask=mask.long()).last_hidden_state.float()
        text = TextCond(feats * mask[..., None], lens)
        drop = torch.rand(args.batch, generator=g_dev, device=device) < args.text_dropout
        text = tr.drop_text(text, drop)
        logits = fwd_tr(text, tf.inputs_BLd, scales)  # no stochastic depth: short run, plentiful data
        ce_BL = bitwise_ce(logits, tf.bits_BLd)
        loss = ce_BL.mean()
        optimizer_step(opt, loss, params)
        if ema is not None:
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - ema_decay(step, args.ema))
        if step % args.log_every == 0 or step == total - 1:
            with torch.no_grad():
                counts = [t * h * w for t, h, w in scales]
                per_scale = [float(c.mean()) for c in ce_BL.detach().split(counts, dim=1)]
            curve.append({"step": step, "loss": float(loss.detach()), "per_scale": [round(v, 4) for v in per_scale],
                          "seconds": round(time.time() - t0, 1)})
            print(f"tr {step:6d} loss {float(loss.detach()):.4f} {[round(v, 3) for v in per_scale]}  "
                  f"{time.time() - t0:.0f}s", flush=True)
        step += 1
    if not finished:
        _save_checkpoint(ckpt, comps, opt, step, g_dev, time.time() - t0, curve, ema)
        print(f"stopped at step {step} (--max-minutes/--stop-at); continue with --resume", flush=True)
    tr.eval().requires_grad_(False)
    te.model.eval().requires_grad_(False)
    log["transformer"] = {"steps": step, "planned_steps": total, "warmup": warmup, "compile": args.compile,
                          "ema": args.ema,
                          "batch": args.batch, "lr": args.lr, "bsc": args.bsc, "text_dropout": args.text_dropout, "curve": curve,
                          "seconds": round(time.time() - t0, 1)}
    return finished, ema


# ---------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def accuracy(comps, prompts: list[str], scales, params: SamplingParams, seed: int, device,
             batch: int = 256) -> dict:
    """Share of images showing every asked attribute, and per attribute, by the detectors."""
    tr, vae, te = comps.transformer, comps.vae, comps.text_encoder
    imgs = []
    for s in range(0, len(prompts), batch):
        chunk = prompts[s : s + batch]
        gens = [torch.Generator(device=device).manual_seed(seed + s + i) for i in range(len(chunk))]
        imgs += list(sample_images(tr, vae, te.encode(chunk), scales, params, gens).permute(0, 2, 3, 1).cpu().numpy())
    return attribute_accuracy(prompts, imgs)


def evaluate(comps, scales, args, log: dict, device) -> dict:
    held = [p for p, _ in held_out_prompts(args.eval_prompts, seed=1)]
    seen = [p for p, _ in seen_prompts(args.eval_prompts, seed=1)]
    grid = []
    for cfg in args.eval_cfg:
        for tau in args.eval_tau:
            params = SamplingParams(cfg=cfg, tau=tau, top_p=0.97)
            r = accuracy(comps, held, scales, params, seed=1000, device=device)
            grid.append({"cfg": cfg, "tau": tau, "held_out": r})
            print(f"eval cfg {cfg} tau {tau}: held-out all {r['all']}  {r}", flush=True)
    best = max(grid, key=lambda e: (e["held_out"]["all"] or 0))
    params = SamplingParams(cfg=best["cfg"], tau=best["tau"], top_p=0.97)
    # the chosen setting on fresh prompts and seeds, so the reported number is not the one picked on
    final_held = accuracy(comps, [p for p, _ in held_out_prompts(args.eval_prompts, seed=2)], scales, params,
                          seed=5000, device=device)
    final_seen = accuracy(comps, seen, scales, params, seed=9000, device=device)
    out = {"grid": grid, "chosen": {"cfg": best["cfg"], "tau": best["tau"], "top_p": 0.97},
           "held_out": final_held, "seen": final_seen}
    print(f"final held-out {final_held}\nfinal seen {final_seen}", flush=True)
    log["eval"] = out
    return out


# ---------------------------------------------------------------------------------------------


def evaluate_bundle(spec, bundle: Path, scales, args, log: dict, device) -> dict:
    """Stage 4 on a saved file, read back as the package reads it."""
    comps = build_components(spec, device=device, dtype=torch.float32, text_dtype=torch.float32,
                             weights=read_bundle(bundle))
    return evaluate(comps, scales, args, log, device)


def save_log(out: Path, log: dict, name: str = "train-log.json") -> None:
    tmp = out / f".{name}.tmp"
    tmp.write_text(json.dumps(log, indent=1))
    os.replace(tmp, out / name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", type=int, default=200_000)
    ap.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    ap.add_argument("--vae", type=Path, default=None, help="a bundle or tokenizer file to reuse (skips stage 2)")
    ap.add_argument("--bits", type=int, default=None, help="bits per token (default: the spec's)")
    ap.add_argument("--vae-channels", type=int, default=None, help="tokenizer base width (default: the spec's)")
    ap.add_argument("--tokenizer-only", action="store_true", help="stop after the tokenizer stage")
    ap.add_argument("--vae-steps", type=int, default=3000)
    ap.add_argument("--vae-batch", type=int, default=128)
    ap.add_argument("--vae-lr", type=float, default=2e-3)
    ap.add_argument("--steps", type=int, default=12000)
    ap.add_argument("--minutes", type=float, default=0,
                    help="instead of --steps: as many steps as fit in this many minutes of the transformer "
                         "stage (timed over the first steps; logged)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="torch.compile the transformer and text encoder (default: on a GPU)")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--bsc", type=float, default=0.2, help="bitwise self-correction flip-rate bound")
    ap.add_argument("--text-dropout", type=float, default=0.1)
    ap.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                    help="ship an exponential average of the weights with this decay (e.g. 0.9995; 0: the last weights)")
    ap.add_argument("--class-weight", action="append", default=None, metavar="CLASS=N",
                    help="draw CLASS N times as often as the others in training images (repeatable; "
                         "default: all classes alike)")
    ap.add_argument("--resume", action="store_true", help="continue the transformer stage from its checkpoint")
    ap.add_argument("--checkpoint-dir", type=Path, default=None,
                    help="where a stopped transformer stage saves itself (default: <out>/checkpoint)")
    ap.add_argument("--save-dtype", choices=("fp16", "fp32"), default="fp16",
                    help="dtype of the bundle (fp16: half the size; the evaluation reads the saved file)")
    ap.add_argument("--eval-prompts", type=int, default=300)
    ap.add_argument("--eval-cfg", type=float, nargs="+", default=[1.0, 2.0, 3.0, 4.0])
    ap.add_argument("--eval-tau", type=float, nargs="+", default=[0.5, 1.0])
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--max-minutes", type=float, default=0,
                    help="stop the transformer stage after this long in this call, saving a checkpoint (0: never)")
    ap.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                    help="save a checkpoint at this transformer step and stop (continue with --resume)")
    ap.add_argument("--eval-only", type=Path, default=None, metavar="BUNDLE",
                    help="only stage 4, on this bundle (e.g. the shipped arbooth_cli/weights/toy.safetensors)")
    ap.add_argument("--smoke", action="store_true", help="tiny counts on the CPU: checks every stage runs")
    args = ap.parse_args(argv)
    if args.minutes and (args.resume or args.max_minutes or args.stop_at is not None):
        ap.error("--minutes fixes the step count in one uninterrupted call: use --steps with --resume/--max-minutes/"
                 "--stop-at")
    if args.smoke:
        args.images, args.vae_steps, args.steps, args.batch, args.vae_batch = 64, 3, 3, 4, 4
        args.eval_prompts, args.eval_cfg, args.eval_tau, args.workers, args.log_every = 4, [3.0], [1.0], 1, 1
    torch.manual_seed(args.seed)  # nothing should draw from it; belt and braces for library code
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if args.compile is None:
        args.compile = device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    args.out.mkdir(parents=True, exist_ok=True)
    log: dict = {"arbooth_version": __version__, "args": {k: str(v) if isinstance(v, Path) else v
                                                           for k, v in vars(args).items()},
                 "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}
    t_all = time.time()
    spec = toy_spec(args.bits, args.vae_channels)
    scales = model_scales(spec.sampling.size, num_scales=spec.num_scales)
    try:
        classes = weighted_classes(class_weights(args.class_weight))
    except ValueError as exc:
        raise SystemExit(f"--class-weight: {exc}") from None
    if args.eval_only is not None:
        evaluate_bundle(spec, args.eval_only, scales, args, log, device)
        log["seconds_total"] = round(time.time() - t_all, 1)
        save_log(args.out, log, name="eval-log.json")
        return 0

    comps = build_components(spec, device=device, dtype=torch.float32, allow_random_init=True, seed=args.seed,
                             text_dtype=torch.float32)
    if args.vae is not None:
        parts = read_bundle(args.vae)
        comps.vae.load_state_dict(parts["vae"], strict=False)
        log["vae"] = {"reused": str(args.vae)}
    else:
        t0 = time.time()
        vae_imgs = torch.from_numpy(make_tokenizer_data(args.images, args.seed, args.workers))
        print(f"tokenizer data: {args.images} images, {time.time() - t0:.0f}s", flush=True)
        train_vae(comps.vae, vae_imgs.pin_memory() if device.type == "cuda" else vae_imgs, scales, args, log, device)
        del vae_imgs
        log["vae"]["reconstruction"] = reconstruction_report(comps.vae, scales, device)
        print(f"reconstruction: {log['vae']['reconstruction']}", flush=True)
        write_safetensors(args.out / "vae.safetensors", {f"vae.{k}": v.float().contiguous() for k, v in
                                                         comps.vae.state_dict().items()})
    save_log(args.out, log)
    if args.tokenizer_only:
        return 0

    t0 = time.time()
    imgs, ids, lens = make_data(args.images, args.seed, args.workers, classes)
    log["data"] = {"images": args.images, "class_weights": class_weights(args.class_weight), "max_tokens": int(ids.shape[1]), "seconds": round(time.time() - t0, 1)}
    print(f"data: {args.images} images, {ids.shape[1]} max tokens, {time.time() - t0:.0f}s", flush=True)
    imgs_t = torch.from_numpy(imgs)
    if device.type == "cuda":
        imgs_t = imgs_t.pin_memory()
    raw = encode_all(comps.vae, imgs_t, device)
    del imgs_t
    finished, ema = train_transformer(comps, raw, torch.from_numpy(ids), torch.from_numpy(lens), scales, args,
                                      log, device)
    del raw
    save_log(args.out, log)
    if not finished:
        return 3

    save = torch.float16 if args.save_dtype == "fp16" else torch.float32
    meta = {"model": "toy", "arbooth_version": __version__, "trained_by": "tools/train_toy.py", "seed": str(args.seed),
            "bits": str(spec.vae.bits), "vae_channels": str(spec.vae.base_channels)}

    def save_bundle(name: str, parts) -> None:
        tmp = args.out / f".{name}.tmp"
        tensors = {k: v.to(save) if v.is_floating_point() else v for k, v in bundle_tensors(parts).items()}
        write_safetensors(tmp, tensors, meta)
        os.replace(tmp, args.out / name)

    if ema is not None:  # the last weights beside, for comparison; the average ships
        save_bundle("toy-last.safetensors", comps)
        with torch.no_grad():
            for p, e in zip([*comps.transformer.parameters(), *comps.text_encoder.model.parameters()], ema):
                p.copy_(e)
        meta["ema"] = str(args.ema)
    save_bundle("toy.safetensors", comps)
    del comps
    evaluate_bundle(spec, args.out / "toy.safetensors", scales, args, log, device)  # what ships
    log["seconds_total"] = round(time.time() - t_all, 1)
    save_log(args.out, log)
    print(f"done in {time.time() - t_all:.0f}s -> {args.out / 'toy.safetensors'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
