from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from arbooth_cli.errors import InvalidInputError
from arbooth_cli.tuning.data import SkippedImageWarning, load_subject_images, to_tensor


def _photos(d):
    d.mkdir()
    base = Image.new("RGB", (80, 40), (200, 30, 30))
    base.paste((30, 30, 200), (0, 0, 40, 40))  # left half blue, right half red
    base.save(d / "a_rgb.jpg", quality=95)
    rgba = Image.new("RGBA", (40, 40), (0, 255, 0, 0))  # fully transparent green
    rgba.save(d / "b_rgba.png")
    base.convert("P").save(d / "c_palette.gif")
    base.convert("CMYK").save(d / "d_cmyk.jpg")
    base.convert("L").save(d / "e_gray.png")
    base.save(d / "f.webp")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    base.save(d / "g_rotated.jpg", exif=exif, quality=95)
    (d / "h_broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (d / "notes.md").write_text("ignored: not an image")
    (d / "f.txt").write_text("a close-up of {token} {cls}\n")
    return d


def test_every_mode_becomes_a_cropped_rgb_image(tmp_path):
    d = _photos(tmp_path / "photos")
    with pytest.warns(SkippedImageWarning, match="h_broken.png"):
        ims = load_subject_images(d, token="sks", cls="dog", height=32, width=32)
    assert [im.path.name for im in ims] == ["a_rgb.jpg", "b_rgba.png", "c_palette.gif", "d_cmyk.jpg",
                                           "e_gray.png", "f.webp", "g_rotated.jpg"]
    for im in ims:
        assert im.pixels_HW3.shape == (32, 32, 3) and im.pixels_HW3.dtype == np.uint8
    by = {im.path.name: im for im in ims}
    assert (by["b_rgba.png"].pixels_HW3 == 255).all()  # transparency composited on white
    rgb = by["a_rgb.jpg"].pixels_HW3.astype(int)
    assert rgb[16, 8, 2] > 150 and rgb[16, 24, 0] > 150  # centre crop keeps blue left of red
    rot = by["g_rotated.jpg"].pixels_HW3.astype(int)
    assert rot[4, 16, 2] > 150 and rot[28, 16, 0] > 150  # EXIF applied: blue on top after the turn
    gray = by["e_gray.png"].pixels_HW3
    assert (gray[..., 0] == gray[..., 1]).all()
    assert by["f.webp"].caption == "a close-up of sks dog"
    assert by["a_rgb.jpg"].caption == "a photo of sks dog"
    x = to_tensor(ims, flip=True)
    assert x.shape == (14, 3, 32, 32) and x.min() >= -1 and x.max() <= 1
    assert (x[7] == x[0].flip(-1)).all()


def test_no_usable_photos_is_an_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidInputError, match="holds no photos"):
        load_subject_images(empty, token="sks", cls="dog", height=8, width=8)
    (empty / "x.jpg").write_bytes(b"garbage")
    with pytest.warns(SkippedImageWarning), pytest.raises(InvalidInputError, match="none of the 1 photos"):
        load_subject_images(empty, token="sks", cls="dog", height=8, width=8)
    with pytest.raises(InvalidInputError, match="not a folder"):
        load_subject_images(tmp_path / "nope", token="sks", cls="dog", height=8, width=8)


