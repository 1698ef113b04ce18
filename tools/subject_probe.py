#!/usr/bin/env python
"""Where a tuned toy subject fails: its fidelity per position and size on new backgrounds, and on
its own photos' captions.

    python tools/subject_probe.py 05-diagonal-cross
    python tools/subject_probe.py 05-diagonal-cross --fields '{"augment_zoom": 0.64}'
    python tools/subject_probe.py 05-diagonal-cross --extra-small 2      # two more small photos

Tunes one benchmark subject (bench/subject_bench_subjects.json) with the toy model's defaults plus
``--fields`` (TuneConfig fields as JSON), seed 0, then scores with `arbooth eval`: every position
x the sizes asked x two backgrounds (ones no photo shows first), 4 seeds each, and its photos' own
captions, 8 seeds each. ``--extra-small N`` adds N small views (new positions and backgrounds) to
the photos folder first, to see what more photos of that size would do.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from subject_bench import TOKEN, bench_subjects  # noqa: E402

POSITIONS = ("left", "right", "top", "bottom", "center")


def _shown(subject) -> set[str]:
    return {c for bg in subject.photo_backgrounds for c in ((bg,) if isinstance(bg, str) else bg)}


def add_small_views(subject, folder: Path, n: int) -> None:
    from PIL import Image

    from arbooth_cli.toyworld.subjects import photo_caption, render_subject

    # backgrounds no photo shows first (a subject may have none left), then the others
    spare = [c for c in subject.safe_backgrounds() if c not in _shown(subject)][::-1] + list(subject.safe_backgrounds())
    for k in range(n):
        attrs = {"file": f"{6 + k:02d}.png", "position": ("left", "bottom", "right", "center")[k % 4],
                 "size": "small", "background": (spare[k % len(spare)],)}
        img = render_subject(subject, position=attrs["position"], size="small", background=attrs["background"],
                             rng=np.random.default_rng([99, k]))
        Image.fromarray(img).save(folder / attrs["file"])
        (folder / attrs["file"]).with_suffix(".txt").write_text(photo_caption(subject, attrs) + "\n", encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("subject")
    ap.add_argument("--fields", default="{}", help="TuneConfig fields as JSON")
    ap.add_argument("--extra-small", type=int, default=0)
    ap.add_argument("--sizes", default="small,large")
    ap.add_argument("--work", default=None)
    args = ap.parse_args()
    import torch

    from arbooth_cli.config import EvalConfig, TuneConfig
    from arbooth_cli.jobs.evaluate import evaluate
    from arbooth_cli.jobs.tune import tune
    from arbooth_cli.toyworld.procedural import write_photos
    from arbooth_cli.toyworld.scene import _POS_PHRASES, Background, Shape, shape_phrase

    torch.set_num_threads(1)
    subject = {s.name: s for part in bench_subjects().values() for s in part}[args.subject]
    work = Path(args.work or tempfile.mkdtemp(prefix="arbooth-probe-"))
    os.environ.setdefault("ARBOOTH_HOME", str(work / "home"))
    photos = work / "photos"
    write_photos(subject, photos)
    add_small_views(subject, photos, args.extra_small)
    fields = json.loads(args.fields)
    tune(TuneConfig(photos=str(photos), token=TOKEN, cls=subject.cls, model="toy", name="probe", seed=0, overwrite=True,
                    validate_every=0, checkpoint_every=0, device="cpu", dtype="fp32", compile="off", **fields))
    backgrounds = ([c for c in subject.safe_backgrounds() if c not in _shown(subject)] + list(subject.safe_backgrounds()))[:2]
    print(f"backgrounds of the grid: {', '.join(backgrounds)}")
    grid = []
    for size in args.sizes.split(","):
        for pos in POSITIONS:
            for bg in backgrounds:
                s = shape_phrase(Shape(subject.cls, "", pos, size), with_size=True, name=f"{TOKEN} {subject.cls}")
                grid.append((size, pos, f"a {s} {_POS_PHRASES[pos][0]}, {Background((bg,)).phrase()}"))
    captions = [p.read_text(encoding="utf-8").strip().replace("{token}", TOKEN).replace("{cls}", subject.cls)
                for p in sorted(photos.glob("*.txt"))]
    for name, prompts, seeds in (("new backgrounds", [g[2] for g in grid], 4), ("its photos' captions", captions, 8)):
        pfile = work / "prompts.txt"
        pfile.write_text("\n".join(prompts) + "\n", encoding="utf-8")
        rep = evaluate(EvalConfig(subject="probe", prompts_file=str(pfile), seeds=seeds, device="cpu", dtype="fp32"))
        print(f"\n{name}:")
        for row, prompt in zip(rep.prompts, prompts):
            print(f"  {row.subject_hits}/{row.images}  {prompt}")
        if name == "new backgrounds":
            for size in args.sizes.split(","):
                rows = [r for r, g in zip(rep.prompts, grid) if g[0] == size]
                print(f"  {size}: {sum(r.subject_hits for r in rows)}/{sum(r.images for r in rows)}")


if __name__ == "__main__":
    main()
