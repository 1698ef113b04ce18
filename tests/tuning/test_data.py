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
