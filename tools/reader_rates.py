"""Validation of the toy subject reader (`arbooth eval` on toy models): read each subject from its
five photos with `toyworld.reader.read_look`, then count how often the read subject is found

- in its own photos and in fresh renders (every position, both sizes, plain and striped
  backgrounds, the renderer's jitter): should be found;
- in plain one-colour shapes of its class (every palette colour, both sizes, several positions)
  and in every other subject's photos: should not be. Another subject is one the first subject's
  exact pattern detector does not find in its photos (nor its detector in the first's): the groups
  repeat some subjects, and two cuts a few hundredths apart are one subject at 64x64.

    python tools/reader_rates.py                       # built-in + benchmark + 64 random subjects
    python tools/reader_rates.py --random 16 --json rates.json

The subjects: the 7 of examples/subjects, the subject benchmark's 24
(bench/subject_bench_subjects.json), the 24 the benchmark's seed draws before its tokenizer filter,
and ``--random`` more from the same pattern language with another seed. Prints one table; ``--json`` writes every count.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arbooth_cli.toyworld.procedural import bench_subjects, fresh_views, make_subjects, subject_from_dict  # noqa: E402
from arbooth_cli.toyworld.reader import UnreadableSubject, read_look  # noqa: E402
from arbooth_cli.toyworld.render import background, draw_shape  # noqa: E402
from arbooth_cli.toyworld.scene import COLOURS, POSITIONS, SIZES, Shape  # noqa: E402
from arbooth_cli.toyworld.subjects import SUBJECTS, subject_photos  # noqa: E402


BENCH_FILE = Path(__file__).resolve().parents[1] / "bench" / "subject_bench_subjects.json"


def plain_shapes(cls: str, rng: np.random.Generator) -> list[np.ndarray]:
    """The class in every palette colour, both sizes, three positions, on a random other colour."""
    out = []
    for colour in COLOURS:
        for size in SIZES:
            for position in rng.choice(POSITIONS, size=3, replace=False):
                bg = str(rng.choice([c for c in COLOURS if c != colour]))
                img = background((bg,), 64)
                draw_shape(img, Shape(cls, colour, str(position), size))
                out.append(np.clip(np.rint(img), 0, 255).astype(np.uint8))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--random", type=int, default=64, help="extra random subjects (seed 1)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    t0 = time.perf_counter()
    groups = {"built-in": list(SUBJECTS.values())}
    doc = json.loads(BENCH_FILE.read_text())
    groups["benchmark"] = [subject_from_dict(d) for d in doc["dev"] + doc["held-out"]]
    # the pattern language with the benchmark's seed, before the codec filter: subjects the toy
    # tokenizer loses are still subjects a user may photograph
    groups["procedural"] = [s for v in bench_subjects().values() for s in v]
    if args.random:
        groups["random"] = make_subjects(args.random, seed=1)
    everyone = [(g, s) for g, subjects in groups.items() for s in subjects]  # names repeat across groups
    photos = {(g, s.name): [img for img, _ in subject_photos(s)] for g, s in everyone}
    rows = []
    for group, subjects in groups.items():
        for s in subjects:
            rng = np.random.default_rng([len(rows), 5])
            row = {"group": group, "subject": s.name, "cls": s.cls, "pattern": s.description}
            try:
                look = read_look(photos[group, s.name])
            except UnreadableSubject as exc:
                row.update(read=False, why=str(exc))
                rows.append(row)
                continue
            views = fresh_views(s, rng)
            # other subjects: not this one, and not one its own exact detector cannot tell from it
            # (groups drawn from one generator repeat subjects; two cuts 0.05 apart look alike)
            distinct = [(g, o) for g, o in everyone if (g, o.name) != (group, s.name)
                        and not any(s.find(img).found for img in photos[g, o.name])
                        and not any(o.find(img).found for img in photos[group, s.name])]
            row["look_alikes"] = len(everyone) - 1 - len(distinct)
            others = [img for g, o in distinct for img in photos[g, o.name]]
            same_cls = [img for g, o in distinct if o.cls == s.cls for img in photos[g, o.name]]
            plain = plain_shapes(s.cls, rng)
            row.update(read=True, look=look.describe(), cls_ok=look.cls == s.cls,
                       photos=[sum(look.find(i).found for i in photos[group, s.name]), len(photos[group, s.name])],
                       fresh=[sum(look.find(i).found for i, _ in views), len(views)],
                       fresh_small=[sum(look.find(i).found for i, a in views if a["size"] == "small"),
                                    sum(a["size"] == "small" for _, a in views)],
                       plain_fp=[sum(look.find(i).found for i in plain), len(plain)],
                       others_fp=[sum(look.find(i).found for i in others), len(others)],
                       same_class_fp=[sum(look.find(i).found for i in same_cls), len(same_cls)])
            rows.append(row)
            print(f"{group:9s} {s.name:28s} photos {row['photos'][0]}/{row['photos'][1]} fresh "
                  f"{row['fresh'][0]}/{row['fresh'][1]} plain FP {row['plain_fp'][0]}/{row['plain_fp'][1]} "
                  f"others FP {row['others_fp'][0]}/{row['others_fp'][1]}", file=sys.stderr, flush=True)

    def total(key: str, group: str | None = None) -> tuple[int, int]:
        sel = [r for r in rows if r.get("read") and (group is None or r["group"] == group)]
        return sum(r[key][0] for r in sel), sum(r[key][1] for r in sel)

    summary = {"subjects": len(rows), "unreadable": [r["subject"] for r in rows if not r["read"]],
               "class_wrong": [r["subject"] for r in rows if r.get("read") and not r["cls_ok"]]}
    for key in ("photos", "fresh", "fresh_small", "plain_fp", "others_fp", "same_class_fp"):
        hits, n = total(key)
        summary[key] = {"hits": hits, "n": n, "rate": hits / n if n else None}
        for g in groups:
            gh, gn = total(key, g)
            summary[key][g] = [gh, gn]
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"\n{len(rows)} subjects ({', '.join(f'{g} {len(v)}' for g, v in groups.items())}); "
          f"unreadable: {len(summary['unreadable'])}; class wrong: {len(summary['class_wrong'])}")
    print(f"{'check':22s} {'rate':>8s} {'count':>14s}   " + "  ".join(f"{g:>12s}" for g in groups))
    for key, label in (("photos", "own photos found"), ("fresh", "fresh renders found"),
                       ("fresh_small", "  of them small"), ("plain_fp", "plain shapes (FP)"),
                       ("others_fp", "other subjects (FP)"), ("same_class_fp", "  of the same class")):
        v = summary[key]
        rate = f"{v['rate']:.4f}" if v["rate"] is not None else "-"
        print(f"{label:22s} {rate:>8s} {v['hits']:>6d}/{v['n']:<7d}   " +
              "  ".join(f"{v[g][0]:>5d}/{v[g][1]:<6d}" for g in groups))
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
