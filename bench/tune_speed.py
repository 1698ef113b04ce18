"""Time and memory of `arbooth tune` with random weights of a real model's size.

Runs the library's tune() on generated photos, with the model's transformer and tokenizer
built at full size from a seeded random init (no weight files needed) and a stand-in text
encoder (seeded random features of the real width, byte tokens: the T5 encoder runs once per
prompt before tuning and leaves the GPU, so it does not change the loop's time or peak).
Everything else is the real code path: photo encoding, the prior pool from the KV-cached sampler,
the training loop, checkpoints, validation images and saving the subject.

    python bench/tune_speed.py --model infinity-2b --steps 500 --out result.json
    python bench/tune_speed.py --model infinity-2b --steps 40 --prior-pool 80 --checkpoint-every 20

Prints one JSON object: phase times (load, pool, steps, checkpoints, validation, save), seconds
per step after the first few, peak GPU memory (allocated and reserved) over the whole run, and
an estimate of the whole default run from the measured parts when --steps is shorter.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arbooth_cli.config import TuneConfig  # noqa: E402
from arbooth_cli.loading import ResolvedModel, spec_hash  # noqa: E402
from arbooth_cli.models.build import Components, build_components  # noqa: E402
from arbooth_cli.models.text_encoder import TextCond  # noqa: E402
from arbooth_cli.registry import get_spec  # noqa: E402
from arbooth_cli.jobs.tune import tune  # noqa: E402


class RandomTextEncoder:
    """Seeded random features of the real width, one row per UTF-8 byte (+ </s>)."""

    def __init__(self, width: int, device: torch.device) -> None:
        from transformers import ByT5Tokenizer

        self.tokenizer = ByT5Tokenizer()
        self.width, self.device = width, device

    def encode(self, prompts: list[str]) -> TextCond:
        lens = [len(p.encode()) + 1 for p in prompts]
        feats = torch.zeros(len(prompts), max(lens), self.width)
        for i, (p, n) in enumerate(zip(prompts, lens)):
            g = torch.Generator().manual_seed(sum(p.encode()) * 1_000_003 + n)
            feats[i, :n] = torch.randn(n, self.width, generator=g) * 0.1
        return TextCond(feats.to(self.device), torch.tensor(lens, device=self.device))


def make_photos(folder: Path, n: int, size: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        img = (rng.random((size // 8, size // 8, 3)) * 255).astype(np.uint8)
        Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR).save(folder / f"photo{i}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="infinity-2b")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--prior-pool", type=int, default=None)
    ap.add_argument("--no-prior", action="store_true")
    ap.add_argument("--checkpoint-every", type=int, default=100)
    ap.add_argument("--validate-every", type=int, default=100)
    ap.add_argument("--optimizer-state", default="auto")
    ap.add_argument("--grad-checkpointing", default="auto")
    ap.add_argument("--memory", default="auto", help="auto, low or high (see docs/tuning.md)")
    ap.add_argument("--memory-limit", type=float, default=None, help="GiB the run may hold (as tune --memory-limit)")
    ap.add_argument("--compile", default="auto")
    ap.add_argument("--early-stop", type=int, default=0, help="stop on a plateau (as tune --early-stop P)")
    ap.add_argument("--train-scales", type=int, default=None, help="loss and compute on the first K scales only")
    ap.add_argument("--trace", action="store_true",
                    help="print each event (the first steps only) with the GPU memory then, to stderr")
    ap.add_argument("--step-peaks", action="store_true",
                    help="also report each training step's peak and what stays allocated between steps "
                         "(a device sync per step: leave it off for timings)")
    ap.add_argument("--save-rank", type=int, default=None,
                    help="also write the rank-R file and report its loss cost (as tune --save-rank R)")
    ap.add_argument("--photos", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--work", default=None, help="folder for photos, the store and the run (default: a temp dir)")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()

    spec = get_spec(args.model)
    dev = torch.device(args.device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    work = Path(args.work or tempfile.mkdtemp(prefix="arbooth-bench-"))
    photos = work / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    import os

    os.environ["ARBOOTH_HOME"] = str(work / "home")
    from arbooth_cli.models.schedules import model_scales
    from arbooth_cli.jobs.tune import resolve_size

    size = resolve_size(spec, None)
    from arbooth_cli.models.schedules import get_schedule

    h, w = get_schedule(size, 1.0, num_scales=len(model_scales(size, num_scales=spec.num_scales or None))).pixel_hw
    make_photos(photos, args.photos, h)

    t0 = time.perf_counter()
    comps = build_components(spec, device=dev, dtype=dtype, roles=("transformer", "vae"), allow_random_init=True)
    comps = Components(spec, dev, dtype, comps.transformer, comps.vae,
                       RandomTextEncoder(spec.text_encoder.width, dev))  # type: ignore[arg-type]
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t_build = time.perf_counter() - t0

    # a validation's time is measured from the event before it: a step event must come right before
    log_every = math.gcd(10, args.validate_every or 10, args.checkpoint_every or 10)
    config = TuneConfig(photos=str(photos), token="sks", cls="dog", model=spec.name, steps=args.steps,
                        batch_size=args.batch_size, prior=not args.no_prior, prior_pool=args.prior_pool,
                        checkpoint_every=args.checkpoint_every, validate_every=args.validate_every,
                        optimizer_state=args.optimizer_state, grad_checkpointing=args.grad_checkpointing,
                        memory=args.memory, memory_limit=args.memory_limit, train_scales=args.train_scales, early_stop=args.early_stop,
                        compile=args.compile, save_rank=args.save_rank or 0,
                        device=str(dev), dtype="bf16" if dtype == torch.bfloat16 else "fp32", log_every=log_every,
                        overwrite=True)
    marks: dict[str, float] = {}
    steps: list[tuple[int, float]] = []
    ckpt_s: list[float] = []
    val_s: list[float] = []
    info: dict = {}
    val_pauses: list[tuple[float, float]] = []  # (when, seconds) of validation
    last = [time.perf_counter()]

    def on_event(kind: str, data: dict) -> None:
        now = time.perf_counter()
        if args.trace and (kind != "step" or data["step"] <= 3):  # where a failed run got to, and its memory then
            mem = (f", {torch.cuda.memory_allocated(dev) / 2**30:.2f} GiB allocated, peak "
                   f"{torch.cuda.max_memory_allocated(dev) / 2**30:.2f}" if dev.type == "cuda" else "")
            print(f"[{now - t1:7.1f} s] {kind} {data.get('step', data.get('done', ''))}{mem}", file=sys.stderr, flush=True)
        if kind == "pool" and "pool_start" not in marks:
            marks["pool_start"] = last[0]
        if kind == "pool" and data["done"] == data["total"]:
            marks["pool_end"] = now
            if dev.type == "cuda":  # the peak from the start of tune() to the pool's end
                phase_peaks["setup_and_pool_peak_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
        if kind == "trainable":
            info.update({k: data[k] for k in ("params", "tensors", "optimizer_state", "optimizer_bytes",
                                               "grad_checkpointing", "recomputed_blocks", "blocks")})
        if kind == "start":
            marks["loop_start"] = now
        if kind == "step":
            steps.append((data["step"], now))
            if data["step"] % 50 == 0:  # a sign of life on stderr for long runs (stdout is the JSON)
                print(f"step {data['step']} at {now - t1:.1f} s", file=sys.stderr, flush=True)
        if kind == "checkpoint":
            ckpt_s.append(now)
        if kind == "validation":
            val_s.append(now - last[0])
            val_pauses.append((now, now - last[0]))
        if kind == "note" and "--memory auto" in data.get("message", ""):
            info["memory_auto"] = data["message"]
        if kind == "saved":
            marks["saved"] = now
        last[0] = now

    resolved = ResolvedModel(spec, {}, "random-init-" + spec_hash(spec))
    step_peaks: list[tuple[int, int]] = []  # (allocated before the step, the step's peak), bytes
    run_peaks = [0, 0]  # allocated, reserved: the whole run's, kept across the per-step resets
    if args.step_peaks and dev.type == "cuda":
        from arbooth_cli.jobs.tune import _Run

        plain_step = _Run.train_step

        def measured_step(self, pool):
            torch.cuda.synchronize(dev)
            run_peaks[0] = max(run_peaks[0], torch.cuda.max_memory_allocated(dev))
            run_peaks[1] = max(run_peaks[1], torch.cuda.max_memory_reserved(dev))
            torch.cuda.reset_peak_memory_stats(dev)
            before = torch.cuda.memory_allocated(dev)
            plain_step(self, pool)
            torch.cuda.synchronize(dev)
            step_peaks.append((before, torch.cuda.max_memory_allocated(dev)))

        _Run.train_step = measured_step  # type: ignore[method-assign]
    phase_peaks: dict[str, float] = {}
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t1 = time.perf_counter()
    result = tune(config, on_event=on_event, resolved=resolved, components=comps)
    total = time.perf_counter() - t1

    # Seconds per step from the windows between log points after the first one (warm-up excluded).
    # A checkpoint is written in the background after the step it snapshots, so its cost (the
    # snapshot and any slowdown while the write runs) shows up in the window after that step:
    # windows without one give the step time, the difference gives the cost per checkpoint.
    # Validation pauses are taken out of every window.
    per_step, ckpt_cost = None, None
    ck_every = args.checkpoint_every
    clean, dirty = [], []
    for (a, ta), (b, tb) in zip(steps, steps[1:]):
        paused = sum(d for when, d in val_pauses if ta < when <= tb)
        n_ck = sum(1 for s in range(a, b) if ck_every and s % ck_every == 0 and s > 0)
        (dirty if n_ck else clean).append(((tb - ta - paused), b - a, n_ck))
    if clean:
        per_step = sum(t for t, n, _ in clean) / sum(n for _, n, _ in clean)
    if dirty and per_step:
        ckpt_cost = sum(t - n * per_step for t, n, _ in dirty) / sum(k for _, _, k in dirty)
    pool_s = marks.get("pool_end", 0) - marks.get("pool_start", 0) if "pool_end" in marks else 0.0
    pool_n = config.prior_pool or config.steps * config.batch_size
    out = {
        "model": spec.name, "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__, "resolution": f"{w}x{h}", "steps": args.steps, "batch_size": args.batch_size,
        "prior": not args.no_prior, "early_stop": args.early_stop,
        "steps_run": result.steps, "train_scales": args.train_scales, "prior_pool": pool_n if not args.no_prior else 0, **info,
        "build_s": round(t_build, 2), "tune_total_s": round(total, 2), "pool_s": round(pool_s, 2),
        "pool_s_per_sample": round(pool_s / pool_n, 4) if pool_s else None,
        "setup_s_before_pool": round(marks.get("pool_start", t1) - t1, 2),
        "loop_s": round(steps[-1][1] - marks["loop_start"], 2) if steps else None,
        "s_per_step": round(per_step, 4) if per_step else None,
        "checkpoints_written": len(ckpt_s),
        "checkpoint_cost_s": round(ckpt_cost, 2) if ckpt_cost is not None else None,
        "validation_s": [round(x, 2) for x in val_s],
        "save_s": round(marks["saved"] - steps[-1][1], 2) if steps and "saved" in marks else None,
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated(dev) / 2**30, 2) if dev.type == "cuda" else None,
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved(dev) / 2**30, 2) if dev.type == "cuda" else None,
        "final_losses": result.losses,
        "lowrank": result.lowrank,
    }
    out.update(phase_peaks)
    if step_peaks:  # the steps after the first (it allocates the optimizer state)
        later = step_peaks[1:] or step_peaks
        out["step_peak_gib"] = round(max(p for _, p in later) / 2**30, 2)
        out["held_between_steps_gib"] = round(later[-1][0] / 2**30, 2)
        # the stats were reset before every step: the run's peak is the largest of the pieces
        out["peak_allocated_gib"] = round(max(run_peaks[0], torch.cuda.max_memory_allocated(dev)) / 2**30, 2)
        out["peak_reserved_gib"] = round(max(run_peaks[1], torch.cuda.max_memory_reserved(dev)) / 2**30, 2)
    if per_step and args.steps < 500:
        # the default run: 500 steps, a pool of 1000, checkpoints and validation every 100
        ck = ckpt_cost or 0.0
        va = (sum(val_s) / len(val_s)) if val_s else 0.0
        pool_1000 = (pool_s / pool_n * 1000) if pool_s else 0.0
        out["estimate_default_run_s"] = round(out["setup_s_before_pool"] + pool_1000 + 500 * per_step + 4 * ck
                                              + 5 * va + (out["save_s"] or 0), 1)
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
