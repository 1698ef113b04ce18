"""Quality cost of the fast sampling options in the toy world, where it is exact.

    python bench/fast_quality.py --variants exact,cfg-until:3,skip:1,prune:3:0.4/4:0.5 --prompts 600 --out q.json

Samples the embedded `toy` model on held-out prompts (attribute combinations it never saw in
training) with the model's sampling defaults, once exactly and once per variant (the syntax of
``bench/gen_speed.py --variants``), the same seed for the same prompt every time, and reports for
each: the share of images showing every asked attribute and each attribute alone, by the toy
world's detectors; against exact sampling, the share of bits drawn identically per scale and the
mean absolute difference of the images (0-255); and the wall time on this device.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from gen_speed import parse_variant  # noqa: E402

from arbooth_cli.analysis.toy_scores import attribute_accuracy  # noqa: E402
from arbooth_cli.loading import load_components, resolve_model  # noqa: E402
from arbooth_cli.models.schedules import model_scales  # noqa: E402
from arbooth_cli.sampling.sample import SamplingParams, decode_images, sample_token_maps  # noqa: E402
from arbooth_cli.toyworld.dataset import held_out_prompts  # noqa: E402


def run(comps, scales, prompts: list[str], params: SamplingParams, batch: int, device) -> tuple[list, np.ndarray, float]:
    bits: list[list[torch.Tensor]] = []
    imgs = []
    t0 = time.perf_counter()
    for s in range(0, len(prompts), batch):
        chunk = prompts[s : s + batch]
        gens = [torch.Generator(device=device).manual_seed(1000 + s + i) for i in range(len(chunk))]
        maps = sample_token_maps(comps.transformer, comps.vae, comps.text_encoder.encode(chunk), scales, params, gens)
        bits.append(maps.bits_per_scale)
        imgs.append(decode_images(comps.vae, maps.summed_Bd1HW).permute(0, 2, 3, 1).cpu().numpy())
    per_scale = [torch.cat([b[si] for b in bits]) for si in range(len(bits[0]))]
    return per_scale, np.concatenate(imgs), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="exact,cfg-until:3,skip:1,prune:3:0.4/4:0.5")
    ap.add_argument("--prompts", type=int, default=600, help="held-out prompts (one image each)")
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    dev = torch.device(args.device)
    resolved = resolve_model("toy")
    comps = load_components(resolved, device=dev, dtype=torch.float32)
    spec = resolved.spec
    scales = model_scales(spec.sampling.size, num_scales=spec.num_scales)
    prompts = [p for p, _ in held_out_prompts(args.prompts, seed=2)]
    base = dict(cfg=spec.sampling.cfg, tau=spec.sampling.tau, top_p=spec.sampling.top_p)
    exact_bits: list = []
    exact_imgs = np.zeros(0)
    rows = []
    for variant in ["exact"] + [v for v in args.variants.split(",") if v != "exact"]:
        params = SamplingParams(**base, **parse_variant(variant))
        bits, imgs, secs = run(comps, scales, prompts, params, args.batch, dev)
        if variant == "exact":
            exact_bits, exact_imgs = bits, imgs
        acc = attribute_accuracy(prompts, list(imgs))
        row = {"variant": variant, "seconds": round(secs, 2), **{k: acc[k] for k in
                                                                  ("all", "class", "colour", "position", "size", "background")},
               "bits_identical_per_scale": [round(float((a == b).float().mean()), 4) for a, b in zip(exact_bits, bits)],
               "image_mean_abs_diff": round(float(np.abs(imgs.astype(np.float32) - exact_imgs).mean()), 3),
               "per_class": acc["per_class"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = {"model": spec.name, "model_hash": resolved.model_hash, "prompts": len(prompts), "device": str(dev),
           "threads": torch.get_num_threads(), "rows": rows}
    print("\n| variant | all attributes | class | colour | position | size | background | bits identical (last scales) | image diff | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        last = ", ".join(f"{x:.2f}" for x in r["bits_identical_per_scale"][-3:])
        print(f"| {r['variant']} | {r['all']:.3f} | {r['class']:.3f} | {r['colour']:.3f} | {r['position']:.3f} | "
              f"{r['size']:.3f} | {r['background']:.3f} | {last} | {r['image_mean_abs_diff']:.1f} | {r['seconds']:.1f} |")
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
