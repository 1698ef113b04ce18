"""Charts and labelled image grids drawn with Pillow alone (no plotting library needed).

Every function returns a ``PIL.Image``; writing it (with provenance) is the caller's business.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageDraw, ImageFont

#: colour-blind-safe series colours (Okabe-Ito)
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
INK, GRID, MUTED = "#222222", "#DDDDDD", "#666666"


def font(size: int) -> Any:
    """Pillow's bundled scalable font at ``size`` px (its fixed bitmap font where FreeType is absent)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, f: Any) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=f)
    return right - left, bottom - top


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (1, 2, 2.5 or 5 times a power of ten apart)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(target, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    ticks, v = [], first
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 12))
        v += step
    if ticks[-1] < hi:
        ticks.append(round(ticks[-1] + step, 12))
    return ticks


def _fmt(v: float) -> str:
    return f"{v:.3g}" if v != 0 else "0"


@dataclass
class Series:
    name: str
    values: Sequence[float]
    spreads: Sequence[float] | None = None  # drawn as +/- error bars


@dataclass
class Panel:
    title: str
    y_label: str
    series: list[Series] = field(default_factory=list)
    y_min: float | None = 0.0  # None: from the data


def line_panels(panels: Sequence[Panel], x_labels: Sequence[str], *, title: str, x_label: str,
                panel_size: tuple[int, int] = (460, 340)) -> Image.Image:
    """Side-by-side line charts sharing the x categories, with markers and error bars."""
    pw, ph = panel_size
    f_title, f_axis, f_tick = font(20), font(15), font(12)
    head = 44
    img = Image.new("RGB", (pw * len(panels), ph + head), "white")
    draw = ImageDraw.Draw(img)
    draw.text((12, 10), title, fill=INK, font=f_title)
    for pi, panel in enumerate(panels):
        ox, oy = pi * pw, head
        left, right, top, bottom = ox + 64, ox + pw - 16, oy + 30, oy + ph - 58
        draw.text((ox + 64, oy + 4), panel.title, fill=INK, font=f_axis)
        ys = [v + (s or 0) * sign for se in panel.series
              for v, s in zip(se.values, se.spreads or [0] * len(se.values)) for sign in (-1, 1)]
        ys = [y for y in ys if math.isfinite(y)] or [0.0, 1.0]
        lo = panel.y_min if panel.y_min is not None else min(ys)
        ticks = nice_ticks(min(lo, min(ys)), max(ys))
        y0, y1 = ticks[0], ticks[-1]

        def py(v: float) -> float:
            return bottom - (v - y0) / (y1 - y0) * (bottom - top)

        n = len(x_labels)

        def px(i: int) -> float:
            return left + (i + 0.5) * (right - left) / max(n, 1)

        for t in ticks:
            draw.line([(left, py(t)), (right, py(t))], fill=GRID)
            w, h = _text_size(draw, _fmt(t), f_tick)
            draw.text((left - 6 - w, py(t) - h / 2 - 2), _fmt(t), fill=MUTED, font=f_tick)
        draw.rectangle([left, top, right, bottom], outline=INK)
        for i, lab in enumerate(x_labels):
            for li, part in enumerate(lab.split("\n")):
                w, _ = _text_size(draw, part, f_tick)
                draw.text((px(i) - w / 2, bottom + 5 + 14 * li), part, fill=MUTED, font=f_tick)
        w, _ = _text_size(draw, x_label, f_tick)
        draw.text(((left + right) / 2 - w / 2, oy + ph - 22), x_label, fill=INK, font=f_tick)
        label = Image.new("RGB", (bottom - top, 18), "white")
        ImageDraw.Draw(label).text((0, 0), panel.y_label, fill=INK, font=f_tick)
        img.paste(label.rotate(90, expand=True), (ox + 4, top))
        for si, se in enumerate(panel.series):
            colour = PALETTE[si % len(PALETTE)]
            pts = [(px(i), py(v)) for i, v in enumerate(se.values) if math.isfinite(v)]
            if se.spreads is not None:
                for i, (v, s) in enumerate(zip(se.values, se.spreads)):
                    if math.isfinite(v) and s > 0:
                        draw.line([(px(i), py(v - s)), (px(i), py(v + s))], fill=colour, width=2)
                        for yy in (py(v - s), py(v + s)):
                            draw.line([(px(i) - 4, yy), (px(i) + 4, yy)], fill=colour, width=2)
            if len(pts) > 1:
                draw.line(pts, fill=colour, width=3)
            for x, y in pts:
                draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
        if len(panel.series) > 1:
            for si, se in enumerate(panel.series):
                y = top + 8 + 18 * si
                draw.rectangle([right - 120, y, right - 108, y + 12], fill=PALETTE[si % len(PALETTE)])
                draw.text((right - 102, y - 2), se.name, fill=INK, font=f_tick)
    return img