def test_an_augmented_copy_moves_and_rescales_and_extends_the_edges():
    from arbooth_cli.tuning.data import SubjectImage, augmented_copy, with_augmented_copies

    img = np.zeros((40, 40, 3), np.uint8)
    img[:] = (0, 0, 200)
    img[15:25, 15:25] = (250, 250, 250)  # a white square in the middle of a blue photo
    same = augmented_copy(img, np.random.default_rng(0), shift=0.0, scale=0.0)
    assert (same == img).all()
    for seed in range(20):
        out = augmented_copy(img, np.random.default_rng(seed), shift=0.1, scale=0.2)
        assert out.shape == img.shape and out.dtype == np.uint8
        white = (out.min(-1) > 200)
        rows, cols = np.nonzero(white)
        side = max(np.ptp(rows), np.ptp(cols)) + 1
        assert 7 <= side <= 13  # 10 px rescaled by 0.8 .. 1.2 (+1 for edge rounding)
        assert abs(rows.mean() - 19.5) <= 4.5 + 1 and abs(cols.mean() - 19.5) <= 4.5 + 1  # moved <= 0.1 x 40
        assert (out[0, 0] == (0, 0, 200)).all() and (out[-1, -1] == (0, 0, 200)).all()  # edges extended: blue
    ims = [SubjectImage(Path("a.png"), "a {token}", img), SubjectImage(Path("b.png"), "b {token}", img)]
    aug = with_augmented_copies(ims, 3, shift=0.1, scale=0.2, seed=5)
    assert len(aug) == 8 and aug[:2] == ims and [a.caption for a in aug[2:]] == ["a {token}"] * 3 + ["b {token}"] * 3
    again = with_augmented_copies(ims, 3, shift=0.1, scale=0.2, seed=5)
    assert all((a.pixels_HW3 == b.pixels_HW3).all() for a, b in zip(aug, again))
    assert not all((a.pixels_HW3 == aug[2].pixels_HW3).all() for a in aug[3:5])
    # no rescale: the photo moved by whole pixels, its values untouched
    rng = np.random.default_rng(3)
    photo = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    for seed in range(5):
        moved = augmented_copy(photo, np.random.default_rng(seed), shift=0.1, scale=0.0)
        padded = np.pad(photo, ((8, 8), (8, 8), (0, 0)), mode="edge")
        assert any((moved == padded[8 - dy:48 - dy, 8 - dx:48 - dx]).all() for dy in range(-4, 5) for dx in range(-4, 5))


def test_a_zoomed_copy_shrinks_the_photo_about_its_centre_on_its_background():
    from arbooth_cli.tuning.data import zoomed_copy

    img = np.zeros((64, 64, 3), np.uint8)
    img[:] = (0, 0, 255)  # a plain blue background
    img[8:40, 0:32] = (255, 0, 0)  # a red square touching the left edge
    out = zoomed_copy(img, 0.5)
    assert out.shape == img.shape and out.dtype == np.uint8
    red = np.argwhere((out == (255, 0, 0)).all(-1))
    assert red.min(0).tolist() == [20, 16] and red.max(0).tolist() == [35, 31]  # half size, about the centre
    assert (out[:, :16] == (0, 0, 255)).all()  # the margin is the background, not the square's edge
    stripes = np.zeros((64, 64, 3), np.uint8)
    stripes[:, ::2] = 255  # no colour covers 2/3 of the border: the shrunk photo's edges are extended
    shrunk = zoomed_copy(stripes, 0.5)
    edge = shrunk[:, 16]
    assert 0 < edge.min() and edge.max() < 255  # area resampling averaged two stripes at the edge
    assert (shrunk[:, :16] == edge[:, None]).all()


@pytest.mark.parametrize(("factor", "captions"), [(0.64, ["a small sks star on the left"]),
                                                   (1.5, ["a large sks star at the top"])])
def test_zoomed_copies_say_the_other_size_where_captions_say_sizes(factor, captions):
    """Shrunk copies of the large views say small; enlarged copies (--zoom-in) of the small views
    say large; without size words every photo gets a copy with its own caption."""
    from arbooth_cli.tuning.data import SubjectImage, zoomed_copies

    px = np.full((16, 16, 3), 9, np.uint8)
    ims = [SubjectImage(Path("a.png"), "a large sks star on the left", px),
           SubjectImage(Path("b.png"), "a Small sks star at the top", px),
           SubjectImage(Path("c.png"), "a photo of sks dog", px)]
    toy = zoomed_copies(ims, factor, (("large", "small"),))
    assert [im.caption for im in toy] == captions
    real = zoomed_copies(ims, factor)
    assert [im.caption for im in real] == [im.caption for im in ims]


