"""How well the toy world's detectors read back rendered scenes, clean and degraded.

    python tools/detector_rates.py                # 1000 scenes, 20 per class and size under blur
    python tools/detector_rates.py --scenes 300 --per-class 10

Prints the share of seeded scenes whose every captioned attribute `detect` + `check` read back,
clean and under a 3x3 box blur plus noise of std 12, then, per class and size, how many of
`--per-class` single shapes keep their class and size under Gaussian blurs like a tokenizer's
reconstruction. The numbers in docs/toyworld.md come from the defaults.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arbooth_cli.toyworld.detect import check, detect  # noqa: E402
from arbooth_cli.toyworld.render import render  # noqa: E402
from arbooth_cli.toyworld.scene import (  # noqa: E402
    CLASSES,
    COLOURS,
    POSITIONS,
    SIZES,
    Background,
    Scene,
    Shape,
    caption,
    parse_caption,
    sample_scene,
)


def scene_rates(n: int, seed: int) -> tuple[float, float, float]:
    """(clean share, box blur + noise share, ms per detection)."""
    rng = np.random.default_rng(seed)
    clean, heavy = [], []
    t0 = time.perf_counter()
    for _ in range(n):
        sc = sample_scene(rng)
        parsed = parse_caption(caption(sc, rng))
        img = render(sc, 64, rng=rng)
        clean.append(check(parsed, detect(img))["all"])
        soft = np.asarray(Image.fromarray(img).filter(ImageFilter.BoxBlur(1)), dtype=np.float64)
        heavy.append(check(parsed, detect(np.clip(soft + rng.normal(0, 12, soft.shape), 0, 255)))["all"])
    ms = (time.perf_counter() - t0) / (2 * n) * 1000
    return float(np.mean(clean)), float(np.mean(heavy)), ms


def blur_rates(per_class: int, blur: float, seed: int, classes: tuple[str, ...] = CLASSES) -> dict[str, int]:
    """Per class and size, how many single shapes keep class and size under a Gaussian blur
    (tests/toyworld/test_toyworld.py calls it one class at a time)."""
    rng = np.random.default_rng(seed)
    out = {}
    for cls in classes:
        for size in SIZES:
            hits = 0
            for _ in range(per_class):
                col, bg = rng.choice(list(COLOURS), 2, replace=False)
                sc = Scene((Shape(cls, str(col), str(rng.choice(POSITIONS)), size),), Background((str(bg),)))
                img = np.asarray(Image.fromarray(render(sc, 64, rng=rng)).filter(ImageFilter.GaussianBlur(blur)))
                found = [f for f in detect(img).shapes if f.colour == col]
                hits += bool(found) and (found[0].cls, found[0].size) == (cls, size)
            out[f"{cls}-{size}"] = hits
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenes", type=int, default=1000)
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--blurs", type=float, nargs="+", default=[0.8, 1.0, 1.2, 1.4])
    ap.add_argument("--seed", type=int, default=2024)
    args = ap.parse_args(argv)
    clean, heavy, ms = scene_rates(args.scenes, args.seed)
    print(f"{args.scenes} scenes: every attribute read back {clean:.3f} clean, {heavy:.3f} under 3x3 box blur "
          f"+ noise std 12 ({ms:.1f} ms per detection)")
    for blur in args.blurs:
        rates = blur_rates(args.per_class, blur, args.seed + 1)
        short = {k: v for k, v in rates.items() if v < args.per_class}
        print(f"Gaussian blur {blur} px: class and size kept by all {args.per_class} of every class-size"
              + (f" but {short}" if short else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
