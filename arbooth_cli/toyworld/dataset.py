"""The embedded model's training set and its held-out test prompts.

Generalisation is measured on prompts the model never saw: a fixed tenth of the (class, colour,
position) triples never appear in a training image (:data:`HELD_OUT`), while each of their
parts (the class, the colour, the position, and every pair of them but one) does, so the
model must compose. :func:`training_example` rejects any scene with a held-out shape;
:func:`held_out_prompts` draws test captions from those triples only.
"""

from __future__ import annotations

import itertools

import numpy as np

from .render import POSITION_CENTRE, background, draw_shape, render
from .scene import CLASSES, COLOURS, POSITIONS, SIZES, Background, Scene, Shape, caption, sample_scene
from .subjects import SUBJECTS, Pattern

Triple = tuple[str, str, str]  # (class, colour, position)


def _held_out(seed: int = 20261122, share: float = 0.1) -> frozenset[Triple]:
    triples = list(itertools.product(CLASSES, COLOURS, POSITIONS))
    rng = np.random.default_rng(seed)
    k = round(share * len(triples))
    return frozenset(triples[i] for i in sorted(rng.choice(len(triples), size=k, replace=False)))


#: (class, colour, position) triples that no training image shows (28 of 280)
HELD_OUT: frozenset[Triple] = _held_out()


def is_held_out(scene: Scene) -> bool:
    return any((s.cls, s.colour, s.position) in HELD_OUT for s in scene.shapes)


def weighted_classes(weights: dict[str, int] | None = None) -> tuple[str, ...]:
    """:data:`CLASSES` with each class repeated ``weights[cls]`` times (default once): drawing
    uniformly from the result draws the classes in those proportions."""
    weights = weights or {}
    unknown = sorted(set(weights) - set(CLASSES))
    if unknown or any(w < 1 for w in weights.values()):
        raise ValueError(f"class weights need known classes and whole numbers >= 1, got {weights}")
    return tuple(c for c in CLASSES for _ in range(weights.get(c, 1)))


def training_example(seed: int, index: int, size: int = 64, *,
                     classes: tuple[str, ...] = CLASSES) -> tuple[np.ndarray, str, Scene]:
    """Item ``index`` of the training set of ``seed``: (image, caption, scene), never held out.
    Each item has its own generator, so items can be drawn in any order by any process. Shapes'
    classes are drawn uniformly from ``classes`` (see :func:`weighted_classes`)."""
    rng = np.random.default_rng([seed, index])
    scene = sample_scene(rng, classes=classes)
    while is_held_out(scene):
        scene = sample_scene(rng, classes=classes)
    return render(scene, size, rng=rng), caption(scene, rng), scene


def held_out_prompts(n: int, seed: int = 0) -> list[tuple[str, Scene]]:
    """``n`` one-object test captions whose shape is a held-out triple, with random size and
    plain or striped background (never the shape's colour), in every caption template."""
    rng = np.random.default_rng([seed, 7])
    triples = sorted(HELD_OUT)
    out = []
    for _ in range(n):
        cls, colour, position = triples[int(rng.integers(len(triples)))]
        free = [c for c in COLOURS if c != colour]
        bg_n = 2 if rng.random() < 0.3 else 1
        bg = tuple(str(c) for c in rng.choice(free, size=bg_n, replace=False))
        scene = Scene((Shape(cls, colour, position, str(rng.choice(SIZES))),), Background(bg))
        out.append((caption(scene, rng), scene))
    return out


def seen_prompts(n: int, seed: int = 0) -> list[tuple[str, Scene]]:
    """``n`` captions of fresh random training-distribution scenes (one or two objects), for
    comparison with :func:`held_out_prompts`."""
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, 11, i])
        scene = sample_scene(rng)
        while is_held_out(scene):
            scene = sample_scene(rng)
        out.append((caption(scene, rng), scene))
    return out


PATTERN_SHARE = 0.5  #: share of tokenizer-training images showing a multi-colour patterned shape
_KINDS = {"rows": 2, "columns": 2, "rings": 2, "checker": 4}


def tokenizer_example(seed: int, index: int, size: int = 64) -> np.ndarray:
    """Item ``index`` of the tokenizer's training set: a training image, or (``PATTERN_SHARE`` of
    the time) a shape painted with a random multi-colour pattern.

    A tokenizer is an image codec: like the real ones, trained on more than the text-to-image data,
    so that photos of new subjects can be encoded at all. The patterned shapes are never captioned
    and never reach the transformer; the shipped subjects' exact (class, pattern) pairs are left
    out, so even the codec has not seen them.
    """
    rng = np.random.default_rng([seed, index, 3])
    if rng.random() >= PATTERN_SHARE:
        return training_example(seed, index, size)[0]
    taken = {(s.cls, s.pattern) for s in SUBJECTS.values()}
    names = list(COLOURS)
    while True:
        kind = str(rng.choice(list(_KINDS)))
        colours = tuple(str(c) for c in rng.choice(names, size=_KINDS[kind], replace=kind == "checker"))
        if len(set(colours)) < 2:
            continue
        cut = 0.55 if kind == "rings" else float(rng.uniform(-0.2, 0.2))
        pattern, cls = Pattern(kind, colours, cut), str(rng.choice(CLASSES))
        if (cls, pattern) not in taken:
            break
    free = [c for c in names if c not in colours]
    bg = tuple(str(c) for c in rng.choice(free, size=2 if rng.random() < 0.3 else 1, replace=False))
    img = background(bg, size)
    position, sz = str(rng.choice(POSITIONS)), str(rng.choice(SIZES))
    cx, cy = POSITION_CENTRE[position]
    draw_shape(img, Shape(cls, colours[0], position, sz), centre=(cx + rng.uniform(-0.04, 0.04),
                                                              cy + rng.uniform(-0.04, 0.04)), paint=pattern.paint)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