def test_a_copy_is_made_only_where_the_first_size_said_is_the_one_it_changes():
    """A caption's first size word is its subject's: "a small X, a large Y" gets an enlarged copy
    but no shrunk one. A caption naming two places (two things) gets no enlarged copy: growing the
    frame would push the second thing out of it while its caption still says it."""
    from arbooth_cli.tuning.data import SubjectImage, zoomed_copies

    px = np.full((16, 16, 3), 9, np.uint8)
    places = (("left", 0.25, 0.5), ("right", 0.75, 0.5))
    phrase = dict(place_phrase_re=r"\b(?:on|at) the {word}\b", place_phrase="at the {word}")
    sizes = (("large", "small"),)
    mixed = [SubjectImage(Path("a.png"), "a small sks star, large stripes", px)]
    assert zoomed_copies(mixed, 0.64, sizes) == []
    assert [c.caption for c in zoomed_copies(mixed, 1.5, sizes)] == ["a large sks star, large stripes"]
    two = [SubjectImage(Path("b.png"), "a small sks star on the left and a small circle on the right", px)]
    assert zoomed_copies(two, 1.5, sizes, places, **phrase) == []
    one = [SubjectImage(Path("c.png"), "a small sks star on the left", px)]
    assert [c.caption for c in zoomed_copies(one, 1.5, sizes, places, **phrase)] == ["a large sks star on the left"]
    for bad in (1.0, 0.0, -0.5):
        with pytest.raises(ValueError, match="factor"):
            zoomed_copies(one, bad, sizes)


def test_an_enlarged_copy_grows_about_its_point_and_moves_on_a_plain_background():
    from arbooth_cli.tuning.data import zoomed_copy

    img = np.zeros((100, 100, 3), np.uint8)
    img[:] = (0, 0, 255)
    img[15:35, 40:60] = (255, 0, 0)  # a 20-px square centred at (50, 25): "at the top"
    out = zoomed_copy(img, 2.0, (0.5, 0.25))
    red = np.argwhere((out == (255, 0, 0)).all(-1))
    assert np.allclose(red.mean(0), [25, 50], atol=1)  # still about (50, 25)
    assert 36 <= red.max(0)[1] - red.min(0)[1] + 1 <= 40  # twice as wide (bicubic edges blend)
    assert (out[60:] == (0, 0, 255)).all()
    moved = zoomed_copy(img, 2.0, (0.5, 0.25), to_xy=(0.5, 0.75))  # to "the bottom": the uncovered top is background
    red = np.argwhere((moved == (255, 0, 0)).all(-1))
    assert np.allclose(red.mean(0), [75, 50], atol=1)
    assert (moved[:40] == (0, 0, 255)).all()
    stripes = np.zeros((100, 100, 3), np.uint8)
    stripes[:, ::2] = 255  # not plain: the frame is the enlarged photo's window about the point
    grown = zoomed_copy(stripes, 2.0, (0.1, 0.5))
    assert grown.shape == stripes.shape and grown.flags.c_contiguous
    big = np.asarray(Image.fromarray(stripes).resize((200, 200), Image.Resampling.BICUBIC))
    assert np.array_equal(grown, big[50:150, 10:110])  # (10, 50) stays where it is; no margin to fill


def test_a_zoomed_copy_about_a_point_keeps_that_point_in_place():
    from arbooth_cli.tuning.data import zoomed_copy

    img = np.zeros((100, 100, 3), np.uint8)
    img[:] = (0, 0, 255)
    img[30:70, 5:45] = (255, 0, 0)  # a 40-px square centred at (25, 50): "on the left"
    out = zoomed_copy(img, 0.5, (0.25, 0.5))
    red = np.argwhere((out == (255, 0, 0)).all(-1))
    assert red.min(0).tolist() == [40, 15] and red.max(0).tolist() == [59, 33]  # half size, still about (25, 50)
    assert (out[:, 60:] == (0, 0, 255)).all()


