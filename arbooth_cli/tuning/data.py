"""Subject photos: a folder in, normalised image tensors and captions out.

Photos are read with Pillow (jpg, png, webp, ...), their EXIF orientation applied, any mode
(RGBA, palette, CMYK, grayscale, 16-bit) converted to RGB, then resized so the shorter side fits and
centre-cropped to the target size, as the official ARBooth code prepares them (bilinear resize, centre
crop, values in [-1, 1]). A photo that cannot be read is skipped with a warning; no usable photo
is an error. A caption file beside a photo (same stem, ``.txt``) overrides the default caption.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InvalidInputError
from ..subjects.words import fill

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
DEFAULT_CAPTION = "a photo of {token} {cls}"
DEFAULT_CLASS_PROMPT = "a photo of {cls}"


class SkippedImageWarning(UserWarning):
    """A subject photo could not be read and was left out."""


@dataclass(frozen=True)
class SubjectImage:
    path: Path
    caption: str
    pixels_HW3: np.ndarray  # uint8 RGB, already cropped to the target size


def _load_rgb(path: Path, height: int, width: int) -> np.ndarray:
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im.load()
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            white = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(white, im)  # transparent areas become white, not black
        if im.mode == "I;16" or im.mode == "I":
            arr = np.asarray(im, dtype=np.float64)
            im = Image.fromarray((arr / max(arr.max(), 1) * 255).astype(np.uint8))
        im = im.convert("RGB")
        scale = max(height / im.height, width / im.width)
        size = (max(width, round(im.width * scale)), max(height, round(im.height * scale)))
        im = im.resize(size, Image.Resampling.BILINEAR)
        left, top = (im.width - width) // 2, (im.height - height) // 2
        return np.asarray(im.crop((left, top, left + width, top + height)), dtype=np.uint8).copy()


def load_subject_images(folder: str | Path, *, token: str, cls: str, height: int, width: int,
                        caption: str = DEFAULT_CAPTION,
                        on_skip: Callable[[str], None] | None = None) -> list[SubjectImage]:
    """Every readable photo of ``folder`` (sorted by name), cropped to ``height`` x ``width``.

    An unreadable photo is skipped with a message: given to ``on_skip`` (e.g. a progress
    event), else warned as :class:`SkippedImageWarning`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidInputError(f"{folder} is not a folder of photos")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise InvalidInputError(f"{folder} holds no photos ({', '.join(IMAGE_SUFFIXES)})")
    out = []
    for p in paths:
        try:
            pixels = _load_rgb(p, height, width)
        except Exception as exc:  # Pillow raises many types for broken files
            message = f"skipping {p.name}: {type(exc).__name__}: {exc}"
            if on_skip is not None:
                on_skip(message)
            else:
                warnings.warn(message, SkippedImageWarning, stacklevel=2)
            continue
        side = p.with_suffix(".txt")
        text = _read_caption(side) if side.is_file() else caption
        out.append(SubjectImage(p, fill(text, token=token, cls=cls), pixels))
    if not out:
        raise InvalidInputError(f"none of the {len(paths)} photos in {folder} could be read")
    return out


def _read_caption(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig").strip()
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"caption file {path} is not UTF-8 text (byte {exc.start})",
                                hint="save it as UTF-8") from None
    except OSError as exc:
        raise InvalidInputError(f"cannot read caption file {path}: {exc.strerror or exc}") from None


def to_tensor(images: list[SubjectImage], *, flip: bool = False):
    """(N, 3, H, W) float32 in [-1, 1]; with ``flip``, the mirrored images follow the originals."""
    import torch

    x = torch.from_numpy(np.stack([im.pixels_HW3 for im in images])).permute(0, 3, 1, 2).float() / 127.5 - 1
    return torch.cat([x, x.flip(-1)]) if flip else x


