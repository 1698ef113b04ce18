"""Procedural subjects: many toy subjects from a broad pattern language, for the subject benchmark.

Each subject is a class painted with a pattern drawn from one of the families below, cycled so
every family and every class comes up. A candidate is kept only if it is readable and distinct:
its own pattern's exact detector finds it in its photos and in fresh renders at every position
and both sizes, and no earlier subject's detector finds it (nor its detector theirs). Generation is deterministic in ``seed``. Pure numpy: no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .reader import UnreadableSubject
from .scene import CLASSES, COLOURS, POSITIONS, SIZES
from .subjects import PHOTO_LAYOUT, Pattern, Subject, _safe_backgrounds, render_subject, subject_photos


def _pick(rng: np.random.Generator, k: int) -> tuple[str, ...]:
    return tuple(str(c) for c in rng.choice(list(COLOURS), size=k, replace=False))


def _split(kind: str) -> Callable[[np.random.Generator], Pattern]:
    return lambda rng: Pattern(kind, _pick(rng, 2), float(rng.uniform(-0.2, 0.2)))


def _three(kind: str) -> Callable[[np.random.Generator], Pattern]:
    def make(rng: np.random.Generator) -> Pattern:
        a, b, c = _pick(rng, 3)
        colours = (a, b, a) if rng.random() < 0.4 else (a, b, c)  # a band between two of one colour, or three
        step = float(rng.uniform(0.55, 0.75))
        mid = float(rng.uniform(-0.1, 0.1))
        return Pattern(kind, colours, cuts=(mid - step / 2, mid + step / 2))
    return make


def _rings(rng: np.random.Generator) -> Pattern:
    return Pattern("rings", _pick(rng, 2), float(rng.uniform(0.5, 0.65)))


def _rings3(rng: np.random.Generator) -> Pattern:
    return Pattern("rings", _pick(rng, 3), cuts=(float(rng.uniform(0.72, 0.8)), float(rng.uniform(0.38, 0.45))))


def _checker(rng: np.random.Generator) -> Pattern:
    a, b = _pick(rng, 2)
    return Pattern("checker", (a, b, b, a), float(rng.uniform(-0.1, 0.1)))


def _quadrants(rng: np.random.Generator) -> Pattern:
    a, b, c = _pick(rng, 3)
    return Pattern("checker", (a, b, c, a), float(rng.uniform(-0.1, 0.1)))


#: pattern families, in the order they are cycled
FAMILIES: dict[str, Callable[[np.random.Generator], Pattern]] = {
    "rows": _split("rows"), "columns": _split("columns"), "diagonal": _split("diagonal"),
    "rings": _rings, "rows3": _three("rows"), "checker": _checker, "columns3": _three("columns"),
    "antidiagonal": _split("antidiagonal"), "rings3": _rings3, "quadrants": _quadrants,
}

#: which of the five photos is on a striped background (the others are plain)
STRIPED_PHOTO = 2


def _photo_backgrounds(pattern: Pattern, rng: np.random.Generator) -> tuple[str | tuple[str, str], ...]:
    safe = list(_safe_backgrounds(tuple(sorted(set(pattern.colours)))))
    if len(safe) < 3:
        raise UnreadableSubject("too few background colours spare the pattern")
    plain = [str(c) for c in rng.choice(safe, size=len(PHOTO_LAYOUT), replace=len(safe) < len(PHOTO_LAYOUT))]
    out: list[str | tuple[str, str]] = list(plain)
    a, b = (str(c) for c in rng.choice(safe, size=2, replace=False))
    out[STRIPED_PHOTO] = (a, b)
    return tuple(out)


def fresh_views(subject: Subject, rng: np.random.Generator, n_backgrounds: int = 2) -> list[tuple[np.ndarray, dict]]:
    """Renders of the subject at every position and size, on ``n_backgrounds`` plain backgrounds
    and one striped one each, moved by the renderer's jitter."""
    safe = subject.safe_backgrounds()
    out = []
    for position in POSITIONS:
        for size in SIZES:
            bgs = [(str(c),) for c in rng.choice(safe, size=min(n_backgrounds, len(safe)), replace=False)]
            bgs.append(tuple(str(c) for c in rng.choice(safe, size=2, replace=False)))
            for bg in bgs:
                img = render_subject(subject, position=position, size=size, background=bg, rng=rng)
                out.append((img, {"position": position, "size": size, "background": bg}))
    return out