def test_zoomed_copies_shrink_about_the_place_the_caption_says():
    from arbooth_cli.tuning.data import SubjectImage, zoomed_copies

    img = np.zeros((100, 100, 3), np.uint8)
    img[:] = (0, 0, 255)
    img[30:70, 55:95] = (255, 0, 0)  # centred at (75, 50): "on the right"
    places = (("left", 0.25, 0.5), ("right", 0.75, 0.5))
    ims = [SubjectImage(Path("a.png"), "a large sks square on the right", img)]
    (copy,) = zoomed_copies(ims, 0.5, (("large", "small"),), places)
    assert copy.caption == "a small sks square on the right"
    red = np.argwhere((copy.pixels_HW3 == (255, 0, 0)).all(-1))
    assert red.mean(0).round().tolist() == [50, 75]
    # the first place the caption says, in any case; only the first size word changes
    other = [SubjectImage(Path("b.png"), "a Large sks square on the Right, large stripes on the left", img)]
    (copy,) = zoomed_copies(other, 0.5, (("large", "small"),), places)
    assert copy.caption == "a small sks square on the Right, large stripes on the left"
    red = np.argwhere((copy.pixels_HW3 == (255, 0, 0)).all(-1))
    assert red.mean(0).round().tolist() == [50, 75]
    (about_centre,) = zoomed_copies(ims, 0.5, (("large", "small"),))
    red = np.argwhere((about_centre.pixels_HW3 == (255, 0, 0)).all(-1))
    assert red.mean(0).round().tolist() == [50, 62]  # drawn towards the middle: no longer where it says


def test_the_toy_places_are_the_renderers():
    from arbooth_cli.specs.toy import TOY
    from arbooth_cli.toyworld.render import POSITION_CENTRE

    assert {w: (x, y) for w, x, y in TOY.tuning.position_words} == POSITION_CENTRE


def test_a_zoomed_copy_moves_its_place_to_another_on_a_plain_background():
    from arbooth_cli.tuning.data import zoomed_copy

    img = np.zeros((100, 100, 3), np.uint8)
    img[:] = (0, 0, 255)
    img[30:70, 55:95] = (255, 0, 0)  # centred at (75, 50): "on the right"
    out = zoomed_copy(img, 0.5, (0.75, 0.5), to_xy=(0.5, 0.25))  # moved to "the top"
    red = np.argwhere((out == (255, 0, 0)).all(-1))
    in_place = np.argwhere((zoomed_copy(img, 0.5, (0.75, 0.5)) == (255, 0, 0)).all(-1))
    assert np.allclose(red.mean(0), [25, 50], atol=1) and len(red) == len(in_place)  # moved whole
    assert (out[40:] == (0, 0, 255)).all() and (out[:, 65:] == (0, 0, 255)).all()  # nothing left where it was
    far = zoomed_copy(img, 0.5, (0.75, 0.5), to_xy=(0.1, 0.5))  # the frame sticks out: clipped
    red = np.argwhere((far == (255, 0, 0)).all(-1))
    assert np.allclose(red.mean(0), [50, 10], atol=1)
    assert np.array_equal(zoomed_copy(img, 0.5, (0.75, 0.5), to_xy=(0.75, 0.5)), zoomed_copy(img, 0.5, (0.75, 0.5)))
    stripes = np.zeros((100, 100, 3), np.uint8)
    stripes[::2] = 255
    with pytest.raises(ValueError, match="plain background"):
        zoomed_copy(stripes, 0.5, (0.75, 0.5), to_xy=(0.25, 0.5))


