import pytest
import torch

from arbooth_cli.sampling.filters import bit_one_probability, cfg_mix, top_k_, top_p_
from arbooth_cli.sampling.sample import SamplingParams
from arbooth_cli.errors import InvalidInputError


def test_cfg_mix_is_plain_temperature_at_cfg_1_and_extrapolates_beyond():
    g = torch.Generator().manual_seed(0)
    c, u = torch.randn(4, 2, generator=g), torch.randn(4, 2, generator=g)
    assert torch.allclose(cfg_mix(c, u, 1.0, 0.5), c / 0.5)
    assert torch.allclose(cfg_mix(c, u, 3.0, 1.0), c + 2 * (c - u))
    assert torch.allclose(cfg_mix(c, c, 7.0, 2.0), c / 2.0)


def test_top_p_drops_a_bit_value_at_or_below_one_minus_p():
    # P(bit=1) = 0.02, 0.5, 0.98, 0.03
    p1 = torch.tensor([0.02, 0.5, 0.98, 0.03])
    logits = torch.stack([torch.log1p(-p1), torch.log(p1)], dim=-1)
    probs = bit_one_probability(logits, top_p=0.97)
    assert probs.tolist() == pytest.approx([0.0, 0.5, 1.0, 0.0])
    assert bit_one_probability(logits, top_p=1.0).tolist() == pytest.approx(p1.tolist())


def test_top_p_keeps_the_most_likely_class_and_works_over_many_classes():
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]]))
    kept = top_p_(logits.clone(), 0.5).isfinite()
    assert kept.tolist() == [[False, False, True, True]]
    assert top_p_(logits.clone(), 1e-6).isfinite().tolist() == [[False, False, False, True]]


def test_top_k():
    logits = torch.tensor([[1.0, 3.0, 2.0]])
    assert top_k_(logits.clone(), 2).isfinite().tolist() == [[False, True, True]]
    assert top_k_(logits.clone(), 0).isfinite().all()
    two = torch.tensor([[0.2, -0.1]])
    assert bit_one_probability(two, top_k=1).tolist() == [0.0]  # greedy: bit 0 is likelier
    assert bit_one_probability(two, top_k=2).item() == pytest.approx(torch.softmax(two, -1)[0, 1].item())


def test_sampling_params_schedules_and_problems():
    cfgs, taus = SamplingParams(cfg=(4.0, 3.0, 2.0), tau=0.5).per_scale(3)
    assert cfgs == (4.0, 3.0, 2.0) and taus == (0.5, 0.5, 0.5)
    with pytest.raises(InvalidInputError, match="3 scales"):
        SamplingParams(cfg=(1.0, 2.0)).per_scale(3)
    assert set(SamplingParams(tau=0.0, top_p=1.5, top_k=-1).problems()) == {
        "--tau must be > 0", "--top-p must be in (0, 1]", "--top-k must be >= 0 (0 keeps all)"}
