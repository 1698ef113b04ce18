"""Pixel-level detectors: read back from any image which shapes, colours, positions, sizes and
background it shows, and check them against what a caption asked for.

They work on generated images too: pixels are matched to the nearest palette colour within a
tolerance (blends to the nearest colour the image shows), the background is what covers the
image border, shapes are the connected regions of the other colours, and a shape's class is the
template (the renderer's own mask definitions) with the highest overlap once it is drawn over the
region with the same area and centroid.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from .render import SIZE_RADIUS, shape_mask
from .scene import CLASSES, COLOURS, ParsedCaption

#: RGB distance within which a pixel counts as a palette colour
COLOUR_TOLERANCE = 60.0
#: a colour covering at least this share of the border is background
BORDER_SHARE = 0.2
#: regions smaller than this share of the image are noise
MIN_AREA = 0.008
#: template overlap (IoU, at the image's own resolution) a region needs to count as a class
MIN_SCORE = 0.7
#: sub-pixel samples per side when a template is drawn over a region
TEMPLATE_SUPERSAMPLE = 4

_NAMES = list(COLOURS)
_RGB = np.array([COLOURS[n] for n in _NAMES], dtype=np.float64)


@dataclass(frozen=True)
class Found:
    cls: str | None  # None: no template fits
    colour: str
    position: str
    size: str
    score: float  # template IoU
    area: float  # share of the image
    bbox: tuple[int, int, int, int]  # top, left, bottom, right (exclusive)


@dataclass
class Detection:
    background: tuple[str, ...]  # one colour (plain) or two (stripes), by border share
    shapes: list[Found] = field(default_factory=list)


def colour_labels(img_HW3: np.ndarray) -> np.ndarray:
    """Index into the palette of each pixel's nearest colour, -1 where none is within tolerance."""
    d = np.linalg.norm(img_HW3.astype(np.float64)[..., None, :] - _RGB, axis=-1)
    lab = d.argmin(-1)
    lab[d.min(-1) > COLOUR_TOLERANCE] = -1
    return lab


def inner_pixels(lab: np.ndarray) -> np.ndarray:
    """Pixels labelled with a palette colour whose eight neighbours all have the same label (not
    part of a blended rim)."""
    H, W = lab.shape
    pad = np.pad(lab, 1, mode="edge")
    inner = lab >= 0
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            inner &= pad[dy : dy + H, dx : dx + W] == lab
    return inner


def snap_to_shown(img_HW3: np.ndarray, lab: np.ndarray) -> np.ndarray:
    """``lab`` with blended pixels given the nearest colour the image does show.

    Blended: no palette colour near, or a colour that only forms thin rims (purple between red
    and blue, orange between red and yellow). A colour is shown when enough of its pixels have
    all eight neighbours of the same colour, which a rim one or two pixels wide never has. A
    blurred edge then splits at its midpoint instead of eating into the shape, so thin parts (a
    small star's points) survive the softness of generated images."""
    H, W = lab.shape
    inner = inner_pixels(lab)
    counts = np.bincount(lab[inner], minlength=len(_NAMES))
    shown = np.nonzero(counts >= MIN_AREA * H * W / 4)[0]
    blended = ~np.isin(lab, shown)
    if not shown.size or not blended.any():
        return lab
    d = np.linalg.norm(np.asarray(img_HW3, dtype=np.float64)[blended][:, None, :] - _RGB[shown], axis=-1)
    out = lab.copy()
    out[blended] = shown[d.argmin(-1)]
    return out


