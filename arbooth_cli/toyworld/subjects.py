"""Procedural subjects for personalization experiments: toy shapes with a multi-colour pattern.

Every training shape is one flat colour, so a patterned shape (a star with a red top and a yellow
bottom) is outside the training distribution: a model can only draw it after tuning on its photos.
A subject is a toy class plus a :class:`Pattern` (regions of the shape's normalised box, one colour
each). The renderer paints it through ``draw_shape(..., paint=)``; :func:`detect_subject` finds a
foreground object of the subject's class and accepts it only if every pattern region is mostly
its own colour, so a flat shape of the class (one region wrong) or the pattern on another class
(wrong silhouette) is rejected. Pure numpy: no torch.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .detect import _NAMES, MIN_AREA, _components, border_background, classify, colour_labels, place
from .render import POSITION_CENTRE, draw_shape, shape_mask
from .render import background as _background_HW3
from .scene import (
    _KNOWN_WORDS,
    _ONE,
    _POS_PHRASES,
    COLOURS,
    Background,
    ParsedCaption,
    Shape,
    _articles,
    shape_phrase,
)

#: share of a pattern region's inner pixels that must show its colour
MIN_REGION_SHARE = 0.6
#: inner pixels of a region a pattern check needs (fewer: the region is unreadable)
MIN_REGION_PIXELS = 4
#: a pixel counts for a region only if points this many pixels away (8 directions) lie inside the
#: shape and in the same region: anti-aliased edges and misplaced boxes do not blur the check
EDGE_MARGIN_PX = 0.75


#: pattern kinds and their region counts (None: one region per colour, at least two)
PATTERN_KINDS: dict[str, int | None] = {"rows": None, "columns": None, "diagonal": None, "antidiagonal": None,
                                        "rings": None, "checker": 4}


@dataclass(frozen=True)
class Pattern:
    """Regions of a shape's normalised box (x right, y down, in [-1, 1]) and their colours.

    ``kind``:
      - ``"rows"``: bands from the top (region 0) down; ``"columns"``: from the left;
        ``"diagonal"``: bands across the line x + y = c, from the top-left corner;
        ``"antidiagonal"``: across x - y = c, from the bottom-left corner;
      - ``"rings"``: from the outside (region 0) in, split at radii;
      - ``"checker"``: quadrants split at ``cut`` on both axes: 0 top-left, 1 top-right, 2 bottom-left,
        3 bottom-right.

    Bands and rings have one region per colour (two or more; a colour may come back, as in
    red-white-red). Their boundaries are ``cuts`` (rising coordinates; for rings, falling radii),
    else ``(cut,)`` for two regions, else evenly spaced over the box (rings: radii 1 .. 0).
    """

    kind: str
    colours: tuple[str, ...]  # one per region
    cut: float = 0.0
    cuts: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in PATTERN_KINDS or any(c not in COLOURS for c in self.colours):
            raise ValueError(f"bad pattern {self.kind!r} with colours {self.colours}")
        n = PATTERN_KINDS[self.kind]
        if (n is not None and len(self.colours) != n) or len(self.colours) < 2:
            raise ValueError(f"a {self.kind!r} pattern needs {n or 'two or more'} colours, got {len(self.colours)}")
        if len(set(self.colours)) < 2:
            raise ValueError("a pattern needs at least two colours, else it is a flat training shape")
        if self.kind != "checker" and self.cuts and len(self.cuts) != len(self.colours) - 1:
            raise ValueError(f"{len(self.colours)} regions need {len(self.colours) - 1} cuts, got {self.cuts}")
        if any(a[0] == a[1] for a in zip(self.colours, self.colours[1:])) and self.kind != "checker":
            raise ValueError(f"neighbouring regions of one colour are one region: {self.colours}")

    def boundaries(self) -> tuple[float, ...]:
        if self.cuts:
            return self.cuts
        n = len(self.colours)
        if n == 2:
            return (self.cut,)
        if self.kind == "rings":
            return tuple(1.0 - k / n for k in range(1, n))
        return tuple(-1.0 + 2.0 * k / n for k in range(1, n))

    def region(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Region index of each point."""
        if self.kind == "checker":
            return 2 * (y >= self.cut).astype(np.int64) + (x >= self.cut).astype(np.int64)
        if self.kind == "rings":
            r2 = x * x + y * y
            return sum((r2 <= c * c).astype(np.int64) for c in self.boundaries())
        coord = {"rows": lambda: y, "columns": lambda: x, "diagonal": lambda: (x + y) / 2,
                 "antidiagonal": lambda: (x - y) / 2}[self.kind]()
        return sum((coord >= c).astype(np.int64) for c in self.boundaries())

    def paint(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """(..., 3) RGB of each point: the ``paint`` hook of ``render.draw_shape``."""
        rgb = np.array([COLOURS[c] for c in self.colours], dtype=np.float64)
        return rgb[self.region(x, y)]


@dataclass(frozen=True)
class Subject:
    """A personalization subject: a toy class painted with a pattern no training shape has."""

    name: str
    cls: str  # the toy class it belongs to (the class word of its prompts)
    description: str
    pattern: Pattern
    #: backgrounds of its five photos: a colour (plain) or two (stripes)
    photo_backgrounds: tuple[str | tuple[str, str], ...]

    @property
    def colours(self) -> frozenset[str]:
        return frozenset(self.pattern.colours)

    def safe_backgrounds(self) -> tuple[str, ...]:
        """Colours a background may have: neither a pattern colour nor one that anti-aliased blends
        of two pattern colours look like (orange between red and yellow). The detector takes the
        border colours as background, so either would cut the subject apart."""
        return _safe_backgrounds(self.pattern.colours)

    def find(self, img_HW3: np.ndarray) -> SubjectMatch:
        """Whether an image shows this subject, and where (:func:`detect_subject`)."""
        return detect_subject(img_HW3, self)


@lru_cache(maxsize=None)
def _safe_backgrounds(colours: tuple[str, ...]) -> tuple[str, ...]:
    """The palette less ``colours`` and the palette colours their pairwise blends get labelled as."""
    rgb = [np.asarray(COLOURS[c], dtype=np.float64) for c in set(colours)]
    t = np.linspace(0.1, 0.9, 17)[:, None]
    blends = [a * (1 - t) + b * t for i, a in enumerate(rgb) for b in rgb[i + 1:]]
    near = {_NAMES[i] for b in blends for i in colour_labels(b[None]).ravel() if i >= 0}
    return tuple(c for c in COLOURS if c not in colours and c not in near)


SUBJECTS: dict[str, Subject] = {s.name: s for s in (
    Subject("twotone-star", "star", "a star whose upper half is red and lower half yellow",
            Pattern("rows", ("red", "yellow"), 0.0), ("blue", "green", "black", "purple", "white")),
    Subject("bullseye-circle", "circle", "a circle with a blue outer ring and an orange inner disc "
            "(inner radius 0.55 of the circle's)",
            Pattern("rings", ("blue", "orange"), 0.55), ("white", "green", "yellow", "black", "red")),
    Subject("split-heart", "heart", "a heart whose left half is purple and right half white",
            Pattern("columns", ("purple", "white"), 0.0), ("green", "blue", "orange", "black", "yellow")),
    Subject("checker-square", "square", "a square with a 2x2 checker: black top-left and "
            "bottom-right, white top-right and bottom-left",
            Pattern("checker", ("black", "white", "white", "black"), 0.0), ("red", "green", "blue", "purple",
                                                                            "orange")),
    Subject("split-circle", "circle", "a circle whose left half is yellow and right half blue",
            Pattern("columns", ("yellow", "blue"), 0.0), ("red", "white", "purple", "black", "orange")),
    Subject("twotone-square", "square", "a square whose upper half is red and lower half white",
            Pattern("rows", ("red", "white"), 0.0), ("blue", "green", "black", "yellow", "purple")),
    Subject("split-diamond", "diamond", "a diamond whose left half is green and right half white",
            Pattern("columns", ("green", "white"), 0.0), ("red", "blue", "black", "purple", "orange")),
)}

#: the five photos of every subject: (position, size); mostly large, one small
PHOTO_LAYOUT = (("center", "large"), ("left", "large"), ("right", "large"), ("top", "small"),
                ("bottom", "large"))


def _check_backgrounds(subject: Subject, colours: tuple[str, ...]) -> None:
    bad = [c for c in colours if c not in subject.safe_backgrounds()]
    if bad or not 1 <= len(colours) <= 2:
        raise ValueError(f"background {colours} does not suit {subject.name} "
                         f"(one or two of {', '.join(subject.safe_backgrounds())})")


def render_subject(subject: Subject, *, position: str, size: str, background: tuple[str, ...],
                   px: int = 64, rng: np.random.Generator | None = None, jitter: float = 0.04) -> np.ndarray:
    """The subject on a plain (one colour) or striped (two) background, (px, px, 3) uint8.
    ``rng`` moves it by up to ``jitter`` of the side, as ``render.render`` moves training shapes."""
    background = tuple(background)
    _check_backgrounds(subject, background)
    img_HW3 = _background_HW3(background, px)
    cx, cy = POSITION_CENTRE[position]
    if rng is not None and jitter > 0:
        cx, cy = cx + rng.uniform(-jitter, jitter), cy + rng.uniform(-jitter, jitter)
    draw_shape(img_HW3, Shape(subject.cls, subject.pattern.colours[0], position, size), centre=(cx, cy),
               paint=subject.pattern.paint)
    return np.clip(np.rint(img_HW3), 0, 255).astype(np.uint8)


def subject_photos(subject: Subject) -> list[tuple[np.ndarray, dict]]:
    """The subject's five photos (fixed positions, sizes and plain backgrounds; a fixed jitter),
    each with its attributes: file, position, size, background."""
    seed = zlib.crc32(subject.name.encode())  # stable across runs, unlike hash()
    out = []
    for i, ((position, size), bg) in enumerate(zip(PHOTO_LAYOUT, subject.photo_backgrounds)):
        bg_ = (bg,) if isinstance(bg, str) else tuple(bg)
        img_HW3 = render_subject(subject, position=position, size=size, background=bg_,
                                 rng=np.random.default_rng([seed, i]))
        out.append((img_HW3, {"file": f"{i + 1:02d}.png", "position": position, "size": size,
                              "background": bg_}))
    return out


# ---------------------------------------------------------------------------------------------
# detection
# ---------------------------------------------------------------------------------------------


@dataclass
class SubjectMatch:
    """The best candidate object for a subject. ``score``: the lowest share of a pattern region
    showing its colour (0 when the class does not match). Position, size and bbox (top, left,
    bottom, right; exclusive) are None when the image has no foreground object."""

    found: bool
    score: float
    position: str | None = None
    size: str | None = None
    background: tuple[str, ...] | None = None  # border colours, as detect.Detection.background
    bbox: tuple[int, int, int, int] | None = None
    cls: str | None = None  # the candidate's class (template IoU)
    iou: float = 0.0  # its template IoU


@lru_cache(maxsize=None)
def _class_box(cls: str) -> tuple[float, float, float, float]:
    """(x0, x1, y0, y1): the class mask's extent in normalised coordinates, to map a detected
    bounding box back onto the pattern."""
    n = 1200
    g = (np.arange(n) + 0.5) / n * 2.4 - 1.2
    X, Y = np.meshgrid(g, g)
    m = shape_mask(cls, X, Y)
    xs, ys = X[m], Y[m]
    half = 1.2 / n
    return float(xs.min() - half), float(xs.max() + half), float(ys.min() - half), float(ys.max() + half)


def layout_shares(lab: np.ndarray, region: np.ndarray, cls: str, expected, colours: tuple[str, ...]) -> list[float]:
    """Per part of a layout, the share of its inner pixels labelled with its colour; the object is
    taken to be a ``cls`` shape filling the region's bounding box.

    ``expected(x, y)`` gives the part index of points of the normalised box (-1: no part, not
    checked) and ``colours[k]`` part k's colour. A pixel is inner when points ``EDGE_MARGIN_PX``
    away (8 directions) lie in the shape and in the same part."""
    rows, cols = np.nonzero(region)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    x0, x1, y0, y1 = _class_box(cls)
    sx, sy = (x1 - x0) / (right - left), (y1 - y0) / (bottom - top)  # one pixel, normalised
    nx = x0 + (cols + 0.5 - left) * sx
    ny = y0 + (rows + 0.5 - top) * sy
    k = expected(nx, ny)
    keep = shape_mask(cls, nx, ny) & (k >= 0)
    d = EDGE_MARGIN_PX
    for ox, oy in ((d, 0), (-d, 0), (0, d), (0, -d), (d, d), (d, -d), (-d, d), (-d, -d)):
        px_, py_ = nx + ox * sx, ny + oy * sy
        keep &= shape_mask(cls, px_, py_) & (expected(px_, py_) == k)
    got = lab[rows, cols]
    shares = []
    for r, colour in enumerate(colours):
        sel = keep & (k == r)
        n = int(sel.sum())
        shares.append(float((got[sel] == _NAMES.index(colour)).mean()) if n >= MIN_REGION_PIXELS else 0.0)
    return shares


def region_shares(lab: np.ndarray, region: np.ndarray, subject: Subject) -> list[float]:
    """Per pattern region, the share of its inner pixels labelled with its colour (see
    :func:`layout_shares`)."""
    return layout_shares(lab, region, subject.cls, subject.pattern.region, subject.pattern.colours)


def _hull_distance(img_HW3: np.ndarray, colours: list[str]) -> np.ndarray:
    """Each pixel's RGB distance to the nearest blend of two of ``colours`` (or to the colour,
    if only one): how far it is from anything their anti-aliased or blurred edges can make."""
    p = img_HW3.astype(np.float64)
    rgb = [np.asarray(COLOURS[c], dtype=np.float64) for c in colours]
    pairs = [(a, b) for i, a in enumerate(rgb) for b in rgb[i + 1:]] or [(rgb[0], rgb[0])]
    best = np.full(p.shape[:2], np.inf)
    for a, b in pairs:
        ab = b - a
        t = np.clip((p - a) @ ab / max(float(ab @ ab), 1e-9), 0, 1)
        best = np.minimum(best, np.linalg.norm(p - a - t[..., None] * ab, axis=-1))
    return best


def find_layout(img_HW3: np.ndarray, cls: str, expected, colours: tuple[str, ...]) -> SubjectMatch:
    """The best object of class ``cls`` painted with a layout (``expected``, ``colours``: see
    :func:`layout_shares`) in an RGB image (uint8 or float 0-255).

    The background is the border's colours (``detect.border_background``); foreground is every
    pixel nearer to the layout's colours and their blends than to the background's. Each
    foreground region big enough is classified by template IoU (``detect.classify``) and, if it
    is of class ``cls``, its layout is read (``layout_shares``). Found: the class matches and
    every part is at least ``MIN_REGION_SHARE`` its colour.
    """
    lab = colour_labels(img_HW3)
    H, W = lab.shape
    bg = border_background(lab)
    if not bg:
        return SubjectMatch(False, 0.0)
    background_names = tuple(_NAMES[i] for i in bg)
    # foreground: nearer to the layout's colours (and their blends) than to the background's,
    # i.e. at least half covered, so blurred or anti-aliased rims neither fatten nor thin it
    fg = _hull_distance(img_HW3, sorted(set(colours))) < _hull_distance(img_HW3, list(background_names))
    best: tuple | None = None
    for region in _components(fg):
        area = int(region.sum())
        if area < MIN_AREA * H * W:
            continue
        got_cls, iou, radius = classify(region)
        score = min(layout_shares(lab, region, cls, expected, colours)) if got_cls == cls else 0.0
        found = got_cls == cls and score >= MIN_REGION_SHARE
        key = (found, score, area)
        if best is None or key > best[0]:
            best = (key, region, got_cls, iou, radius)
    if best is None:
        return SubjectMatch(False, 0.0, background=background_names)
    (found, score, _), region, got_cls, iou, radius = best
    position, size, box = place(region, radius)
    return SubjectMatch(found, score, position, size, background_names, box, got_cls, iou)


def detect_subject(img_HW3: np.ndarray, subject: Subject) -> SubjectMatch:
    """Whether an RGB image (uint8 or float 0-255) shows ``subject``, and where: an object of its
    class whose every pattern region is mostly its colour (:func:`find_layout`)."""
    return find_layout(img_HW3, subject.cls, subject.pattern.region, subject.pattern.colours)


# ---------------------------------------------------------------------------------------------
# prompts
# ---------------------------------------------------------------------------------------------

#: (position, size or None: unsaid, background slot) of the evaluation prompts; slot i < 0 is a
#: striped background of two safe colours
_PROMPT_LAYOUT = (
    ("left", None, 0), ("right", "large", 1), ("top", "small", 2), ("bottom", None, 3),
    ("center", "large", 4), ("left", "small", 5), ("right", None, -1), ("top", "large", 1),
    ("bottom", "small", 0), ("center", None, -2),
)


def _prompt_specs(subject: Subject) -> list[tuple[str, str | None, tuple[str, ...], int]]:
    safe = subject.safe_backgrounds()
    out = []
    for i, (position, size, slot) in enumerate(_PROMPT_LAYOUT):
        bg = (safe[slot % len(safe)],) if slot >= 0 else (safe[(-slot) % len(safe)], safe[(-slot + 2) % len(safe)])
        out.append((position, size, bg, i))
    return out


def _prompts(subject: Subject, name: str) -> list[str]:
    out = []
    for position, size, bg, i in _prompt_specs(subject):
        s = shape_phrase(Shape(subject.cls, "", position, size or "large"), with_size=size is not None, name=name)
        pos = _POS_PHRASES[position][i % len(_POS_PHRASES[position])]
        out.append(_articles(_ONE[i % len(_ONE)].format(s=s, pos=pos, bg=Background(bg).phrase())))
    return out


def subject_prompts(subject: Subject, token: str) -> list[str]:
    """Evaluation prompts naming the subject by ``token`` (``"a sks star on the left, green
    background"``): varied positions, sizes (said or not) and backgrounds that spare the pattern's
    colours, in the caption templates of scene.py. ``parse_caption(p, names={token: cls})`` reads
    them back; :func:`check_subject` checks them."""
    if not re.fullmatch(r"[a-z]+", token) or token in _KNOWN_WORDS:
        raise ValueError(f"token {token!r} must be lowercase letters outside the toy vocabulary")
    return _prompts(subject, f"{token} {subject.cls}")


def class_prompts(subject: Subject) -> list[str]:
    """The same prompts as :func:`subject_prompts`, in the same order, with the plain class
    (``"a star on the left, green background"``): the prior the tuned model should keep."""
    return _prompts(subject, subject.cls)


def check_subject(parsed: ParsedCaption, match: SubjectMatch) -> dict[str, bool | None]:
    """Which asked attributes an image's subject match shows: subject (found), position, size
    (of the named shape, else the first) and background; None for what was not said. ``all``:
    the subject is found and every asked attribute holds."""
    result: dict[str, bool | None] = {"subject": match.found, "position": None, "size": None, "background": None}
    want = next((s for s in parsed.shapes if s["name"] is not None), parsed.shapes[0] if parsed.shapes else None)
    if want is not None:
        if want["position"] is not None:
            result["position"] = match.found and match.position == want["position"]
        if want["size"] is not None:
            result["size"] = match.found and match.size == want["size"]
    if parsed.background is not None:
        result["background"] = match.background is not None and set(parsed.background) == set(match.background)
    result["all"] = all(v for v in result.values() if v is not None)
    return result


__all__ = ["Pattern", "Subject", "SUBJECTS", "SubjectMatch", "render_subject", "subject_photos",
           "detect_subject", "region_shares", "subject_prompts", "class_prompts", "check_subject"]


def photo_caption(subject: Subject, attrs: dict) -> str:
    """The caption file of a photo: what it shows in the toy world's words, with ``{token}`` and
    ``{cls}`` left for ``arbooth tune`` to fill. Saying the position and background keeps tuning
    from tying them to the token (the text-fidelity half of the evaluation)."""
    where = _POS_PHRASES[attrs["position"]][0]
    shape = f"a {attrs['size']} {{token}} {{cls}} {where}"
    return f"{shape}, {Background(tuple(attrs['background'])).phrase()}"
