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

from .render import render
from .scene import CLASSES, COLOURS, POSITIONS, SIZES, Background, Scene, Shape, caption, sample_scene

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


def training_example(seed: int, index: int, size: int = 64) -> tuple[np.ndarray, str, Scene]:
    """Item ``index`` of the training set of ``seed``: (image, caption, scene), never held out.
    Each item has its own generator, so items can be drawn in any order by any process."""
    rng = np.random.default_rng([seed, index])
    scene = sample_scene(rng)
    while is_held_out(scene):
        scene = sample_scene(rng)
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