def test_zoomed_copies_at_more_places_rewrite_the_place_phrase():
    from arbooth_cli.tuning.data import SubjectImage, zoomed_copies

    img = np.zeros((100, 100, 3), np.uint8)
    img[:] = (0, 0, 255)
    img[30:70, 55:95] = (255, 0, 0)
    stripes = img.copy()
    stripes[::4] = (0, 255, 0)  # no colour covers 2/3 of the border: this photo cannot move
    places = (("left", 0.25, 0.5), ("right", 0.75, 0.5), ("top", 0.5, 0.25))
    phrase = dict(place_phrase_re=r"\b(?:on|at) the {word}\b", place_phrase="at the {word}")
    ims = [SubjectImage(Path("a.png"), "a large sks square on the right, blue background", img),
           SubjectImage(Path("b.png"), "a large sks square on the right, striped background", stripes)]
    copies = zoomed_copies(ims, 0.5, (("large", "small"),), places, places=3, **phrase)
    assert [c.caption for c in copies] == ["a small sks square on the right, blue background",
                                           "a small sks square at the top, blue background",  # the next places, in turn
                                           "a small sks square at the left, blue background",
                                           "a small sks square on the right, striped background"]
    for c, (y, x) in zip(copies[:3], ((50, 75), (25, 50), (50, 25))):
        assert np.allclose(np.argwhere((c.pixels_HW3 == (255, 0, 0)).all(-1)).mean(0), [y, x], atol=1)
    assert len(zoomed_copies(ims, 0.5, (("large", "small"),), places, places=9, **phrase)) == 4  # at most every place
    assert len(zoomed_copies(ims, 0.5, (("large", "small"),), places, places=3)) == 2  # no phrase: no move


def test_moved_copies_are_the_renderers_own_views_at_the_other_places():
    from arbooth_cli.specs.toy import TOY
    from arbooth_cli.toyworld.procedural import make_subjects, render_subject
    from arbooth_cli.tuning.data import SubjectImage, moved_copies

    t = TOY.tuning
    subject = make_subjects(1)[0]
    bg = (subject.safe_backgrounds()[0],)
    photo = render_subject(subject, position="bottom", size="large", background=bg, rng=np.random.default_rng(3))
    striped = render_subject(subject, position="left", size="large", background=subject.safe_backgrounds()[:2])
    ims = [SubjectImage(Path("a.png"), f"a large sks {subject.cls} at the bottom, {bg[0]} background", photo),
           SubjectImage(Path("b.png"), f"a large sks {subject.cls} on the left, striped background", striped),
           SubjectImage(Path("c.png"), f"a large sks {subject.cls} on the left and a small sks {subject.cls} "
                                       f"on the right, {bg[0]} background", photo)]
    phrase = dict(place_phrase_re=t.place_phrase_re, place_phrase=t.place_phrase)
    copies = moved_copies(ims, t.position_words, places=3, **phrase)
    # the next two places after its own, in the model's order; the striped photo and the
    # two-place caption do not move
    assert [c.caption for c in copies] == [f"a large sks {subject.cls} at the center, {bg[0]} background",
                                           f"a large sks {subject.cls} at the left, {bg[0]} background"]
    every = moved_copies(ims, t.position_words, places=9, **phrase)  # at most every other place
    assert [c.caption.split(" at the ")[1].split(",")[0] for c in every] == ["center", "left", "right", "top"]
    for c, place in zip(every, ("center", "left", "right", "top")):  # the same jitter, moved whole
        same = render_subject(subject, position=place, size="large", background=bg, rng=np.random.default_rng(3))
        assert np.array_equal(c.pixels_HW3, same), place
    assert moved_copies(ims, t.position_words, places=3, place_phrase_re="", place_phrase="") == []