def epoch_order(n_train: int, n_photos: int, photo_share: float, generator, *, flip: bool = False):
    """One pass over the training images in random order (int64 tensor of indices), the photos
    themselves drawn ``photo_share`` of the time. ``n_train`` images (``n_photos`` photos first, then
    augmented copies), and with ``flip`` their mirrored copies after them (index + n_train).

    ``photo_share`` 0 draws every image once (a plain permutation); else each photo appears as
    often as makes its group's share nearest ``photo_share``, at least once, and each copy once.
    Why: --zoom-places makes many copies of a few photos, and under uniform draws the photos' own
    views are crowded out."""
    import torch

    total = n_train * (2 if flip else 1)
    n_copies = n_train - n_photos
    if photo_share <= 0 or n_copies <= 0 or n_photos <= 0:
        return torch.randperm(total, generator=generator)
    repeats = max(1, round(photo_share / (1 - photo_share) * n_copies / n_photos))
    idx = torch.arange(total)
    is_photo = idx % n_train < n_photos
    pool = torch.cat([idx[is_photo].repeat(repeats), idx[~is_photo]])
    return pool[torch.randperm(len(pool), generator=generator)]


def augmented_copy(pixels_HW3: np.ndarray, rng: np.random.Generator, *, shift: float, scale: float) -> np.ndarray:
    """A copy of a photo moved by up to ``shift`` of its side in each direction (whole pixels) and
    rescaled by a factor in [1 - scale, 1 + scale]; where it uncovers the frame, the photo's edge
    pixels are extended. Size and dtype are kept; with ``scale=0`` no pixel is resampled."""
    from PIL import Image

    H, W = pixels_HW3.shape[:2]
    zoom = float(rng.uniform(1 - scale, 1 + scale))
    # whole-pixel moves: with no rescale a copy is the photo moved, not resampled (no blur)
    dx, dy = (round(float(v) * n) / n for v, n in zip(rng.uniform(-shift, shift, size=2), (W, H)))
    pad = int(np.ceil(max(H, W) * (shift + max(1 / max(zoom, 1e-3) - 1, 0) / 2))) + 2
    big = Image.fromarray(np.pad(pixels_HW3, ((pad, pad), (pad, pad), (0, 0)), mode="edge"))
    # the window of the padded photo that becomes the copy: 1/zoom of the frame, centre moved
    cx, cy = pad + W / 2 - dx * W, pad + H / 2 - dy * H
    w, h = W / zoom, H / zoom
    out = big.transform((W, H), Image.Transform.EXTENT, (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2),
                        Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.uint8).copy()


def with_augmented_copies(images: list[SubjectImage], copies: int, *, shift: float, scale: float,
                          seed: int) -> list[SubjectImage]:
    """``images`` followed by ``copies`` augmented copies of each (same caption); deterministic in
    ``seed``."""
    out = list(images)
    for i, im in enumerate(images):
        for k in range(copies):
            rng = np.random.default_rng([seed, i, k, 7])
            out.append(SubjectImage(im.path, im.caption, augmented_copy(im.pixels_HW3, rng, shift=shift, scale=scale)))
    return out


def plain_border(pixels_HW3: np.ndarray) -> np.ndarray | None:
    """The photo's background colour when one colour covers at least 2/3 of its border, else None."""
    border = np.concatenate([pixels_HW3[0], pixels_HW3[-1], pixels_HW3[:, 0], pixels_HW3[:, -1]])
    colours, counts = np.unique(border, axis=0, return_counts=True)
    return colours[counts.argmax()] if 3 * counts.max() >= 2 * len(border) else None


