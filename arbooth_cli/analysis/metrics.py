"""Image distances of the noise analysis, as pure functions.

``img_B3HW`` are uint8 RGB images (or floats in [0, 255]); every function compares image i of
``a`` with image i of ``b`` and returns one value per pair, ``(B,)`` float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

#: PSNR of identical images (the true value is infinite, which JSON cannot hold)
PSNR_CAP_DB = 100.0


def _unit(img_B3HW: Tensor) -> Tensor:
    return img_B3HW.double() / 255.0


def _check(a: Tensor, b: Tensor) -> None:
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W) of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def l1_distance(a_B3HW: Tensor, b_B3HW: Tensor) -> Tensor:
    """Mean absolute pixel difference, on a 0..1 scale."""
    _check(a_B3HW, b_B3HW)
    return (_unit(a_B3HW) - _unit(b_B3HW)).abs().flatten(1).mean(1)


def psnr(a_B3HW: Tensor, b_B3HW: Tensor, cap: float = PSNR_CAP_DB) -> Tensor:
    """Peak signal-to-noise ratio in dB (higher: more alike), ``cap`` for identical images."""
    _check(a_B3HW, b_B3HW)
    mse = (_unit(a_B3HW) - _unit(b_B3HW)).pow(2).flatten(1).mean(1)
    out = -10.0 * torch.log10(mse.clamp_min(10 ** (-cap / 10)))
    return out.clamp(max=cap)


def _gauss_window(size: int, sigma: float, channels: int) -> Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(a_B3HW: Tensor, b_B3HW: Tensor, *, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Structural similarity (Wang et al. 2004: Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03),
    per channel over the valid window positions, averaged; 1 for identical images."""
    _check(a_B3HW, b_B3HW)
    a, b = _unit(a_B3HW), _unit(b_B3HW)
    C = a.shape[1]
    size = min(window, a.shape[-2], a.shape[-1])
    size -= 1 - size % 2  # odd
    w = _gauss_window(size, sigma, C).to(a.device)
    mu_a, mu_b = F.conv2d(a, w, groups=C), F.conv2d(b, w, groups=C)
    var_a = F.conv2d(a * a, w, groups=C) - mu_a**2
    var_b = F.conv2d(b * b, w, groups=C) - mu_b**2
    cov = F.conv2d(a * b, w, groups=C) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)


def cosine_distance(fa_BD: Tensor, fb_BD: Tensor) -> Tensor:
    """1 - cosine similarity of feature vectors: 0 for the same direction, up to 2."""
    if fa_BD.shape != fb_BD.shape or fa_BD.ndim != 2:
        raise ValueError(f"features must be (B, D) of one shape, got {tuple(fa_BD.shape)} and {tuple(fb_BD.shape)}")
    return (1.0 - F.cosine_similarity(fa_BD.double(), fb_BD.double(), dim=1, eps=1e-12)).clamp_min(0.0)


def mean_and_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    m = sum(values) / n
    if n == 1:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