def test_the_toy_place_phrases_match_every_phrase_the_world_writes():
    import re

    from arbooth_cli.specs.toy import TOY
    from arbooth_cli.toyworld.scene import _POS_PHRASES, _POS_WORDS

    t = TOY.tuning
    # the spec's literals (it loads without the toy world) are the caption parser's place words
    assert dict(t.place_aliases) == {w: place for w, place in _POS_WORDS.items() if w != place}
    words = {**{w: w for w, _, _ in t.position_words}, **dict(t.place_aliases)}  # "middle" is the center
    for word, phrases in _POS_PHRASES.items():
        for ph in phrases:
            said = [w for w in words if re.search(t.place_phrase_re.format(word=w), f"a large sks star {ph}, red background")]
            assert len(said) == 1 and words[said[0]] == word, ph
        assert re.search(t.place_phrase_re.format(word=word), t.place_phrase.format(word=word))


def test_the_toy_background_colours_are_the_worlds():
    import re

    from arbooth_cli.specs.toy import TOY
    from arbooth_cli.toyworld.scene import COLOURS, Background

    t = TOY.tuning
    assert dict(t.background_colours) == COLOURS  # the spec's literal (it loads without the toy world)
    for c in COLOURS:
        caption = f"a large sks star on the left, {Background((c,)).phrase()}"
        assert [w for w in COLOURS if re.search(t.background_phrase_re.format(word=w), caption)] == [c]
        striped = f"a large sks star on the left, {Background((c, 'red' if c != 'red' else 'blue')).phrase()}"
        assert not [w for w in COLOURS if re.search(t.background_phrase_re.format(word=w), striped)]


@pytest.mark.parametrize("size", ["large", "small"])
def test_a_recoloured_photo_is_the_renderers_view_on_the_other_background(size):
    from arbooth_cli.toyworld.procedural import make_subjects, render_subject
    from arbooth_cli.toyworld.scene import COLOURS
    from arbooth_cli.tuning.data import recoloured_background, zoomed_copy

    for subject in make_subjects(6):
        a, b = subject.safe_backgrounds()[:2]
        photo = render_subject(subject, position="bottom", size=size, background=(a,), rng=np.random.default_rng(3))
        same = render_subject(subject, position="bottom", size=size, background=(b,), rng=np.random.default_rng(3))
        diff = np.abs(recoloured_background(photo, COLOURS[a], COLOURS[b]).astype(int) - same).max(-1)
        # the edge blends are mixed again with the new colour: no ring of the old one is left;
        # only a pixel where two of the subject's colours meet the edge is off (its blend has three)
        assert (diff > 2).sum() <= 8, subject.name
        shrunk = [zoomed_copy(im, 0.64, (0.5, 0.75)) for im in (photo, same)]  # box-filtered edges: blends too
        diff = np.abs(recoloured_background(shrunk[0], COLOURS[a], COLOURS[b]).astype(int) - shrunk[1]).max(-1)
        assert (diff > 2).sum() <= 8, subject.name
        ring = recoloured_background(photo, COLOURS[a], COLOURS[a])
        assert np.abs(ring.astype(int) - photo).max() <= 1  # repainting in the same colour changes nothing


