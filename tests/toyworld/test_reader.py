"""The toy subject reader: a subject read from its photos alone is found where it is drawn and
nowhere else; the procedural subjects it is validated on."""

from __future__ import annotations

import numpy as np
import pytest

from arbooth_cli.toyworld.procedural import FAMILIES, fresh_views, make_subjects
from arbooth_cli.toyworld.reader import SubjectLook, UnreadableSubject, read_look
from arbooth_cli.toyworld.render import background, draw_shape
from arbooth_cli.toyworld.scene import CLASSES, COLOURS, Shape
from arbooth_cli.toyworld.subjects import Pattern, Subject, subject_photos


@pytest.fixture(scope="module")
def made() -> list[Subject]:
    return make_subjects(5, seed=7)


def _plain(cls: str, colour: str, bg: str, size: str) -> np.ndarray:
    img = background((bg,), 64)
    draw_shape(img, Shape(cls, colour, "center", size))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def test_procedural_subjects_are_deterministic_readable_and_distinct(made):
    again = make_subjects(5, seed=7)
    assert [(s.name, s.pattern, s.photo_backgrounds) for s in made] == [(s.name, s.pattern, s.photo_backgrounds)
                                                                       for s in again]
    assert [s.name.split("-")[1] for s in made] == [list(FAMILIES)[i // 2] for i in range(5)]
    for s in made:
        photos = subject_photos(s)
        assert any(a["size"] == "small" for _, a in photos) and any(len(a["background"]) == 2 for _, a in photos)
        assert all(s.find(img).found for img, _ in photos)
        assert not any(o.find(img).found for o in made if o is not s for img, _ in photos)


def test_procedural_subjects_drawn_after_given_ones_are_the_same_draws(made):
    """``start``: the first subjects of an earlier draw; only the rest are drawn, as a whole draw
    would draw them (how the benchmark adds a fresh held-out set without touching the others)."""
    rest = make_subjects(5, seed=7, start=made[:3])
    assert rest[:3] == made[:3]
    assert [(s.name, s.pattern, s.photo_backgrounds) for s in rest] == [(s.name, s.pattern, s.photo_backgrounds)
                                                                       for s in made]


def test_a_look_read_from_photos_finds_fresh_views_and_nothing_else(made):
    rng = np.random.default_rng(0)
    for s in made:
        look = read_look([img for img, _ in subject_photos(s)])
        assert look.cls == s.cls and set(look.colours) == set(s.pattern.colours) and look.read_back == 5
        views = fresh_views(s, rng, n_backgrounds=1)
        assert sum(look.find(img).found for img, _ in views) == len(views)
        plain = [_plain(s.cls, c, bg, size) for c in COLOURS for bg in ("black", "white") if bg != c
                 for size in ("small", "large")]
        assert not any(look.find(img).found for img in plain)
        others = [img for o in made if o is not s for img, _ in subject_photos(o)]
        assert not any(look.find(img).found for img in others)


def test_patterns_of_every_kind_paint_as_documented():
    x, y = np.meshgrid(np.linspace(-0.9, 0.9, 5), np.linspace(-0.9, 0.9, 5))
    rows3 = Pattern("rows", ("red", "white", "red"))  # evenly spaced: cuts at -1/3, 1/3
    assert rows3.region(x, y)[:, 0].tolist() == [0, 0, 1, 2, 2]  # y = -0.9, -0.45, 0, 0.45, 0.9
    assert Pattern("columns", ("red", "blue")).region(x, y)[0].tolist() == [0, 0, 1, 1, 1]
    assert Pattern("diagonal", ("red", "blue")).region(x, y)[0, 0] == 0 and \
        Pattern("diagonal", ("red", "blue")).region(x, y)[-1, -1] == 1
    rings = Pattern("rings", ("red", "blue", "green"), cuts=(0.8, 0.3))
    assert rings.region(np.array([0.0, 0.5, 0.9]), np.zeros(3)).tolist() == [2, 1, 0]
    for bad in (dict(kind="rows", colours=("red", "red", "blue")), dict(kind="checker", colours=("red", "blue")),
                dict(kind="rows", colours=("red", "blue", "green"), cuts=(0.1,)), dict(kind="waves", colours=("red",))):
        with pytest.raises(ValueError):
            Pattern(**bad)


def test_photos_that_show_no_subject_say_why():
    plain = [_plain("star", "red", bg, "large") for bg in ("blue", "green", "black", "white", "yellow")]
    with pytest.raises(UnreadableSubject, match="a plain red star"):
        read_look(plain)
    mixed = [_plain(cls, "red", "blue", "large") for cls in CLASSES[:5]]
    with pytest.raises(UnreadableSubject, match="only 1 of 5 photos show one shape of the same class"):
        read_look(mixed)
    with pytest.raises(UnreadableSubject, match="no object"):
        read_look([np.full((64, 64, 3), 40, np.uint8)] * 3)
    with pytest.raises(UnreadableSubject, match="no photos"):
        read_look([])


def test_a_look_is_plain_data():
    s = make_subjects(1, seed=7)[0]
    look = read_look([img for img, _ in subject_photos(s)])
    again = SubjectLook(look.cls, look.cells, look.photos, look.read_back)
    assert again == look and hash(again) == hash(look) and again.describe() == look.describe()
