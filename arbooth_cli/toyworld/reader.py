"""Reading a subject from its own photos, and finding it in any image.

A toy-world subject is a shape of one class painted with flat colours in some layout. Nothing
here knows any layout in advance: :func:`read_look` reads a :class:`SubjectLook` from the photos
themselves (the class, by template fit; a colour map over the class's normalised box, each cell
the colour most photos show there), and :meth:`SubjectLook.find` checks an image for an object of
that class whose every colour part shows its colour (``subjects.find_layout``, the same check
the built-in subjects' detector makes with their known patterns). Pure numpy: no torch.

Notation: ``G`` is the map's cells a side, ``C`` the palette size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .detect import (
    _NAMES,
    MIN_AREA,
    _components,
    _template_moments,
    border_background,
    classify,
    colour_labels,
    inner_pixels,
)
from .render import shape_mask
from .scene import CLASSES
from .subjects import (
    SubjectMatch,
    _class_box,
    _hull_distance,
    _safe_backgrounds,
    find_layout,
)

#: cells a side of the colour map over the class's box
GRID = 32
#: share of a cell's votes its colour needs (else the cell is left out of the check)
CELL_MAJORITY = 0.6
#: share of the map's cells a colour needs to count as a part of the subject (less: noise)
MIN_COLOUR_CELLS = 0.04
#: RGB distance from the background (and its blends) beyond which a pixel is surely object
OBJECT_DISTANCE = 60.0


class UnreadableSubject(ValueError):
    """The photos do not show one shape of a toy class in two or more colours; ``str()`` says why."""


@dataclass(frozen=True)
class SubjectLook:
    """A subject as its photos show it: a class and a colour map over the class's normalised box.

    ``cells_GG``: palette index per cell (rows top to bottom), -1 where the photos do not agree
    or the class's shape does not reach. ``photos``: photos the map was read from;
    ``read_back``: how many of them :meth:`find` then finds the subject in."""

    cls: str
    cells: tuple[tuple[int, ...], ...]
    photos: int
    read_back: int = 0

    @cached_property
    def cells_GG(self) -> np.ndarray:
        return np.asarray(self.cells, dtype=np.int64)

    @cached_property
    def colours(self) -> tuple[str, ...]:
        """The subject's colours, most cells first."""
        idx, counts = np.unique(self.cells_GG[self.cells_GG >= 0], return_counts=True)
        return tuple(_NAMES[int(i)] for i in idx[np.argsort(-counts, kind="stable")])

    @property
    def name(self) -> str:
        return self.describe()

    def describe(self) -> str:
        """``"star of red 52%, yellow 48%"``: the class and each colour's share of the map."""
        valid = self.cells_GG[self.cells_GG >= 0]
        parts = [f"{c} {round(100 * float((valid == _NAMES.index(c)).mean()))}%" for c in self.colours]
        return f"{self.cls} of {', '.join(parts)}"

    def safe_backgrounds(self) -> tuple[str, ...]:
        """Background colours that neither are nor look like the subject's colours or their blends."""
        return _safe_backgrounds(tuple(sorted(self.colours)))

    def part(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Index into :attr:`colours` of the cell each point of the normalised box falls in
        (-1: outside the box or a left-out cell)."""
        x0, x1, y0, y1 = _class_box(self.cls)
        G = self.cells_GG.shape[0]
        ix = np.floor((np.asarray(x) - x0) / (x1 - x0) * G).astype(np.int64)
        iy = np.floor((np.asarray(y) - y0) / (y1 - y0) * G).astype(np.int64)
        inside = (ix >= 0) & (ix < G) & (iy >= 0) & (iy < G)
        return np.where(inside, self._parts_GG[iy.clip(0, G - 1), ix.clip(0, G - 1)], -1)

    @cached_property
    def _parts_GG(self) -> np.ndarray:
        """The map as indices into :attr:`colours` (-1 where left out): the detector asks for
        parts of many points per image, so the lookup is made once."""
        lookup = np.full(len(_NAMES) + 1, -1, dtype=np.int64)  # palette index (-1: the last entry) -> part
        for k, c in enumerate(self.colours):
            lookup[_NAMES.index(c)] = k
        return lookup[self.cells_GG]

    def find(self, img_HW3: np.ndarray) -> SubjectMatch:
        """Whether an RGB image shows the subject, and where."""
        return find_layout(img_HW3, self.cls, self.part, self.colours)


def _object(img_HW3: np.ndarray) -> tuple[str | None, np.ndarray, np.ndarray] | str:
    """(class or None, the object's region, palette labels) of the largest object of a photo, or why
    there is none."""
    lab = colour_labels(img_HW3)
    H, W = lab.shape
    bg = border_background(lab)
    if not bg:
        return "no background colour covers the border"
    bg_names = [_NAMES[i] for i in bg]
    sure = _hull_distance(img_HW3, bg_names) > OBJECT_DISTANCE
    regions = [r for r in _components(sure) if r.sum() >= MIN_AREA * H * W]
    if not regions:
        return "no object on the background"
    core = max(regions, key=lambda r: int(r.sum()))
    found = np.unique(lab[core & (lab >= 0)])
    colours = [_NAMES[int(i)] for i in found if i not in bg and (lab[core] == i).sum() >= 4]
    if not colours:
        return "the object shows no palette colour"
    # the whole object: pixels nearer its colours (and blends) than the background's
    fg = _hull_distance(img_HW3, colours) < _hull_distance(img_HW3, bg_names)
    region = max((r for r in _components(fg) if (r & core).any()), key=lambda r: int(r.sum()))
    cls, _, _ = classify(region)
    return cls, region, lab


def _cell_centres(cls: str, G: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y), each (G, G): the centres of the map's cells in the class's normalised box."""
    x0, x1, y0, y1 = _class_box(cls)
    centres = (np.arange(G) + 0.5) / G
    return np.meshgrid(x0 + centres * (x1 - x0), y0 + centres * (y1 - y0))


def _votes(cls: str, region: np.ndarray, lab: np.ndarray, G: int) -> np.ndarray:
    """(G, G, C) one vote per cell: the inner colour the photo shows at the cell's centre.

    The class's template is placed by the region's area and centroid (as ``detect.classify`` fits
    it), not by its bounding box, which thin tips shrink by a pixel or so: a cell must be read
    where the pattern really is."""
    rows, cols = np.nonzero(region)
    cy, cx = rows.mean() + 0.5, cols.mean() + 0.5
    tpl_area, mx, my = _template_moments()[cls]
    r_px = float(np.sqrt(rows.size / tpl_area))  # the box's half-width in pixels
    u, v = _cell_centres(cls, G)
    c = np.floor(cx + (u - mx) * r_px).astype(np.int64)
    r = np.floor(cy + (v - my) * r_px).astype(np.int64)
    H, W = lab.shape
    ok = (r >= 0) & (r < H) & (c >= 0) & (c < W)
    r, c = r.clip(0, H - 1), c.clip(0, W - 1)
    inner = inner_pixels(lab)
    ok &= region[r, c] & inner[r, c]
    votes = np.zeros((G, G, len(_NAMES)))
    gi, gj = np.nonzero(ok)
    votes[gi, gj, lab[r[ok], c[ok]]] = 1.0
    return votes


def read_look(photos_HW3: Sequence[np.ndarray], *, grid: int = GRID, prefer_cls: str | None = None) -> SubjectLook:
    """The subject the photos show; :class:`UnreadableSubject` says why there is none.

    Every photo's largest object is classified; the class most photos agree on (at least three, or
    all of fewer photos; ties go to ``prefer_cls``) is the subject's. Its photos vote, cell by cell,
    on the colour at the cell's centre; a cell takes the colour of ``CELL_MAJORITY`` of its votes.
    The subject needs two or more colours (one: a plain shape, which needs no tuning) and must be
    found again in as many photos as agreed on its class."""
    n = len(photos_HW3)
    needed = min(3, n)
    if n == 0:
        raise UnreadableSubject("there are no photos")
    objects, reasons = [], []
    for img in photos_HW3:
        got = _object(np.asarray(img))
        if isinstance(got, str):
            reasons.append(got)
        elif got[0] is None:
            reasons.append("the object is none of the classes " + ", ".join(CLASSES))
        else:
            objects.append(got)
    counts = {c: sum(o[0] == c for o in objects) for c in CLASSES}
    cls = max(CLASSES, key=lambda c: (counts[c], c == prefer_cls))
    if counts[cls] < needed:
        why = "; ".join(sorted(set(reasons))) or "they show different classes"
        raise UnreadableSubject(f"only {counts[cls]} of {n} photos show one shape of the same class ({needed} "
                                f"needed): {why}")
    votes_GGC = sum(_votes(cls, region, lab, grid) for c, region, lab in objects if c == cls)
    total_GG = votes_GGC.sum(-1)
    best_GG = votes_GGC.argmax(-1)
    u, v = _cell_centres(cls, grid)
    inside_GG = shape_mask(cls, u, v)
    agreed = (total_GG > 0) & (votes_GGC.max(-1) >= CELL_MAJORITY * np.maximum(total_GG, 1)) & inside_GG
    cells_GG = np.where(agreed, best_GG, -1)
    kept = cells_GG[cells_GG >= 0]
    for i in np.unique(kept):
        if (kept == i).mean() < MIN_COLOUR_CELLS:
            cells_GG[cells_GG == i] = -1
    colours = np.unique(cells_GG[cells_GG >= 0])
    if colours.size:
        # cells no photo settled (thin tips, part borders) take the nearest settled cell's colour:
        # the layout is flat colours, and the check leaves the pixels at part borders out anyway
        si, sj = np.nonzero(cells_GG >= 0)
        ui, uj = np.nonzero(inside_GG & (cells_GG < 0))
        if ui.size:
            d = (ui[:, None] - si[None]) ** 2 + (uj[:, None] - sj[None]) ** 2
            cells_GG[ui, uj] = cells_GG[si[d.argmin(1)], sj[d.argmin(1)]]
    if colours.size < 2:
        what = _NAMES[int(colours[0])] if colours.size else "no clear colour"
        raise UnreadableSubject(f"the photos show a plain {what} {cls}: a subject needs two or more colours "
                                f"(a plain shape is drawn from words alone)")
    look = SubjectLook(cls, tuple(tuple(int(x) for x in row) for row in cells_GG), photos=n)
    hits = sum(look.find(np.asarray(img)).found for img in photos_HW3)
    if hits < needed:
        raise UnreadableSubject(f"a {look.describe()} read from the photos is found again in only {hits} of {n} "
                                f"({needed} needed): the photos do not agree on one colour layout")
    return SubjectLook(cls, look.cells, photos=n, read_back=hits)