def test_recoloured_copies_rewrite_the_colour_and_never_take_the_subjects():
    from arbooth_cli.tuning.data import SubjectImage, recoloured_copies

    colours = (("red", (255, 0, 0)), ("green", (0, 255, 0)), ("blue", (0, 0, 255)), ("white", (255, 255, 255)))
    phrase = r"\b{word} background\b"
    img = np.zeros((40, 40, 3), np.uint8)
    img[:] = (0, 0, 255)
    img[10:30, 10:20] = (255, 0, 0)  # a red and green subject on blue
    img[10:30, 20:30] = (0, 255, 0)
    stripes = img.copy()
    stripes[::4] = (255, 255, 255)
    ims = [SubjectImage(Path("a.png"), "a large sks square on the left, Blue background", img),
           SubjectImage(Path("b.png"), "a large sks square, blue and white striped background", stripes),
           SubjectImage(Path("c.png"), "a large sks square, white background", img),  # not what it shows
           SubjectImage(Path("d.png"), "a photo of sks square", img)]  # names no colour
    (copy,) = recoloured_copies(ims, colours, phrase, copies=1, seed=0)
    assert copy.caption == "a large sks square on the left, White background"  # the one colour it may take
    assert (copy.pixels_HW3[0, 0] == 255).all() and np.array_equal(copy.pixels_HW3[10:30, 10:30], img[10:30, 10:30])
    assert len(recoloured_copies(ims, colours, phrase, copies=5, seed=0)) == 1  # no colour twice
    assert recoloured_copies(ims, colours, phrase, copies=0, seed=0) == []
    shout = SubjectImage(Path("e.png"), "a Blue sks square, BLUE background", img)  # the background's word only,
    assert [c.caption for c in recoloured_copies([shout], colours, phrase, copies=1, seed=0)] == [
        "a Blue sks square, WHITE background"]  # in its case
    assert recoloured_copies(ims, (), "", copies=1, seed=0) == []  # captions that name no colours
    wide = (*colours, ("black", (0, 0, 0)), ("purple", (128, 0, 128)))
    drawn = [[c.caption.split(", ")[1] for c in recoloured_copies(ims[:1], wide, phrase, copies=2, seed=s)]
             for s in range(6)]
    assert all(len(set(d)) == 2 and "blue background" not in d and "red background" not in d for d in drawn)
    assert len({tuple(d) for d in drawn}) > 1  # the seed picks the colours


def test_recoloured_copies_take_only_colours_no_photo_shows_and_the_subject_cannot_be_mistaken_for():
    from arbooth_cli.tuning.data import SubjectImage, recoloured_copies

    palette = {"red": (220, 40, 40), "yellow": (240, 210, 40), "orange": (245, 140, 30), "blue": (40, 80, 220),
               "green": (40, 170, 60), "white": (245, 245, 245), "black": (25, 25, 25)}
    phrase = r"\b{word} background\b"

    def photo(bg: str) -> np.ndarray:
        img = np.zeros((40, 40, 3), np.uint8)
        img[:] = palette[bg]
        img[10:20, 10:30] = palette["red"]  # a red over yellow subject
        img[20:30, 10:30] = palette["yellow"]
        return img

    ims = [SubjectImage(Path(f"{bg}.png"), f"a large sks square, {bg} background", photo(bg)) for bg in ("blue", "green")]
    drawn = recoloured_copies(ims, tuple(palette.items()), phrase, copies=3, seed=0)
    # not blue or green (the photos show them), not red or yellow (the subject's), not orange (a
    # red-yellow blend looks like it, so on orange the subject's middle would read as background);
    # the two free colours are dealt to both photos
    assert sorted(c.caption.split(", ")[1] for c in drawn) == ["black background", "black background",
                                                               "white background", "white background"]
    one_each = recoloured_copies(ims, tuple(palette.items()), phrase, copies=1, seed=0)
    assert sorted(c.caption.split(", ")[1] for c in one_each) == ["black background", "white background"]
    # a colour one view happens to show (a few black pixels on one of three photos) is not the subject's
    odd = photo("white")
    odd[10, 10:14] = palette["black"]
    three = [*ims, SubjectImage(Path("w.png"), "a large sks square, white background", odd)]
    got = recoloured_copies(three, tuple(palette.items()), phrase, copies=1, seed=0)
    assert {c.caption.split(", ")[1] for c in got} == {"black background"}
    assert [c.path.name for c in got] == ["blue.png", "green.png"]  # never on a colour the view itself shows
    # the same photo's copies (one path) count once: five copies of the odd photo do not make black the subject's
    many = [*ims, *[SubjectImage(Path("w.png"), "a large sks square, white background", odd) for _ in range(5)]]
    assert {c.caption.split(", ")[1] for c in recoloured_copies(many, tuple(palette.items()), phrase, copies=1,
                                                                seed=0)} == {"black background"}
    # a plain background counts as shown even when its caption names no colour
    unnamed = [*ims, SubjectImage(Path("k.png"), "a photo of sks square", photo("black"))]
    assert {c.caption.split(", ")[1] for c in recoloured_copies(unnamed, tuple(palette.items()), phrase, copies=1,
                                                                seed=0)} == {"white background"}
    every = [SubjectImage(Path(f"{bg}.png"), f"a large sks square, {bg} background", photo(bg))
             for bg in ("blue", "green", "white", "black")]
    assert recoloured_copies(every, tuple(palette.items()), phrase, copies=1, seed=0) == []  # none is left


