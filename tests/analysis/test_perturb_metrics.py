"""The noise analysis's pure parts: scale lists, perturbations and image distances."""

from __future__ import annotations

import math

import pytest
import torch

from arbooth_cli.analysis.metrics import PSNR_CAP_DB, cosine_distance, l1_distance, mean_and_spread, psnr, ssim
from arbooth_cli.analysis.perturb import parse_scales, perturb_bits, perturbation_seed


def test_parse_scales_counts_from_one():
    assert parse_scales("all", 4) == (1, 2, 3, 4)
    assert parse_scales("1,2,5-8", 13) == (1, 2, 5, 6, 7, 8)
    assert parse_scales(" 3 , 1-2 ", 4) == (1, 2, 3)


@pytest.mark.parametrize("text, match", [("0", "outside"), ("5", "outside"), ("2-9", "outside"),
                                          ("x", "cannot read"), ("1,,2", "cannot read")])
def test_parse_scales_refuses_what_the_schedule_lacks(text, match):
    with pytest.raises(ValueError, match=match):
        parse_scales(text, 4)


def _bits(seed=0, l=64, d=16):
    return torch.randint(0, 2, (l, d), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("mode", ["random", "flip", "swap"])
def test_strength_zero_changes_nothing(mode):
    bits, donor = _bits(0), _bits(1)
    out = perturb_bits(bits, mode, 0.0, torch.Generator().manual_seed(3), donor)
    assert torch.equal(out, bits)


def test_flip_one_flips_every_bit_and_swap_one_is_the_donor():
    bits, donor = _bits(0), _bits(1)
    assert torch.equal(perturb_bits(bits, "flip", 1.0, torch.Generator().manual_seed(0)), 1 - bits)
    assert torch.equal(perturb_bits(bits, "swap", 1.0, torch.Generator().manual_seed(0), donor), donor)


def test_random_one_replaces_bits_with_fair_coins():
    bits = torch.zeros((256, 32), dtype=torch.int64)
    out = perturb_bits(bits, "random", 1.0, torch.Generator().manual_seed(0))
    assert out.dtype == bits.dtype and set(out.unique().tolist()) == {0, 1}
    assert 0.45 < out.float().mean().item() < 0.55


@pytest.mark.parametrize("mode", ["random", "flip", "swap"])
def test_changes_are_nested_in_the_strength(mode):
    """One generator state: what a weaker perturbation changes, a stronger one changes as well."""
    bits, donor = _bits(0), _bits(1)
    changed = []
    for p in (0.1, 0.3, 0.6, 1.0):
        out = perturb_bits(bits, mode, p, torch.Generator().manual_seed(7), donor)
        changed.append(out != bits)
    for weak, strong in zip(changed, changed[1:]):
        assert not (weak & ~strong).any()
    counts = [int(c.sum()) for c in changed]
    assert counts == sorted(counts) and counts[0] < counts[-1]


def test_swap_moves_whole_tokens():
    bits, donor = _bits(0), _bits(1)
    out = perturb_bits(bits, "swap", 0.5, torch.Generator().manual_seed(2), donor)
    from_donor = (out == donor).all(1) & (out != bits).any(1)
    kept = (out == bits).all(1)
    assert bool((from_donor | kept).all()) and 10 < int(from_donor.sum()) < 54


def test_perturbation_is_reproducible_and_seeded_per_scale():
    bits = _bits(0)
    a = perturb_bits(bits, "flip", 0.5, torch.Generator().manual_seed(perturbation_seed(3, 2)))
    b = perturb_bits(bits, "flip", 0.5, torch.Generator().manual_seed(perturbation_seed(3, 2)))
    c = perturb_bits(bits, "flip", 0.5, torch.Generator().manual_seed(perturbation_seed(3, 4)))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_bad_perturbations_are_refused():
    bits = _bits(0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        perturb_bits(bits, "flip", 1.5, torch.Generator())
    with pytest.raises(ValueError, match="another run"):
        perturb_bits(bits, "swap", 0.5, torch.Generator())
    with pytest.raises(ValueError, match="unknown"):
        perturb_bits(bits, "blur", 0.5, torch.Generator())  # type: ignore[arg-type]


def _images(seed, B=3, H=24, W=20):
    return torch.randint(0, 256, (B, 3, H, W), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_identical_images_are_at_distance_zero():
    a = _images(0)
    assert torch.equal(l1_distance(a, a), torch.zeros(3, dtype=torch.float64))
    assert torch.equal(psnr(a, a), torch.full((3,), PSNR_CAP_DB, dtype=torch.float64))
    assert torch.allclose(ssim(a, a), torch.ones(3, dtype=torch.float64))


def test_pixel_distances_on_known_images():
    black = torch.zeros((1, 3, 16, 16), dtype=torch.uint8)
    white = torch.full_like(black, 255)
    grey = torch.full_like(black, 51)  # 0.2
    assert l1_distance(black, white).item() == pytest.approx(1.0)
    assert l1_distance(black, grey).item() == pytest.approx(0.2)
    assert psnr(black, white).item() == pytest.approx(0.0)
    assert psnr(black, grey).item() == pytest.approx(-10 * math.log10(0.04))


def test_ssim_falls_with_noise_and_is_symmetric():
    a = _images(0, B=1, H=32, W=32)
    g = torch.Generator().manual_seed(1)
    values = []
    for sigma in (5, 20, 60):
        noisy = (a.float() + sigma * torch.randn(a.shape, generator=g)).clamp(0, 255).to(torch.uint8)
        values.append(ssim(a, noisy).item())
        assert ssim(a, noisy).item() == pytest.approx(ssim(noisy, a).item())
    assert values[0] > values[1] > values[2]
    assert ssim(_images(0, B=1, H=8, W=8), _images(1, B=1, H=8, W=8)).shape == (1,)  # window shrinks to fit


def test_cosine_distance_and_spread():
    f = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert cosine_distance(f, f).tolist() == pytest.approx([0.0, 0.0])
    assert cosine_distance(f, -f).tolist() == pytest.approx([2.0, 2.0])
    assert cosine_distance(f, f.flip(0)).tolist() == pytest.approx([1.0, 1.0])
    assert mean_and_spread([1.0]) == (1.0, 0.0)
    m, s = mean_and_spread([1.0, 2.0, 3.0])
    assert m == pytest.approx(2.0) and s == pytest.approx(1.0)
    with pytest.raises(ValueError):
        l1_distance(_images(0), _images(0, B=2))
