"""Time and memory of `arbooth inspect noise` with random weights of a real model's size.

Builds the transformer and tokenizer at full size from a seeded random init (no weight files) and
a stand-in text encoder (see tune_speed.py), then runs the library's inspect_noise() over every
scale of the model's schedule: per seed one reference plus one perturbed run per scale, decoded,
measured (L1, PSNR, SSIM, tokenizer features) and written as the grid, plot and JSON report.

    python bench/inspect_noise.py --model infinity-2b --seeds 4 --compile on --out result.json

Prints one JSON object: build time, the analysis's wall time (first call, with compilation when
--compile on, and a second identical call), images sampled, seconds per image, peak GPU memory.
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

from arbooth_cli.jobs.inspect_noise import inspect_noise  # noqa: E402
from arbooth_cli.config import InspectNoiseConfig  # noqa: E402
from arbooth_cli.loading import ResolvedModel, spec_hash  # noqa: E402
from arbooth_cli.models.build import Components, build_components  # noqa: E402
from arbooth_cli.registry import get_spec  # noqa: E402
from tune_speed import RandomTextEncoder  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="infinity-2b")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--scales", default="all")
    ap.add_argument("--mode", default="random")
    ap.add_argument("--strength", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=0)
    ap.add_argument("--compile", default="on")
    ap.add_argument("--repeat", type=int, default=2, help="identical calls (the first one compiles)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--work", default=None)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()

    spec = get_spec(args.model)
    dev = torch.device(args.device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    work = Path(args.work or tempfile.mkdtemp(prefix="arbooth-bench-"))
    os.environ["ARBOOTH_HOME"] = str(work / "home")

    t0 = time.perf_counter()
    built = build_components(spec, device=dev, dtype=dtype, roles=("transformer", "vae"), allow_random_init=True)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t_build = time.perf_counter() - t0
    resolved = ResolvedModel(spec, {}, "random-init-" + spec_hash(spec))

    runs = []
    for i in range(args.repeat):
        comps = Components(spec, dev, dtype, built.transformer, built.vae,
                           RandomTextEncoder(spec.text_encoder.width, dev))  # type: ignore[arg-type]
        config = InspectNoiseConfig(prompt="a photo of a dog", model=spec.name, scales=args.scales, mode=args.mode,
                                    strength=args.strength, seeds=args.seeds, features="tokenizer",
                                    batch_size=args.batch_size, out_dir=str(work / f"out{i}"), overwrite=True,
                                    compile=args.compile)  # type: ignore[arg-type]
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        plan: dict = {}
        report = inspect_noise(config, resolved=resolved, components=comps,
                               on_event=lambda k, d: plan.update(d) if k == "plan" else None)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - t
        runs.append({
            "wall_s": round(wall, 2), "images": report.samples, "s_per_image": round(wall / report.samples, 4),
            "batch": plan.get("batch"), "scales": len(report.scales), "image_size": list(report.image_size),
            "peak_alloc_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if dev.type == "cuda" else None,
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2) if dev.type == "cuda" else None,
            "l1_by_scale": [round(sc.summary()["l1"]["mean"], 4) for sc in report.scales],
        })
    result = {
        "model": spec.name, "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__, "seeds": args.seeds, "mode": args.mode, "strength": args.strength,
        "compile": args.compile, "build_s": round(t_build, 1), "runs": runs,
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