def test_a_caption_naming_two_places_or_none_keeps_its_copy_where_it_is():
    from arbooth_cli.specs.toy import TOY
    from arbooth_cli.tuning.data import SubjectImage, moved_copies, zoomed_copies, zoomed_copy

    t = TOY.tuning
    img = np.zeros((64, 64, 3), np.uint8)
    img[:] = (0, 0, 255)
    img[20:40, 40:60] = (255, 0, 0)

    phrase = dict(place_phrase_re=t.place_phrase_re, place_phrase=t.place_phrase, place_aliases=t.place_aliases)

    def copies(caption):
        return [c.caption for c in zoomed_copies([SubjectImage(Path("a.png"), caption, img)], 0.64, t.size_words,
                                                 t.position_words, places=5, **phrase)]

    assert copies("a large sks star at the right and a large red square on the left") == [
        "a small sks star at the right and a large red square on the left"]
    assert copies("a large sks star on the top-left") == ["a small sks star on the top-left"]
    # "in the middle" is a place: alone it moves, beside another place (two things) it does not
    assert copies("a large sks star in the middle")[:2] == ["a small sks star in the middle", "a small sks star at the left"]
    two = "a large sks star in the middle and a small green square on the left"
    assert copies(two) == ["a small sks star in the middle and a small green square on the left"]
    assert moved_copies([SubjectImage(Path("a.png"), two, img)], t.position_words, places=5, **phrase) == []
    assert len(copies("a large sks star in the centre, blue background")) == 5
    moved = copies("a top hat beside a large sks star on the left")  # the place phrase, not the word "top"
    assert moved[:2] == ["a top hat beside a small sks star on the left", "a top hat beside a small sks star at the right"]
    assert (zoomed_copy(img, 0.5, (0.75, 0.5), to_xy=(1.6, 0.5)) == (0, 0, 255)).all()  # wholly outside: background


def test_an_epoch_without_a_photo_share_is_a_plain_permutation():
    import torch

    from arbooth_cli.tuning.data import epoch_order

    got = epoch_order(7, 3, 0.0, torch.Generator().manual_seed(5))
    assert got.tolist() == torch.randperm(7, generator=torch.Generator().manual_seed(5)).tolist()


@pytest.mark.parametrize("share", [0.25, 0.5, 0.75])
def test_an_epoch_draws_the_photos_about_their_share(share):
    import torch

    from arbooth_cli.tuning.data import epoch_order

    n_train, n_photos = 22, 5  # 5 photos, 17 zoomed copies
    got = epoch_order(n_train, n_photos, share, torch.Generator().manual_seed(0))
    photos = got < n_photos
    assert abs(photos.float().mean().item() - share) < 0.1
    counts = torch.bincount(got, minlength=n_train)
    assert (counts[n_photos:] == 1).all()  # each copy once
    assert len(set(counts[:n_photos].tolist())) == 1 and counts[0] >= 1  # every photo alike


def test_an_epoch_with_flips_counts_a_mirrored_photo_as_a_photo():
    import torch

    from arbooth_cli.tuning.data import epoch_order

    got = epoch_order(4, 1, 0.5, torch.Generator().manual_seed(0), flip=True)
    counts = torch.bincount(got, minlength=8)
    # index 0 and its mirror 4 are the photo: 3 copies each side against one photo -> 3 draws each
    assert counts[[0, 4]].tolist() == [3, 3] and counts[[1, 2, 3, 5, 6, 7]].tolist() == [1] * 6