@lru_cache(maxsize=None)
def _template_moments() -> dict[str, tuple[float, float, float]]:
    """Each class's mask area and centroid (x, y) in normalised box coordinates (half-width 1)."""
    n = 1200
    g = (np.arange(n) + 0.5) / n * 2.4 - 1.2
    X, Y = np.meshgrid(g, g)
    out = {}
    for cls in CLASSES:
        m = shape_mask(cls, X, Y)
        out[cls] = (float(m.mean() * 2.4 * 2.4), float(X[m].mean()), float(Y[m].mean()))
    return out


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected regions of ``mask``, each as a boolean mask."""
    seen = np.zeros_like(mask)
    H, W = mask.shape
    out = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        region = np.zeros_like(mask)
        q = deque([(y0, x0)])
        seen[y0, x0] = True
        while q:
            y, x = q.popleft()
            region[y, x] = True
            for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= yy < H and 0 <= xx < W and mask[yy, xx] and not seen[yy, xx]:
                    seen[yy, xx] = True
                    q.append((yy, xx))
        out.append(region)
    return out


def position_of(cx: float, cy: float) -> str:
    """Position word of a centre given as shares of the side."""
    dx, dy = cx - 0.5, cy - 0.5
    if max(abs(dx), abs(dy)) < 0.12:
        return "center"
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "top" if dy < 0 else "bottom"


def classify(region: np.ndarray) -> tuple[str | None, float, float]:
    """(class, IoU with its template, the region's radius as a share of the side).

    Each class's template is drawn over the region at the image's resolution (supersampled, half
    covered counts) with the region's area and centroid, and compared pixel for pixel. Area and
    centroid barely move when a soft image thins a shape's tips, where a bounding box shrinks and
    turns a small star into a pentagon; at the image's own pixels a template also keeps the
    aspect a bounding-box fit would stretch away (a bar is no square). The radius is the best
    template's box half-width, from the area."""
    rows, cols = np.nonzero(region)
    H, W = region.shape
    area = rows.size
    cy, cx = rows.mean() + 0.5, cols.mean() + 0.5
    pad = 3
    top, left = max(int(rows.min()) - pad, 0), max(int(cols.min()) - pad, 0)
    bottom, right = min(int(rows.max()) + 1 + pad, H), min(int(cols.max()) + 1 + pad, W)
    window = region[top:bottom, left:right]
    h, w = window.shape
    ss = TEMPLATE_SUPERSAMPLE
    sub = (np.arange(ss) + 0.5) / ss
    ys = (top + np.arange(h)[:, None] + sub).ravel()
    xs = (left + np.arange(w)[:, None] + sub).ravel()
    best, score, radius_px = None, 0.0, 0.0
    for cls, (tpl_area, mx, my) in _template_moments().items():
        r = float(np.sqrt(area / tpl_area))  # box half-width in pixels
        X, Y = np.meshgrid((xs - cx) / r + mx, (ys - cy) / r + my)
        drawn = shape_mask(cls, X, Y).reshape(h, ss, w, ss).mean((1, 3)) >= 0.5
        iou = float((drawn & window).sum() / max((drawn | window).sum(), 1))
        if iou > score:
            best, score, radius_px = cls, iou, r
    return (best if score >= MIN_SCORE else None), score, radius_px / max(H, W)


def border_background(lab: np.ndarray) -> list[int]:
    """Palette indices of the background: the colours covering at least BORDER_SHARE of the image
    border, at most two (stripes, in the order the top rows show them). Shared with the subject
    detector (subjects.py)."""
    H = lab.shape[0]
    border = np.concatenate([lab[:2].ravel(), lab[-2:].ravel(), lab[:, :2].ravel(), lab[:, -2:].ravel()])
    border = border[border >= 0]
    counts = np.bincount(border, minlength=len(_NAMES)) if border.size else np.zeros(len(_NAMES), int)
    share = counts / max(counts.sum(), 1)
    bg = [int(i) for i in np.argsort(-share) if share[i] >= BORDER_SHARE][:2]
    if len(bg) == 2:  # stripes: say the colours in the order the top rows show them
        top = np.bincount(lab[: max(1, H // 16)].ravel()[lab[: max(1, H // 16)].ravel() >= 0], minlength=len(_NAMES))
        bg.sort(key=lambda i: -top[i])
    return bg


def place(region: np.ndarray, radius: float) -> tuple[str, str, tuple[int, int, int, int]]:
    """Position word (from the box centre), size word (from ``classify``'s radius) and box (top,
    left, bottom, right; exclusive) of a region."""
    H, W = region.shape
    rows, cols = np.nonzero(region.any(1))[0], np.nonzero(region.any(0))[0]
    cy, cx = (rows[0] + rows[-1] + 1) / 2 / H, (cols[0] + cols[-1] + 1) / 2 / W
    mid = (SIZE_RADIUS["small"] + SIZE_RADIUS["large"]) / 2
    box = (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)
    return position_of(cx, cy), "large" if radius > mid else "small", box


def detect(img_HW3: np.ndarray) -> Detection:
    """The background and the shapes of an RGB image (uint8 or float 0-255), largest first."""
    lab = snap_to_shown(img_HW3, colour_labels(img_HW3))
    H, W = lab.shape
    bg = border_background(lab)
    det = Detection(tuple(_NAMES[i] for i in bg))
    for i, name in enumerate(_NAMES):
        if i in bg:
            continue
        for region in _components(lab == i):
            area = region.sum() / (H * W)
            if area < MIN_AREA:
                continue
            cls, score, radius = classify(region)
            position, size, box = place(region, radius)
            det.shapes.append(Found(cls, name, position, size, score, float(area), box))
    det.shapes.sort(key=lambda f: -f.area)
    return det


def check(parsed: ParsedCaption, det: Detection) -> dict[str, bool | None]:
    """Which asked attributes the image shows: class, colour, position, size (of every asked
    shape) and background; None for what the caption did not say. ``all``: every asked one holds."""
    result: dict[str, bool | None] = {"class": None, "colour": None, "position": None, "size": None,
                                      "background": None}

    def merge(key: str, ok: bool) -> None:
        result[key] = ok if result[key] is None else (result[key] and ok)

    for want in parsed.shapes:
        same_cls = [f for f in det.shapes if f.cls == want["cls"]]
        merge("class", bool(same_cls))
        pool = same_cls
        if want["colour"] is not None:
            pool = [f for f in same_cls if f.colour == want["colour"]]
            merge("colour", bool(pool))
        pick = pool[0] if pool else None
        if want["position"] is not None:
            merge("position", pick is not None and any(f.position == want["position"] for f in pool))
        if want["size"] is not None:
            merge("size", pick is not None and any(f.size == want["size"] for f in pool))
    if parsed.background is not None:
        merge("background", set(parsed.background) == set(det.background))
    asked = [v for v in result.values() if v is not None]
    result["all"] = bool(asked) and all(asked)
    return result