def zoomed_copy(pixels_HW3: np.ndarray, factor: float, centre_xy: tuple[float, float] = (0.5, 0.5),
                to_xy: tuple[float, float] | None = None) -> np.ndarray:
    """The photo shrunk by ``factor`` (area resampling; ``factor`` > 1 enlarges it, bicubic) on a
    frame of the same size, about the point ``centre_xy`` (shares of the width and height: that
    point stays where it is, or lands on ``to_xy``); the margin takes the photo's border colour
    when one colour covers at least 2/3 of the border (a plain background), else the shrunk photo's
    edges are extended, or the enlarged photo's window about the point is the frame (and then the
    copy cannot move: ValueError)."""
    from PIL import Image

    H, W = pixels_HW3.shape[:2]
    h, w = max(1, round(H * factor)), max(1, round(W * factor))
    resample = Image.Resampling.BOX if factor <= 1 else Image.Resampling.BICUBIC
    small = pixels_HW3.copy() if (h, w) == (H, W) else np.asarray(Image.fromarray(pixels_HW3).resize((w, h), resample))
    to_x, to_y = to_xy if to_xy is not None else centre_xy
    top, left = round(to_y * H - centre_xy[1] * h), round(to_x * W - centre_xy[0] * w)
    fill = plain_border(pixels_HW3)
    if fill is None:
        if to_xy is not None and tuple(to_xy) != tuple(centre_xy):
            raise ValueError("only a photo on a plain background can move (its margin is one colour)")
        if factor > 1:  # an enlarged photo covers the frame: the frame is its window about the point
            top, left = min(max(top, H - h), 0), min(max(left, W - w), 0)
            return np.ascontiguousarray(small[-top : -top + H, -left : -left + W])
        top, left = min(max(top, 0), H - h), min(max(left, 0), W - w)
        return np.pad(small, ((top, H - h - top), (left, W - w - left), (0, 0)), mode="edge")
    out = np.empty_like(pixels_HW3)
    out[:] = fill
    y0, x0 = max(top, 0), max(left, 0)  # a moved frame may stick out: only its part inside is pasted
    y1, x1 = max(min(top + h, H), y0), max(min(left + w, W), x0)
    out[y0:y1, x0:x1] = small[y0 - top : y1 - top, x0 - left : x1 - left]
    return out


def _word_at(word: str, caption: str) -> int | None:
    """Where ``word`` first stands as a whole word in ``caption`` (any case), else None."""
    m = re.search(rf"\b{re.escape(word)}\b", caption, flags=re.IGNORECASE)
    return m.start() if m else None


def _first_of(words: list[str], caption: str) -> str | None:
    """The one of ``words`` the caption says first."""
    found = [(at, w) for w in words if (at := _word_at(w, caption)) is not None]
    return min(found)[1] if found else None


def zoomed_copies(images: list[SubjectImage], factor: float, size_words: tuple[tuple[str, str], ...] = (),
                  position_words: tuple[tuple[str, float, float], ...] = (), *, places: int = 1,
                  place_phrase_re: str = "", place_phrase: str = "",
                  place_aliases: tuple[tuple[str, str], ...] = ()) -> list[SubjectImage]:
    """A :func:`zoomed_copy` of each photo. ``size_words``: (word, smaller word) pairs of a model
    whose captions say sizes (toy: large, small): only photos whose caption says such a word first
    get a copy, captioned with the word replaced (``factor`` > 1: photos of the smaller word,
    enlarged and captioned with the larger; a caption naming two places, two things, gets none,
    since enlarging would push the second out of the frame); without pairs every photo gets one
    with its own caption. ``position_words``: (word, x, y) of a model whose captions say where the
    subject is: a photo shrinks (or grows) about the point of the first such word its caption says,
    so the copy still shows the place it says (others about the centre); ``place_aliases``: (other
    word, word of ``position_words``) pairs its captions also use ("in the middle"). Words match
    whole, in any case.

    ``places`` > 1 (with ``place_phrase_re`` and ``place_phrase``): a photo on a plain background
    also gets copies moved to the next ``places`` - 1 places of ``position_words`` after its own,
    the caption's place phrase rewritten: views at places no photo shows."""
    if factor <= 0 or factor == 1:
        raise ValueError(f"a zoomed copy needs a factor in (0, 1) or above 1, not {factor}")
    out = []
    point = {w: (x, y) for w, x, y in position_words}
    words = _place_words(position_words, place_aliases)
    for im in images:
        caption = im.caption
        if size_words:
            said_size = dict(size_words) if factor < 1 else {b: a for a, b in size_words}
            # the first size word must be one this copy changes ("a small sks star, large stripes":
            # the subject is small, and shrinking cannot make it smaller)
            word = _first_of([w for pair in size_words for w in pair], caption)
            if word not in said_size:
                continue
            caption = re.sub(rf"\b{re.escape(word)}\b", said_size[word], caption, count=1, flags=re.IGNORECASE)
        said = _said_places(caption, words, place_phrase_re)
        if factor > 1 and len(said) > 1:
            continue
        place = said[0][1] if said else words.get(_first_of(list(words), caption) or "")
        centre = point.get(place, (0.5, 0.5)) if place else (0.5, 0.5)
        out.append(SubjectImage(im.path, caption, zoomed_copy(im.pixels_HW3, factor, centre)))
        out += _moved(im, caption, factor, said, position_words, places, place_phrase)
    return out


