"""Perturbations of one scale's token map, as pure functions (the noise analysis of `arbooth inspect`).

Shapes: ``bits_ld`` one image's bits at one scale, l tokens of d bits in {0, 1}; ``donor_ld`` the
same scale of another run. Every mode draws its randomness from a generator of its own, seeded
by (seed, scale), so a perturbation never shifts the sampler's own random stream, and the sets of
changed bits are nested: what strength 0.2 changes, strength 0.5 changes too.

No torch import at module level: the CLI parses scale lists before anything heavy loads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from ..config import NOISE_MODES, parse_int_ranges

if TYPE_CHECKING:
    import torch
    from torch import Tensor

Mode = Literal["random", "flip", "swap"]
MODES = NOISE_MODES
MODE_HELP = {
    "random": "each bit replaced by a fresh random bit with probability P",
    "flip": "each bit flipped with probability P (the tokenizer's bit-flip noise)",
    "swap": "each token taken from another seed's run of the same scale with probability P",
}


def parse_scales(text: str, num_scales: int) -> tuple[int, ...]:
    """``'all'`` -> (1, ..., K); ``'1,2,5-8'`` -> (1, 2, 5, 6, 7, 8). Scales count from 1 (the 1x1 map)."""
    if text.strip() == "all":
        return tuple(range(1, num_scales + 1))

    try:
        out = parse_int_ranges(text)
    except ValueError:
        raise ValueError(f"cannot read scales {text!r}; write e.g. 1,2,5-8 or all") from None
    bad = sorted(k for k in out if not 1 <= k <= num_scales)
    if bad or not out:
        raise ValueError(f"scales {bad or text} are outside this model's schedule 1..{num_scales}")
    return tuple(sorted(out))


def perturbation_seed(seed: int, scale: int) -> int:
    """The seed of the perturbation generator of image ``seed`` at ``scale`` (1-based)."""
    return (seed * 1_000_003 + scale * 7919 + 0x5EED) % (2**63)


def perturb_bits(bits_ld: Tensor, mode: Mode, strength: float, generator: torch.Generator,
                 donor_ld: Tensor | None = None) -> Tensor:
    """``bits_ld`` perturbed with ``strength`` P in [0, 1]; P = 0 returns the bits unchanged.

    The draws are made on the generator's device in a fixed order (replacement bits first, then
    the per-bit or per-token coin), whatever P is, so one generator state gives nested changes.
    """
    import torch

    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    l, d = bits_ld.shape
    dev = generator.device
    if mode == "random":
        fresh_ld = torch.randint(0, 2, (l, d), generator=generator, device=dev).to(bits_ld)
        hit_ld = torch.rand((l, d), generator=generator, device=dev) < strength
        return torch.where(hit_ld.to(bits_ld.device), fresh_ld.to(bits_ld.device), bits_ld)
    if mode == "flip":
        hit_ld = torch.rand((l, d), generator=generator, device=dev) < strength
        return torch.where(hit_ld.to(bits_ld.device), 1 - bits_ld, bits_ld)
    if mode == "swap":
        if donor_ld is None or donor_ld.shape != bits_ld.shape:
            raise ValueError("swap needs the same scale of another run, of the same shape")
        hit_l1 = torch.rand((l, 1), generator=generator, device=dev) < strength
        return torch.where(hit_l1.to(bits_ld.device), donor_ld.to(bits_ld), bits_ld)
    raise ValueError(f"unknown perturbation mode {mode!r}; choose from {', '.join(MODES)}")
