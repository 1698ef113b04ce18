"""The toy world's vocabulary and scenes: what an image shows and how captions say it.

A scene is one or two upright shapes of a flat colour on a plain or striped background. Scenes are
drawn from a seeded ``numpy`` generator; captions come from varied templates and
:func:`parse_caption` reads the attributes back from any text (unknown words are reported, not
guessed). Pure Python and numpy: no torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

CLASSES = ("circle", "square", "triangle", "star", "heart", "cross", "diamond")
#: flat colours (RGB); object and background colours of one scene always differ
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 190),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
POSITIONS = ("left", "right", "top", "bottom", "center")
SIZES = ("small", "large")
#: where two objects may stand (never overlapping)
PAIRS = (("left", "right"), ("right", "left"), ("top", "bottom"), ("bottom", "top"))

Position = Literal["left", "right", "top", "bottom", "center"]


@dataclass(frozen=True)
class Shape:
    cls: str
    colour: str
    position: str
    size: str = "large"


@dataclass(frozen=True)
class Background:
    colours: tuple[str, ...]  # one: plain; two: stripes

    @property
    def kind(self) -> str:
        return "plain" if len(self.colours) == 1 else "stripes"

    def phrase(self) -> str:
        if len(self.colours) == 1:
            return f"{self.colours[0]} background"
        return f"{self.colours[0]} and {self.colours[1]} striped background"


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]
    background: Background


def sample_scene(rng: np.random.Generator, *, two_objects: float = 0.3, stripes: float = 0.3,
                 classes: tuple[str, ...] = CLASSES) -> Scene:
    """A random scene: one shape (or two, with probability ``two_objects``) on a plain or striped
    background."""
    names = list(COLOURS)
    n = 2 if rng.random() < two_objects else 1
    bg_n = 2 if rng.random() < stripes else 1
    bg = tuple(str(c) for c in rng.choice(names, size=bg_n, replace=False))
    free = [c for c in names if c not in bg]
    if n == 1:
        pos = (str(rng.choice(POSITIONS)),)
        sizes = (str(rng.choice(SIZES)),)
    else:
        pos = PAIRS[int(rng.integers(len(PAIRS)))]
        sizes = ("small", "small")  # two large shapes would touch
    shapes = tuple(Shape(str(rng.choice(classes)), str(rng.choice(free)), p, s) for p, s in zip(pos, sizes))
    return Scene(shapes, Background(bg))


# ---------------------------------------------------------------------------------------------
# captions
# ---------------------------------------------------------------------------------------------

_POS_PHRASES = {
    "left": ("on the left", "at the left", "on the left side"),
    "right": ("on the right", "at the right", "on the right side"),
    "top": ("at the top", "on the top", "near the top"),
    "bottom": ("at the bottom", "on the bottom", "near the bottom"),
    "center": ("in the center", "in the middle", "at the center"),
}

_ONE = (
    "a {s} {pos}, {bg}",
    "a {bg} with a {s} {pos}",
    "{s} {pos} over a {bg}",
    "a picture of a {s} {pos}, {bg}",
    "{pos}: a {s}; {bg}",
)
_TWO = (
    "a {s1} {pos1} and a {s2} {pos2}, {bg}",
    "a {bg} with a {s1} {pos1} and a {s2} {pos2}",
    "{s1} {pos1}, {s2} {pos2}, {bg}",
)


def shape_phrase(shape: Shape, *, with_size: bool = True, name: str | None = None) -> str:
    """``"small red star"``; ``name`` replaces the colour and class (e.g. ``"sks star"``)."""
    words = [shape.size] if with_size else []
    words += [name] if name is not None else [shape.colour, shape.cls]
    return " ".join(words)


def _articles(text: str) -> str:
    return re.sub(r"\ba ([aeiou])", r"an \1", text)


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """One caption of ``scene`` from a random template (sizes said half of the time)."""
    with_size = bool(rng.random() < 0.5)
    bg = scene.background.phrase()

    def pos(p: str) -> str:
        return str(rng.choice(_POS_PHRASES[p]))

    if len(scene.shapes) == 1:
        s = scene.shapes[0]
        t = str(rng.choice(_ONE))
        return _articles(t.format(s=shape_phrase(s, with_size=with_size), pos=pos(s.position), bg=bg))
    a, b = scene.shapes
    t = str(rng.choice(_TWO))
    return _articles(t.format(s1=shape_phrase(a, with_size=with_size), pos1=pos(a.position),
                              s2=shape_phrase(b, with_size=with_size), pos2=pos(b.position), bg=bg))


@dataclass
class ParsedCaption:
    """What a caption asks for. ``None`` fields were not said; ``unknown`` lists words outside the
    toy world's vocabulary (the eval reports them as uncheckable)."""

    shapes: list[dict[str, str | None]] = field(default_factory=list)  # cls, colour, position, size, name
    background: tuple[str, ...] | None = None
    unknown: list[str] = field(default_factory=list)