def _place_words(position_words: tuple[tuple[str, float, float], ...],
                 place_aliases: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """Every word the captions use for a place -> its word in ``position_words``."""
    return {**{w: w for w, _, _ in position_words}, **dict(place_aliases)}


def _said_places(caption: str, words: dict[str, str], place_phrase_re: str) -> list[tuple[re.Match, str]]:
    """The place phrases ``caption`` says, in order, each with its place (none where the model gives
    no phrase regex)."""
    return sorted(((m, place) for w, place in words.items() if place_phrase_re
                   for m in re.finditer(place_phrase_re.format(word=re.escape(w)), caption, flags=re.IGNORECASE)),
                  key=lambda mw: mw[0].start())


def _moved(im: SubjectImage, caption: str, factor: float, said: list[tuple[re.Match, str]],
           position_words: tuple[tuple[str, float, float], ...], places: int, place_phrase: str) -> list[SubjectImage]:
    """Copies of ``im`` (resized by ``factor`` about its place) at the next ``places`` - 1 places
    after the one ``caption`` says, the place phrase rewritten. Only a caption that says exactly one
    place (two describe two things, and only the frame as a whole can move) on a plain background."""
    if places <= 1 or len(said) != 1 or plain_border(im.pixels_HW3) is None:
        return []
    order = [w for w, _, _ in position_words]
    point = {w: (x, y) for w, x, y in position_words}
    (m, place), k = said[0], order.index(said[0][1])
    out = []
    for other in (order[(k + i) % len(order)] for i in range(1, min(places, len(order)))):
        moved = caption[: m.start()] + place_phrase.format(word=other) + caption[m.end():]
        out.append(SubjectImage(im.path, moved, zoomed_copy(im.pixels_HW3, factor, point[place], point[other])))
    return out


def moved_copies(images: list[SubjectImage], position_words: tuple[tuple[str, float, float], ...], *, places: int,
                 place_phrase_re: str, place_phrase: str,
                 place_aliases: tuple[tuple[str, str], ...] = ()) -> list[SubjectImage]:
    """Each photo, at its own size, moved to the next ``places`` - 1 places the model's captions name
    after its own (``--move-places``): views of every size at places no photo shows it (on toy,
    four large photos never show a large subject at the top). Same rules as ``zoomed_copies``'
    moves: one place said, plain background."""
    words = _place_words(position_words, place_aliases)
    return [c for im in images for c in _moved(im, im.caption, 1.0, _said_places(im.caption, words, place_phrase_re),
                                               position_words, places, place_phrase)]


def recoloured_background(pixels_HW3: np.ndarray, old_rgb, new_rgb) -> np.ndarray:
    """The photo with its plain background colour ``old_rgb`` repainted ``new_rgb``: pixels of that
    exact colour take the new one, and each of the subject's edge pixels (a blend of a subject
    colour and the background, from anti-aliasing or resampling) has its background share
    repainted, so no ring of the old colour is left around the subject. The subject colour of a
    blend is the neighbour (itself included) it lies between the background and, the farthest
    from the background."""
    px = pixels_HW3.astype(np.float64)
    old, new = np.asarray(old_rgb, dtype=np.float64), np.asarray(new_rgb, dtype=np.float64)
    is_bg = np.all(pixels_HW3 == np.asarray(old_rgb, dtype=pixels_HW3.dtype), axis=-1)
    out = px.copy()
    out[is_bg] = new
    H, W = is_bg.shape
    shifts = [(dy, dx) for dy in range(3) for dx in range(3)]
    pad_bg = np.pad(is_bg, 1, constant_values=True)
    edge = ~is_bg & np.any([pad_bg[dy:dy + H, dx:dx + W] for dy, dx in shifts], axis=0)
    pad_px = np.pad(px, ((1, 1), (1, 1), (0, 0)), mode="edge")
    cand_KN3 = np.stack([pad_px[dy:dy + H, dx:dx + W][edge] for dy, dx in shifts]) - old  # subject colour - bg
    valid_KN = ~np.stack([pad_bg[dy:dy + H, dx:dx + W][edge] for dy, dx in shifts])
    p_N3 = px[edge] - old
    alpha_KN = np.clip(np.einsum("nc,knc->kn", p_N3, cand_KN3) / np.maximum(np.einsum("knc,knc->kn", cand_KN3, cand_KN3), 1e-9), 0, 1)
    resid_KN = np.linalg.norm(p_N3[None] - alpha_KN[..., None] * cand_KN3, axis=-1)
    on_line_KN = valid_KN & (resid_KN <= 8.0)
    reach_KN = np.linalg.norm(cand_KN3, axis=-1)
    # among the neighbours the pixel lies between the background and, the farthest (the pixel
    # itself always qualifies: alpha 1, nothing repainted)
    pick_N = np.where(on_line_KN, reach_KN, -1.0).argmax(0)
    alpha_N = alpha_KN[pick_N, np.arange(len(pick_N))]
    out[edge] = px[edge] + (1 - alpha_N)[:, None] * (new - old)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _subject_colours(pixels_HW3: np.ndarray, bg_rgb, colours: dict[str, np.ndarray], *, tol: float = 40.0,
                     min_pixels: int = 3) -> set[str]:
    """The named colours the photo shows besides its background (at least ``min_pixels`` pixels
    within ``tol`` of the colour; a blend near a colour counts, so it errs towards leaving a colour
    out)."""
    px = pixels_HW3.reshape(-1, 3).astype(np.float64)
    px = px[~np.all(pixels_HW3.reshape(-1, 3) == np.asarray(bg_rgb, dtype=pixels_HW3.dtype), axis=-1)]
    return {name for name, rgb in colours.items() if int((np.linalg.norm(px - rgb, axis=-1) <= tol).sum()) >= min_pixels}


def _same_case(word: str, like: str) -> str:
    """``word`` in the case of ``like`` (all capitals, a capital first, else as it is)."""
    return word.upper() if like.isupper() else word.capitalize() if like[:1].isupper() else word


def _nearest_named(points_N3: np.ndarray, colours: dict[str, np.ndarray], *, tol: float) -> set[str]:
    """The named colours nearest to the points, for the points within ``tol`` of one."""
    names, rgb_K3 = list(colours), np.stack(list(colours.values()))
    d_NK = np.linalg.norm(np.asarray(points_N3, dtype=np.float64)[:, None] - rgb_K3, axis=-1)
    return {names[k] for k, d in zip(d_NK.argmin(1), d_NK.min(1)) if d <= tol}


def _blend_lookalikes(subject: set[str], colours: dict[str, np.ndarray], *, tol: float = 60.0) -> set[str]:
    """Named colours that a blend of two of the subject's colours is nearest to, within ``tol``
    (orange between red and yellow, purple between red and blue): on such a background the
    subject's inner edges read as background."""
    t_T1 = np.linspace(0.1, 0.9, 17)[:, None]
    parts = sorted(subject)
    return set().union(*(_nearest_named(colours[a] * (1 - t_T1) + colours[b] * t_T1, colours, tol=tol)
                         for i, a in enumerate(parts) for b in parts[i + 1:]))


def recoloured_copies(images: list[SubjectImage], background_colours: tuple[tuple[str, tuple[int, int, int]], ...],
                      background_phrase_re: str, *, copies: int, seed: int) -> list[SubjectImage]:
    """``copies`` copies of each image whose background is one colour the model's captions name
    (``background_colours``: (word, RGB)), its caption saying that colour once in its background
    phrase (``background_phrase_re``, a regex with ``{word}``), repainted in named colours no
    image shows as its plain background (captioned or not), the caption's colour word rewritten
    (``--recolour``): views of the subject on backgrounds no photo shows. Never taken: the
    subject's colours (those shown by most photos, each photo counted once however many of its
    copies are given), the colours a blend of two of them is nearest to, and for each image any
    colour that image itself shows. The free colours, in an order drawn from ``seed``, are dealt to
    the images in turn (an image skips those it shows); an image gets fewer copies when fewer
    colours are free for it, and none are made when no colour is free."""
    if copies <= 0 or not background_colours or not background_phrase_re:
        return []
    rgb = {w: np.asarray(c, dtype=np.float64) for w, c in background_colours}
    plain = []  # (image, border RGB, the caption's match, its colour word, the colours it shows)
    backgrounds = set()  # the named colours of every plain background, whatever the caption says
    for im in images:
        border = plain_border(im.pixels_HW3)
        if border is None:
            continue
        backgrounds |= _nearest_named(border[None], rgb, tol=40)
        said = [(m, w) for w in rgb for m in re.finditer(background_phrase_re.format(word=re.escape(w)), im.caption,
                                                           flags=re.IGNORECASE)]
        if len(said) != 1 or np.linalg.norm(border.astype(np.float64) - rgb[said[0][1]]) > 40:
            continue  # the caption must name the one colour the border shows
        plain.append((im, border, *said[0], _subject_colours(im.pixels_HW3, border, rgb)))
    # the subject's colours: those most photos show (a view's edge blends with its background can
    # look like another named colour, orange between red and yellow, but only in that view); a
    # photo's shrunk and moved copies share its path and count with it
    by_photo: dict[Path, set[str]] = {}
    for im, _, _, _, shown in plain:
        by_photo.setdefault(im.path, set()).update(shown)
    seen = Counter(c for shown in by_photo.values() for c in shown)
    subject = {c for c, n in seen.items() if 2 * n > len(by_photo)}
    ruled_out = subject | _blend_lookalikes(subject, rgb) | backgrounds
    free = [w for w in rgb if w not in ruled_out]
    if not free:
        return []
    # the free colours in a seeded order, dealt to the views in turn
    order = [free[int(k)] for k in np.random.default_rng([seed, 13]).permutation(len(free))]
    out = []
    for j, (im, border, m, word, shown) in enumerate(plain):
        at = m.start() + _word_at(word, m.group(0))
        said_word = im.caption[at:at + len(word)]
        mine = [c for c in order[j * copies % len(free):] + order[:j * copies % len(free)] if c not in shown]
        for new in mine[:copies]:
            caption = im.caption[:at] + _same_case(new, said_word) + im.caption[at + len(word):]
            out.append(SubjectImage(im.path, caption, recoloured_background(im.pixels_HW3, border, rgb[new])))
    return out

