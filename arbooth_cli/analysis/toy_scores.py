"""The numbers of `arbooth eval`: the records they are kept in, and the toy world's exact measures.

On a model of the toy world every answer is exact: the world's pixel detectors say whether an
image shows the subject, where, how large and on which background, so the numbers are counts of
images. No model is needed here: these functions read images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import NoToySubjectError

@dataclass(frozen=True)
class Metric:
    """One number of the report. Shares (toy) have ``hits`` of ``n`` images; means (diversity, real
    metrics) have the spread ``std`` over their ``n`` items (images or prompts)."""

    value: float | None  # None: not measured (e.g. diversity with one seed)
    n: int
    hits: int | None = None
    std: float | None = None
    unit: str = "images"  # what n counts
    meaning: str = ""


def share(hits: int, n: int, meaning: str) -> Metric:
    return Metric(hits / n if n else None, n, hits, None, "images", meaning)


@dataclass
class PromptResult:
    """One prompt's images. Toy: hits per image set and the words no detector checks; real: the
    prompt's mean DINO, CLIP-I and CLIP-T."""

    index: int
    prompt: str
    class_prompt: str  # toy: its drift prompt; real: the text CLIP-T compares with
    images: int
    subject_hits: int | None = None
    text_hits: int | None = None
    base_hits: int | None = None
    class_hits: int | None = None
    unchecked: list[str] = field(default_factory=list)
    diversity: float | None = None
    distinct: int | None = None
    dino: float | None = None
    clip_i: float | None = None
    clip_t: float | None = None


@dataclass
class ImageResult:
    """What the detector read from one toy image (``checks``: subject-prompt images only)."""

    set: str
    prompt_index: int
    prompt: str
    seed: int
    found: bool
    score: float
    position: str | None
    size: str | None
    background: list[str] | None
    cls: str | None
    checks: dict[str, bool | None] | None = None


def read_toy_subject(photos_HW3: Sequence[np.ndarray], folder: Path | str, prefer_cls: str | None = None
                     ) -> tuple[Any, dict[str, int]]:
    """The subject the photos show, read from them (``toyworld.reader.read_look``), and
    ``{its description: photos it is found in again}``; :class:`NoToySubjectError` says why
    there is none."""
    from ..toyworld.reader import UnreadableSubject, read_look

    try:
        look = read_look(photos_HW3, prefer_cls=prefer_cls)
    except UnreadableSubject as exc:
        raise NoToySubjectError(str(folder), str(exc), len(photos_HW3)) from None
    return look, {look.name: look.read_back}


def attribute_accuracy(prompts: Sequence[str], imgs_NHW3: Sequence[np.ndarray]) -> dict[str, Any]:
    """The share of images showing every attribute their caption asks ("all") and each attribute
    alone (class, colour, position, size, background), by the toy world's detectors; and per class,
    the "all" share of the one-shape prompts."""
    from ..toyworld.detect import check, detect
    from ..toyworld.scene import parse_caption

    keys = ("class", "colour", "position", "size", "background", "all")
    hits = {k: 0 for k in keys}
    asked = {k: 0 for k in keys}
    by_class: dict[str, list[int]] = {}  # one-shape prompts: class -> [all-attribute hits, prompts]
    for p, img in zip(prompts, imgs_NHW3, strict=True):
        parsed = parse_caption(p)
        res = check(parsed, detect(img))
        for k in keys:
            if res.get(k) is not None:
                asked[k] += 1
                hits[k] += bool(res[k])
        if len(parsed.shapes) == 1:
            tally = by_class.setdefault(parsed.shapes[0]["cls"], [0, 0])
            tally[0] += bool(res["all"])
            tally[1] += 1
    return ({k: round(hits[k] / asked[k], 4) if asked[k] else None for k in keys} | {"images": len(prompts)}
            | {"per_class": {c: round(h / n, 4) for c, (h, n) in sorted(by_class.items())}})