def make_subjects(n: int, seed: int = 0, *, tries_per_class: int = 8,
                  accept: Callable[[Subject], bool] | None = None, start: Sequence[Subject] = ()) -> list[Subject]:
    """``n`` readable, mutually distinct procedural subjects (see the module docstring); ``start``:
    the first ones, drawn before with the same seed, so only the rest are drawn (distinct from them).

    Readable and distinct are judged by the exact detector of each pattern (``Subject.find``), not
    by the photo reader, so the reader can be validated on these subjects without bias. A family
    that no draw makes readable on a class (three rings on a cross's thin arms) moves on to the
    next class. ``accept``: a further test a candidate must pass (the benchmark asks that the model's
    tokenizer carries it)."""
    out: list[Subject] = list(start)
    photos: list[list[np.ndarray]] = [[img for img, _ in subject_photos(s)] for s in start]
    families = list(FAMILIES)
    for i in range(len(out), n):
        # pairs of subjects share a family, so alternate halves both cover every family; a family
        # with no acceptable subject gives its slot to the next one
        first = (i // 2) % len(families)
        for family in families[first:] + families[:first]:
            got = _one_subject(i, family, seed, tries_per_class, accept, out, photos)
            if got is not None:
                out.append(got[0])
                photos.append(got[1])
                break
        else:
            raise RuntimeError(f"no readable, distinct subject of any family (seed {seed}, subject {i})")
    return out


def _one_subject(i: int, family: str, seed: int, tries_per_class: int, accept: Callable[[Subject], bool] | None,
                 out: list[Subject], photos: list[list[np.ndarray]]) -> tuple[Subject, list[np.ndarray]] | None:
    for attempt in range(tries_per_class * len(CLASSES)):
        cls = CLASSES[(3 * i + attempt // tries_per_class) % len(CLASSES)]
        rng = np.random.default_rng([seed, i, attempt])
        try:
            pattern = FAMILIES[family](rng)
            subject = Subject(f"{i + 1:02d}-{family}-{cls}", cls, f"a {cls}, {pattern.kind} of "
                              f"{'/'.join(pattern.colours)}", pattern, _photo_backgrounds(pattern, rng))
        except (UnreadableSubject, ValueError):
            continue
        imgs = [img for img, _ in subject_photos(subject)]
        views = [img for img, _ in fresh_views(subject, rng, n_backgrounds=1)]
        if not all(subject.find(img).found for img in imgs + views):
            continue
        if any(subject.find(img).found for other in photos for img in other) or \
                any(other.find(img).found for other in out for img in imgs):
            continue
        if accept is not None and not accept(subject):
            continue
        return subject, imgs
    return None


#: the benchmark's subjects: development (tune every choice on these) and held-out (scored once)
BENCH_SEED = 20261206
BENCH_SIZE = 24


def bench_subjects(seed: int = BENCH_SEED, n: int = BENCH_SIZE,
                   accept: Callable[[Subject], bool] | None = None) -> dict[str, list[Subject]]:
    """The benchmark's subjects, alternately development and held-out, so both sets cover every
    family and class (``accept``: see :func:`make_subjects`)."""
    subjects = make_subjects(n, seed, accept=accept)
    return {"dev": subjects[0::2], "held-out": subjects[1::2]}


def write_photos(subject: Subject, folder) -> list[str]:
    """The subject's five photos and their captions into ``folder`` (as in examples/subjects:
    ``01.png`` + ``01.txt`` ...); returns the image file names."""
    from pathlib import Path

    from PIL import Image

    from .subjects import photo_caption

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for img_HW3, attrs in subject_photos(subject):
        Image.fromarray(img_HW3).save(folder / attrs["file"])
        (folder / attrs["file"]).with_suffix(".txt").write_text(photo_caption(subject, attrs) + "\n", encoding="utf-8")
        names.append(attrs["file"])
    return names


def subject_to_dict(subject: Subject) -> dict:
    """A subject as plain JSON data (:func:`subject_from_dict` reads it back)."""
    p = subject.pattern
    return {"name": subject.name, "cls": subject.cls, "description": subject.description,
            "pattern": {"kind": p.kind, "colours": list(p.colours), "cut": p.cut, "cuts": list(p.cuts)},
            "photo_backgrounds": [bg if isinstance(bg, str) else list(bg) for bg in subject.photo_backgrounds]}


def subject_from_dict(data: dict) -> Subject:
    p = data["pattern"]
    pattern = Pattern(p["kind"], tuple(p["colours"]), float(p["cut"]), tuple(float(c) for c in p["cuts"]))
    bgs = tuple(bg if isinstance(bg, str) else tuple(bg) for bg in data["photo_backgrounds"])
    return Subject(data["name"], data["cls"], data["description"], pattern, bgs)  # type: ignore[arg-type]