_KNOWN_WORDS = set(CLASSES) | set(COLOURS) | set(SIZES) | {
    "a", "an", "the", "on", "at", "in", "near", "of", "with", "and", "over", "side", "middle", "center",
    "centre", "left", "right", "top", "bottom", "background", "striped", "stripes", "picture", "photo",
}
#: every word the toy model's captions use (a subject token must be none of them)
VOCABULARY = frozenset(_KNOWN_WORDS)
_POS_WORDS = {"left": "left", "right": "right", "top": "top", "bottom": "bottom", "middle": "center",
              "center": "center", "centre": "center"}


def parse_caption(text: str, *, names: dict[str, str] | None = None) -> ParsedCaption:
    """Read shapes (class, colour, size, position) and the background from a caption.

    ``names`` maps identifier words to a class (``{"sks": "star"}``): ``"sks star"`` is a shape of
    that class with ``name="sks"`` and no colour. Each shape takes the colour and size words right
    before it and the first position phrase after it (before the next shape).
    """
    names = names or {}
    words = re.findall(r"[a-z]+", text.lower())
    out = ParsedCaption()
    out.unknown = sorted({w for w in words if w not in _KNOWN_WORDS and w not in names})
    # background: "<c> background", "<c1> and <c2> striped background" or "<c1> and <c2> stripes"
    bg_span: set[int] = set()
    for i, w in enumerate(words):
        if w not in ("background", "stripes"):
            continue
        striped = w == "stripes" or (i > 0 and words[i - 1] == "striped")
        j = i - 1 - (1 if i > 0 and words[i - 1] == "striped" else 0)
        cols: list[str] = []
        while j >= 0 and (words[j] in COLOURS or (words[j] == "and" and striped)):
            if words[j] in COLOURS:
                cols.insert(0, words[j])
            j -= 1
        if cols:
            out.background = tuple(cols[-2:]) if striped else (cols[-1],)
            bg_span = set(range(j + 1, i + 1))
        break
    spots = [i for i, w in enumerate(words) if (w in CLASSES or w in names) and i not in bg_span
             and not (i > 0 and words[i - 1] in names and names[words[i - 1]] == w)]  # "sks star": one shape
    positions = [i for i, w in enumerate(words) if w in _POS_WORDS and i not in bg_span]
    claimed: set[int] = set()
    bounds = []  # each shape's words: from after the previous shape to its class word
    for k, i in enumerate(spots):
        w = words[i]
        shape: dict[str, str | None] = {"cls": w, "colour": None, "size": None, "position": None, "name": None}
        if w in names:
            shape["cls"], shape["name"] = names[w], w
        j = i - 1
        while j >= 0 and words[j] in set(COLOURS) | set(SIZES):
            key = "colour" if words[j] in COLOURS else "size"
            shape[key] = shape[key] or words[j]
            j -= 1
        bounds.append((spots[k - 1] if k else -1, i, spots[k + 1] if k + 1 < len(spots) else len(words)))
        out.shapes.append(shape)
    # a position phrase belongs to the shape it follows ("a star on the left"), else to the one
    # it comes before ("on the left: a star")
    for shape, (_, i, nxt) in zip(out.shapes, bounds):
        after = [t for t in positions if i < t < nxt and t not in claimed]
        if after:
            shape["position"] = _POS_WORDS[words[after[0]]]
            claimed.add(after[0])
    for shape, (prev, i, _) in zip(out.shapes, bounds):
        before = [t for t in positions if prev < t < i and t not in claimed]
        if shape["position"] is None and before:
            shape["position"] = _POS_WORDS[words[before[-1]]]
            claimed.add(before[-1])
    return out


def prompt_problems(text: str, *, names: dict[str, str] | None = None) -> list[str]:
    """What the toy model cannot draw as ``text`` asks: words outside its vocabulary, no shape,
    and what a shape or the background leaves unsaid (a subject named in ``names`` brings its own
    colours). Empty when the toy model was trained on prompts like it."""
    parsed = parse_caption(text, names=names)
    out = []
    if parsed.unknown:
        out.append(f"words the toy model does not know: {', '.join(parsed.unknown)}")
    if not parsed.shapes:
        out.append(f"no shape ({', '.join(CLASSES)})")
    for shape in parsed.shapes:
        what = shape["name"] or shape["cls"]
        if shape["colour"] is None and shape["name"] is None:
            out.append(f"no colour for the {what}")
        if shape["position"] is None:
            out.append(f"no position for the {what} (on the left, at the top, in the middle, ...)")
    if parsed.background is None:
        out.append("no background colour (e.g. 'blue background')")
    return out


def scene_of(parsed: ParsedCaption) -> Scene | None:
    """The scene a fully specified caption describes (None when something is left unsaid)."""
    if parsed.background is None or not parsed.shapes:
        return None
    shapes = []
    for s in parsed.shapes:
        if s["colour"] is None or s["position"] is None:
            return None
        shapes.append(Shape(str(s["cls"]), str(s["colour"]), str(s["position"]), str(s["size"] or "large")))
    return Scene(tuple(shapes), Background(tuple(parsed.background)))


def with_shape(scene: Scene, index: int, **changes: str) -> Scene:
    shapes = list(scene.shapes)
    shapes[index] = replace(shapes[index], **changes)
    return Scene(tuple(shapes), scene.background)