def pixel_diversity(imgs_SHW3: np.ndarray) -> tuple[float | None, int]:
    """(mean over seed pairs of the mean absolute pixel difference / 255, in [0, 1]; None for one
    image) and how many of the images are distinct (not byte-identical)."""
    S = imgs_SHW3.shape[0]
    distinct = len({im.tobytes() for im in imgs_SHW3})
    if S < 2:
        return None, distinct
    x = imgs_SHW3.astype(np.int16)
    d = [float(np.abs(x[i] - x[j]).mean()) / 255.0 for i in range(S) for j in range(i + 1, S)]
    return sum(d) / len(d), distinct


def _unchecked(parsed: Any) -> list[str]:
    """What a toy prompt asks that no check measures: unknown words, a colour given to the
    subject, shapes besides it."""
    out = list(parsed.unknown)
    named = [s for s in parsed.shapes if s["name"] is not None]
    for s in parsed.shapes:
        if s["name"] is not None and s["colour"] is not None:
            out.append(f"{s['colour']} (a colour of the subject)")
        elif s["name"] is None and named:
            out.append(" ".join(w for w in (s["colour"], s["cls"]) if w) + " (a second shape)")
    return out


def toy_scores(subject: Any, token: str, prompts: Sequence[str], class_prompts: Sequence[str],
               pixels: dict[str, np.ndarray], seeds: Sequence[int]
               ) -> tuple[dict[str, Metric], list[PromptResult], list[ImageResult]]:
    """Every toy metric from the images of each set (``pixels[set]``: (prompts, seeds, H, W, 3)),
    with the per-prompt and per-image records they are counted from."""
    from ..toyworld.scene import parse_caption
    from ..toyworld.subjects import check_subject
    from .metrics import mean_and_spread

    names = {token.lower(): subject.cls}
    images: list[ImageResult] = []
    rows: list[PromptResult] = []
    for pi, (prompt, cprompt) in enumerate(zip(prompts, class_prompts)):
        parsed = parse_caption(prompt, names=names)
        row = PromptResult(pi, prompt, cprompt, len(seeds), subject_hits=0, text_hits=0, base_hits=0, class_hits=0,
                           unchecked=_unchecked(parsed))
        for set_name, set_prompt, counter in (("subject", prompt, "subject_hits"), ("base", prompt, "base_hits"),
                                              ("class", cprompt, "class_hits")):
            for si, seed in enumerate(seeds):
                m = subject.find(pixels[set_name][pi, si])
                checks = check_subject(parsed, m) if set_name == "subject" else None
                images.append(ImageResult(set_name, pi, set_prompt, seed, bool(m.found), float(m.score), m.position,
                                          m.size, None if m.background is None else list(m.background), m.cls,
                                          checks))
                setattr(row, counter, getattr(row, counter) + int(m.found))
                if checks is not None:
                    row.text_hits += int(bool(checks["all"]))  # type: ignore[operator]
        row.diversity, row.distinct = pixel_diversity(pixels["subject"][pi])
        rows.append(row)
    n = len(prompts) * len(seeds)
    metrics = {
        "subject_fidelity": share(sum(r.subject_hits or 0 for r in rows), n,
                                  "subject-prompt images (tuned model) showing the subject"),
        "text_fidelity": share(sum(r.text_hits or 0 for r in rows), n,
                               "subject-prompt images showing it at the position, size and background asked"),
        "base_fidelity": share(sum(r.base_hits or 0 for r in rows), n,
                               "subject-prompt images of the base model showing it (expect 0)"),
        "drift": share(sum(r.class_hits or 0 for r in rows), n,
                       "class-prompt images (tuned model) showing the subject (low: kept class)"),
    }
    if len(seeds) > 1:
        m, s = mean_and_spread([r.diversity for r in rows if r.diversity is not None])
        metrics["diversity"] = Metric(m, len(rows), None, s, "prompts",
                                      "mean |a - b| / 255 between seeds' images of a prompt")
        metrics["distinct"] = share(sum(r.distinct or 0 for r in rows), n,
                                    "distinct images among each prompt's seeds (identical ones count once)")
    else:
        metrics["diversity"] = Metric(None, len(rows), None, None, "prompts", "needs --seeds 2 or more")
        metrics["distinct"] = Metric(None, n, None, None, "images", "needs --seeds 2 or more")
    return metrics, rows, images
