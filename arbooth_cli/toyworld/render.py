"""Drawing toy-world scenes with numpy: upright flat shapes, 2x supersampled edges.

Shapes are defined as masks over normalised coordinates (x right, y down, both in [-1, 1] over
the shape's box), so the renderer and the detector share one definition.
"""

from __future__ import annotations

import math

import numpy as np

from .scene import COLOURS, Scene, Shape

#: shape box half-width as a share of the image side
SIZE_RADIUS = {"small": 0.14, "large": 0.22}
#: shape centre (x, y) as a share of the image side
POSITION_CENTRE = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75),
                   "center": (0.5, 0.5)}
#: stripes per image side
STRIPES = 8


def _polygon(x: np.ndarray, y: np.ndarray, pts: list[tuple[float, float]]) -> np.ndarray:
    """Even-odd point-in-polygon test, vectorised."""
    inside = np.zeros(x.shape, dtype=bool)
    n = len(pts)
    for i in range(n):
        (x1, y1), (x2, y2) = pts[i], pts[(i + 1) % n]
        crosses = (y1 > y) != (y2 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            xi = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (x < xi)
    return inside


def _star_points() -> list[tuple[float, float]]:
    pts = []
    for k in range(10):
        r = 1.0 if k % 2 == 0 else 0.55  # chubby: thin points blur away at 64 px and stride 8
        a = -math.pi / 2 + k * math.pi / 5
        pts.append((r * math.cos(a), r * math.sin(a) + 0.08))
    return pts


_STAR = _star_points()
_TRIANGLE = [(0.0, -0.95), (0.98, 0.8), (-0.98, 0.8)]


def shape_mask(cls: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Which points (normalised box coordinates) a shape of class ``cls`` covers."""
    if cls == "circle":
        return x * x + y * y <= 1.0
    if cls == "square":
        return (np.abs(x) <= 0.85) & (np.abs(y) <= 0.85)
    if cls == "diamond":
        return np.abs(x) + np.abs(y) <= 1.0
    if cls == "triangle":
        return _polygon(x, y, _TRIANGLE)
    if cls == "star":
        return _polygon(x, y, _STAR)
    if cls == "cross":
        return ((np.abs(x) <= 0.32) & (np.abs(y) <= 0.95)) | ((np.abs(y) <= 0.32) & (np.abs(x) <= 0.95))
    if cls == "heart":
        u, v = x * 1.25, -(y * 1.25 + 0.15)
        return (u * u + v * v - 1) ** 3 - u * u * v**3 <= 0
    raise ValueError(f"unknown shape class {cls!r}")


def background(colours: tuple[str, ...], size: int) -> np.ndarray:
    """(size, size, 3) float: a plain colour, or horizontal stripes of two colours."""
    img = np.empty((size, size, 3), dtype=np.float64)
    if len(colours) == 1:
        img[:] = COLOURS[colours[0]]
        return img
    band = np.arange(size) * STRIPES // size % 2
    for i, c in enumerate(colours[:2]):
        img[band == i] = COLOURS[c]
    return img


def draw_shape(img: np.ndarray, shape: Shape, *, centre: tuple[float, float] | None = None,
               radius: float | None = None, paint=None) -> np.ndarray:
    """Paint ``shape`` onto ``img`` (H, W, 3 float) in place, 2x supersampled; returns its coverage.

    ``centre``/``radius`` (shares of the side) override the position and size; ``paint(x, y)``
    returns (..., 3) colours over the shape's normalised coordinates (patterned subjects), else
    the shape's flat colour.
    """
    H, W = img.shape[:2]
    cx, cy = centre if centre is not None else POSITION_CENTRE[shape.position]
    r = radius if radius is not None else SIZE_RADIUS[shape.size]
    ss = 2
    ys = (np.arange(H * ss) + 0.5) / (H * ss)
    xs = (np.arange(W * ss) + 0.5) / (W * ss)
    X, Y = np.meshgrid((xs - cx) / r * (W / max(H, W)), (ys - cy) / r * (H / max(H, W)))
    m = shape_mask(shape.cls, X, Y).astype(np.float64)
    cover = m.reshape(H, ss, W, ss).mean(axis=(1, 3))
    if paint is None:
        colour = np.broadcast_to(np.asarray(COLOURS[shape.colour], dtype=np.float64), (H, W, 3))
    else:
        col = paint(X, Y) * m[..., None]
        colour = col.reshape(H, ss, W, ss, 3).sum(axis=(1, 3)) / np.maximum(cover * ss * ss, 1e-9)[..., None]
    img[:] = img * (1 - cover[..., None]) + colour * cover[..., None]
    return cover


def render(scene: Scene, size: int = 64, *, rng: np.random.Generator | None = None,
           jitter: float = 0.04) -> np.ndarray:
    """The scene as (size, size, 3) uint8 RGB. ``rng`` moves each shape by up to ``jitter`` of the
    side (training images vary; the detector's position bands allow for it)."""
    img = background(scene.background.colours, size)
    for shape in scene.shapes:
        cx, cy = POSITION_CENTRE[shape.position]
        if rng is not None and jitter > 0:
            cx, cy = cx + rng.uniform(-jitter, jitter), cy + rng.uniform(-jitter, jitter)
        draw_shape(img, shape, centre=(cx, cy))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def example(seed: int, index: int, size: int = 64) -> tuple[np.ndarray, str, Scene]:
    """Item ``index`` of the toy dataset of ``seed``: (image, caption, scene). Each item has its own
    generator, so it is the same however many items are drawn, and in any order."""
    from .scene import caption, sample_scene

    rng = np.random.default_rng([seed, index])
    scene = sample_scene(rng)
    return render(scene, size, rng=rng), caption(scene, rng), scene
