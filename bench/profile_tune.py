"""Where a tuning step's time goes: forward, backward, optimizer, prior-pool sampling.

Builds the model at full size from a random init (as bench/tune_speed.py), prepares a run with
a small prior pool, then times, after warm-up:
  step        a whole training step (forward, backward with the optimizer inside)
  fwd         the teacher-forced forward alone (no grad)
  fwd+bwd     forward and backward without the optimizer
  opt         the optimizer on random gradients, per state kind, eager and fused (compiled)
  pool        prior-pool sampling per sample, plain graphs and graphs + compiled stages
and prints a profiler table of one step's CUDA kernels.

    python bench/profile_tune.py --model infinity-2b
    python bench/profile_tune.py --model infinity-2b --memory low --skip pool,opt
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tune_speed import RandomTextEncoder, make_photos  # noqa: E402

from arbooth_cli.config import TuneConfig  # noqa: E402
from arbooth_cli.loading import ResolvedModel  # noqa: E402
from arbooth_cli.models.build import Components, build_components  # noqa: E402
from arbooth_cli.models.schedules import model_scales  # noqa: E402
from arbooth_cli.registry import get_spec  # noqa: E402
from arbooth_cli.jobs import tune as L  # noqa: E402
from arbooth_cli.tuning.optim import TuningAdamW  # noqa: E402
from arbooth_cli.tuning.prior import pool_batch  # noqa: E402


def timed(fn, n: int) -> float:
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / n


def forward_parts(run, reps: int) -> dict[str, float]:
    """The teacher-forced forward alone and forward + backward without the optimizer (eager stages)."""
    tr = run.transformer
    out = {}
    idx = [0, 1]
    raw = torch.cat([run.raw[i] for i in idx])
    tf = L.teacher_forcing(raw, run.vae.vae_scales(run.scales), patchify=run.vae.cfg.spatial_patchify)
    text = L.TextCond.cat([run.subject_text([run.caption_text[i] for i in idx], [run.caption_span[i] for i in idx]),
                           run.class_texts[0].repeat(2)])
    inputs = torch.cat([tf.inputs_BLd, tf.inputs_BLd])

    def fwd():
        with torch.no_grad():
            tr(text, inputs, run.scales, prefix_attention=True)

    out["fwd_s"] = round(timed(fwd, reps), 3)

    def fwd_mask():
        with torch.no_grad():
            tr(text, inputs, run.scales, prefix_attention=False)

    out["fwd_masked_attention_s"] = round(timed(fwd_mask, reps), 3)

    def fwd_bwd(ckpt=True):
        logits = tr(text, inputs, run.scales, checkpoint_blocks=ckpt, prefix_attention=True)
        logits.float().square().mean().backward()
        run.opt.zero_grad()

    out["fwd_bwd_ckpt_s"] = round(timed(fwd_bwd, reps), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="infinity-2b")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--opt-states", default="fp32,bf16,fp8", help="optimizer state kinds to time")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: pool,fwd,opt,profile")
    ap.add_argument("--memory", default="auto", help="the step's --memory policy: auto, low or high")
    args = ap.parse_args()
    skip = set(args.skip.split(","))
    spec = get_spec(args.model)
    dev = torch.device("cuda")
    work = Path(tempfile.mkdtemp(prefix="arbooth-prof-"))
    os.environ["ARBOOTH_HOME"] = str(work / "home")
    (work / "photos").mkdir()
    size = L.resolve_size(spec, None)
    make_photos(work / "photos", 3, 16 * model_scales(size, num_scales=spec.num_scales or None)[-1][1])
    comps = build_components(spec, device=dev, dtype=torch.bfloat16, roles=("transformer", "vae"),
                             allow_random_init=True)
    comps = Components(spec, dev, torch.bfloat16, comps.transformer, comps.vae,
                       RandomTextEncoder(spec.text_encoder.width, dev))  # type: ignore[arg-type]
    config = TuneConfig(photos=str(work / "photos"), token="sks", cls="dog", model=spec.name, steps=100,
                        prior_pool=8, validate_every=0, checkpoint_every=0, device="cuda", dtype="bf16",
                        memory=args.memory)
    run = L._Run(config, ResolvedModel(spec, {}, "random"), lambda k, d: None, comps)
    run.preflight()
    run.load()
    out: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    if "pool" not in skip:
        from arbooth_cli.sampling.sample import SamplingEngine, SamplingParams, sample_token_maps

        b = pool_batch(run.transformer, run.scales, config.memory)
        out["pool_batch"] = b
        params = SamplingParams(cfg=1.0, tau=0.5, top_p=0.97)
        for name, engine in (("graphs", SamplingEngine(compile=False)), ("graphs+compile", SamplingEngine())):
            def draw():
                gens = [torch.Generator(device=dev).manual_seed(i) for i in range(b)]
                sample_token_maps(run.transformer, run.vae, run.class_texts[0].repeat(b), run.scales, params, gens,
                                  engine=engine, keep_logits=True)
            t = time.perf_counter()
            draw()
            torch.cuda.synchronize()
            out[f"pool_first_call_s[{name}]"] = round(time.perf_counter() - t, 2)
            out[f"pool_s_per_sample[{name}]"] = round(timed(draw, 2) / b, 4)
            engine.release()
        torch.cuda.empty_cache()
    pool = run.build_pool()
    run.setup_training()
    for _ in range(2):
        run.train_step(pool)
    out["step_s"] = round(timed(lambda: run.train_step(pool), args.reps), 3)

    run.remove_hooks()  # forward + backward below without the optimizer inside
    if "fwd" not in skip:
        out.update(forward_parts(run, args.reps))
    torch.cuda.reset_peak_memory_stats()
    if "opt" not in skip:
        params = list(run.tuned.values())
        for kind in args.opt_states.split(","):
            for fused in (False, True):
                opt = TuningAdamW(params, lr=1e-5, state=kind, seed=0, compile=fused)
                for p in params:
                    p.grad = torch.randn_like(p) * 1e-3
                opt.step()  # compiles the fused update
                out[f"opt_s[{kind}{', fused' if fused else ''}]"] = round(timed(opt.step, 3), 4)
                del opt
                torch.cuda.empty_cache()
        # the fused update against the eager one: one step from the same state, bits that differ
        some = params[:8]
        copies = [[p.detach().clone() for p in some] for _ in range(2)]
        for fused, ws in zip((False, True), copies):
            opt = TuningAdamW(ws, lr=1e-5, state="fp8", seed=0, compile=fused)
            for w, p in zip(ws, some):
                w.grad = p.grad
            opt.step()
        differ = sum(int((a != b).sum()) for a, b in zip(*copies)) / sum(p.numel() for p in some)
        out["opt_fused_vs_eager_fraction_of_weights_differing"] = differ
        for p in params:
            p.grad = None
        torch.cuda.empty_cache()
    if "profile" not in skip:
        run.remove_hooks = run.opt.step_in_backward()
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            run.train_step(pool)
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30))
        # the kernels themselves: a recomputed block's forward runs inside the first backward node
        # that unpacks its saved tensors, so the totals above nest; self time does not
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=60, max_name_column_width=90))
    print(json.dumps(out, indent=1))
    outdir = os.environ.get("OUT")
    if outdir:
        Path(outdir, "profile_tune.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