def grouped_bars(categories: Sequence[str], series: Sequence[Series], *, title: str, y_label: str,
                 x_label: str, height: int = 380, min_width: int = 640) -> Image.Image:
    """Bars of each series side by side for every category, with a legend."""
    f_title, f_tick = font(20), font(12)
    n, k = len(categories), max(len(series), 1)
    group_w = max(12 * k + 10, 36)
    width = max(min_width, 90 + n * group_w + 20)
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((12, 10), title, fill=INK, font=f_title)
    left, right, top, bottom = 70, width - 20, 70, height - 56
    vals = [v for se in series for v in se.values if math.isfinite(v)] or [1.0]
    ticks = nice_ticks(0.0, max(vals) if max(vals) > 0 else 1.0)
    y1 = ticks[-1]

    def py(v: float) -> float:
        return bottom - v / y1 * (bottom - top)

    for t in ticks:
        draw.line([(left, py(t)), (right, py(t))], fill=GRID)
        w, h = _text_size(draw, _fmt(t), f_tick)
        draw.text((left - 6 - w, py(t) - h / 2 - 2), _fmt(t), fill=MUTED, font=f_tick)
    slot = (right - left) / max(n, 1)
    bar = max(2.0, min(22.0, (slot - 6) / k))
    step = max(1, math.ceil(n / ((right - left) / 28)))  # thin the labels of long axes
    for ci, cat in enumerate(categories):
        x0 = left + ci * slot + (slot - bar * k) / 2
        for si, se in enumerate(series):
            v = se.values[ci]
            if math.isfinite(v) and v > 0:
                draw.rectangle([x0 + si * bar, py(v), x0 + (si + 1) * bar - 1, bottom], fill=PALETTE[si % len(PALETTE)])
        if ci % step == 0:
            w, _ = _text_size(draw, cat, f_tick)
            draw.text((left + (ci + 0.5) * slot - w / 2, bottom + 5), cat, fill=MUTED, font=f_tick)
    draw.rectangle([left, top, right, bottom], outline=INK)
    w, _ = _text_size(draw, x_label, f_tick)
    draw.text(((left + right) / 2 - w / 2, height - 26), x_label, fill=INK, font=f_tick)
    label = Image.new("RGB", (bottom - top, 18), "white")
    ImageDraw.Draw(label).text((0, 0), y_label, fill=INK, font=f_tick)
    img.paste(label.rotate(90, expand=True), (6, top))
    x = left
    for si, se in enumerate(series):
        draw.rectangle([x, 44, x + 12, 56], fill=PALETTE[si % len(PALETTE)])
        draw.text((x + 18, 42), se.name, fill=INK, font=f_tick)
        x += 30 + _text_size(draw, se.name, f_tick)[0]
    return img


def labelled_grid(rows: Sequence[Sequence[Image.Image]], row_labels: Sequence[str], col_labels: Sequence[str],
                  *, thumb: int, title: str = "") -> Image.Image:
    """Images in rows and columns, each scaled to ``thumb`` px wide, with row and column labels."""
    f_title, f_lab = font(18), font(13)
    first = rows[0][0]
    th = max(1, round(first.height * thumb / first.width))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(_text_size(probe, line, f_lab)[0] for lab in row_labels for line in lab.split("\n")) + 16
    head = (30 if title else 0) + 22
    pad = 4
    ncol = max(len(r) for r in rows)
    img = Image.new("RGB", (label_w + ncol * (thumb + pad), head + len(rows) * (th + pad)), "white")
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((8, 6), title, fill=INK, font=f_title)
    for ci, lab in enumerate(col_labels):
        draw.text((label_w + ci * (thumb + pad) + 2, head - 20), lab, fill=INK, font=f_lab)
    resample = Image.Resampling.NEAREST if thumb >= first.width else Image.Resampling.LANCZOS
    for ri, (row, lab) in enumerate(zip(rows, row_labels)):
        y = head + ri * (th + pad)
        for li, line in enumerate(lab.split("\n")):
            draw.text((6, y + 4 + 16 * li), line, fill=INK if li == 0 else MUTED, font=f_lab)
        for ci, im in enumerate(row):
            img.paste(im.convert("RGB").resize((thumb, th), resample), (label_w + ci * (thumb + pad), y))
    return img
