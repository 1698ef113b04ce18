"""Scale schedules of the Infinity family: which token-map sizes are predicted, per aspect ratio.

Pure Python (no torch), so the registry and ``--help`` stay light.

A schedule is a tuple of ``(t, h, w)`` token-map sizes, coarse to fine; images always use ``t == 1``.
Each aspect-ratio template (h / w) has one 13-scale ladder; the named sizes take its first
7 ('0.06M', 256² for 1:1), 10 ('0.25M', 512²), 12 ('0.60M', 768²) or all 13 ('1M', 1024²) scales.
The numbers are those of Infinity's dynamic-resolution table, so checkpoints trained on it line up.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Tokenizer stride of the Infinity VAEs as seen by the transformer (pixels per token side).
TOKEN_STRIDE = 16

#: Number of scales each named size keeps from its template's ladder.
SIZE_SCALES: dict[str, int] = {"0.06M": 7, "0.25M": 10, "0.60M": 12, "1M": 13}

# (h, w) ladders for h/w >= 1; the portrait ratios' transposes give the landscape ones.
_LADDERS: dict[float, tuple[tuple[int, int], ...]] = {
    1.000: ((1, 1), (2, 2), (4, 4), (6, 6), (8, 8), (12, 12), (16, 16), (20, 20), (24, 24),
            (32, 32), (40, 40), (48, 48), (64, 64)),
    1.250: ((1, 1), (2, 2), (3, 3), (5, 4), (10, 8), (15, 12), (20, 16), (25, 20), (30, 24),
            (35, 28), (45, 36), (55, 44), (70, 56)),
    1.333: ((1, 1), (2, 2), (4, 3), (8, 6), (12, 9), (16, 12), (20, 15), (24, 18), (28, 21),
            (36, 27), (48, 36), (60, 45), (72, 54)),
    1.500: ((1, 1), (2, 2), (3, 2), (6, 4), (9, 6), (15, 10), (21, 14), (27, 18), (33, 22),
            (39, 26), (48, 32), (63, 42), (78, 52)),
    1.750: ((1, 1), (2, 2), (3, 3), (7, 4), (11, 6), (14, 8), (21, 12), (28, 16), (35, 20),
            (42, 24), (56, 32), (70, 40), (84, 48)),
    2.000: ((1, 1), (2, 2), (4, 2), (6, 3), (10, 5), (16, 8), (22, 11), (30, 15), (38, 19),
            (46, 23), (60, 30), (74, 37), (90, 45)),
    2.500: ((1, 1), (2, 2), (5, 2), (10, 4), (15, 6), (20, 8), (25, 10), (30, 12), (40, 16),
            (50, 20), (65, 26), (80, 32), (100, 40)),
    3.000: ((1, 1), (2, 2), (6, 2), (9, 3), (15, 5), (21, 7), (27, 9), (36, 12), (45, 15),
            (54, 18), (72, 24), (90, 30), (111, 37)),
}


def _build_templates() -> dict[float, tuple[tuple[int, int], ...]]:
    out: dict[float, tuple[tuple[int, int], ...]] = {}
    for ratio, hws in _LADDERS.items():
        out[ratio] = hws
        if ratio != 1.0:
            # Infinity keys the landscape templates by 1/ratio truncated to 3 decimals.
            out[int(1 / ratio * 1000) / 1000] = tuple((w, h) for h, w in hws)
    return dict(sorted(out.items()))


#: h/w ratio -> 13-scale (h, w) ladder, for the 15 templates.
TEMPLATES: dict[float, tuple[tuple[int, int], ...]] = _build_templates()

Schedule = tuple[tuple[int, int, int], ...]


@dataclass(frozen=True)
class ScheduleInfo:
    """A resolved schedule and where it came from."""

    h_div_w: float
    size: str
    scales: Schedule

    @property
    def num_tokens(self) -> int:
        return sum(t * h * w for t, h, w in self.scales)

    @property
    def pixel_hw(self) -> tuple[int, int]:
        """Image size of the Infinity tokenizers' stride; see :func:`pixel_size` for others."""
        return pixel_size(self.scales)


def pixel_size(scales: Schedule, token_stride: int = TOKEN_STRIDE) -> tuple[int, int]:
    """(H, W) in pixels of the images a schedule makes with a tokenizer of ``token_stride``."""
    _, h, w = scales[-1]
    return h * token_stride, w * token_stride


def nearest_template(h_div_w: float) -> float:
    """The template ratio closest to ``h_div_w`` (as Infinity picks it for an image)."""
    if not h_div_w > 0:
        raise ValueError(f"aspect ratio h/w must be positive, got {h_div_w}")
    return min(TEMPLATES, key=lambda r: abs(r - h_div_w))


def get_schedule(size: str = "1M", h_div_w: float = 1.0, *, num_scales: int | None = None) -> ScheduleInfo:
    """The scale schedule for a named size and the template nearest to ``h_div_w``.

    ``num_scales`` overrides the size's scale count (tiny models use short ladders).
    """
    if num_scales is None:
        if size not in SIZE_SCALES:
            raise ValueError(f"unknown size {size!r}; known sizes: {', '.join(SIZE_SCALES)}")
        num_scales = SIZE_SCALES[size]
    ratio = nearest_template(h_div_w)
    ladder = TEMPLATES[ratio]
    if not 1 <= num_scales <= len(ladder):
        raise ValueError(f"num_scales must be in 1..{len(ladder)}, got {num_scales}")
    return ScheduleInfo(ratio, size, tuple((1, h, w) for h, w in ladder[:num_scales]))


def model_scales(size: str, h_div_w: float = 1.0, *, num_scales: int | None = None) -> Schedule:
    """The scales a model samples and tunes at: ``size``'s ladder, or for a model with its own
    ``num_scales`` (tiny specs) the first ``num_scales`` of the '1M' ladder whatever the size."""
    return get_schedule(size if num_scales is None else "1M", h_div_w, num_scales=num_scales).scales


def full_ladder_last(h_div_w: float) -> tuple[int, int]:
    """(h, w) of the last '1M' scale of a template: the RoPE coordinate frame of every size."""
    return TEMPLATES[nearest_template(h_div_w)][-1]


def parse_aspect(text: str) -> float:
    """Parse ``'16:9'`` (width:height, as photographers write it), ``'1.5'`` (h/w) into h/w."""
    text = text.strip()
    try:
        if ":" in text:
            w_s, h_s = text.split(":", 1)
            w, h = float(w_s), float(h_s)
            if w <= 0 or h <= 0:
                raise ValueError
            return h / w
        value = float(text)
        if value <= 0:
            raise ValueError
        return value
    except ValueError:
        raise ValueError(f"cannot read aspect {text!r}; write W:H such as 16:9, or h/w such as 1.5") from None
