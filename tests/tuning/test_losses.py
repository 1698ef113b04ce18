import math

import pytest
import torch

from arbooth_cli.models.schedules import get_schedule
from arbooth_cli.tuning.losses import (
    bitwise_ce,
    prior_distill,
    scale_weighted_ce,
    scale_weights,
    token_weights,
)

SCALES = get_schedule("1M").scales  # 13 scales, 10521 tokens


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_official_step_schedule_and_its_token_share():
    w = scale_weights(SCALES)
    assert w.tolist() == [1.0] * 8 + [0.5] * 5
    w_L = token_weights(SCALES, w)
    assert w_L.shape == (10521,)
    coarse = sum(h * ww for _, h, ww in SCALES[:8])
    assert coarse == 921
    share = (w_L[:coarse].sum() / w_L.sum()).item()
    assert share == pytest.approx(921 / (921 + 0.5 * 9600), abs=1e-6)  # 16.1%, up from 8.8%


def test_other_schedules():
    assert scale_weights(SCALES, "uniform").tolist() == [1.0] * 13
    lin = scale_weights(SCALES, "linear", end=0.1)
    assert lin[0] == 1.0 and lin[-1] == pytest.approx(0.1) and (lin.diff() < 0).all()
    assert scale_weights(SCALES, "exp", rate=0.5)[3].item() == 0.125
    inf = scale_weights(SCALES, "infinity")
    assert inf[0] == 64.0 and inf[-1] == 1.0
    assert scale_weights(SCALES[:3], [3, 2, 1]).tolist() == [3.0, 2.0, 1.0]
    with pytest.raises(ValueError, match="2 scale weights for 3"):
        scale_weights(SCALES[:3], [1, 2])


def test_uniform_weights_give_the_plain_mean_of_bitwise_ce():
    B, L, d = 2, 21, 4
    logits, bits = _rand(B, L, 2 * d), torch.randint(0, 2, (B, L, d), generator=torch.Generator().manual_seed(1))
    plain = bitwise_ce(logits, bits).mean()
    assert scale_weighted_ce(logits, bits, torch.ones(L)).item() == pytest.approx(plain.item(), rel=1e-6)
    # bitwise CE is the mean of d independent two-way CEs
    one = torch.nn.functional.cross_entropy(logits.view(B, L, d, 2)[0, 0], bits[0, 0])
    assert bitwise_ce(logits, bits)[0, 0].item() == pytest.approx(one.item(), rel=1e-6)


def test_weights_move_the_loss_towards_the_weighted_tokens():
    L, d = 5, 2
    logits = torch.zeros(1, L, 2 * d)
    logits.view(1, L, d, 2)[0, 0, :, 1] = 5.0  # token 0 confidently predicts bit 1 ...
    bits = torch.ones(1, L, d, dtype=torch.long)  # ... which is right; others are at chance
    w_first = torch.tensor([1.0, 0, 0, 0, 0])
    w_rest = torch.tensor([0.0, 1, 1, 1, 1])
    assert scale_weighted_ce(logits, bits, w_first) < scale_weighted_ce(logits, bits, w_rest) / 4
    assert scale_weighted_ce(logits, bits, w_rest).item() == pytest.approx(4 / 5 * math.log(2), rel=1e-5)


def test_distillation_is_zero_for_identical_models_and_positive_otherwise():
    t = _rand(2, 7, 8)
    for per_bit in (True, False):
        assert prior_distill(t, t.clone(), per_bit=per_bit).item() == pytest.approx(0.0, abs=1e-7)
        assert prior_distill(_rand(2, 7, 8, seed=3), t, per_bit=per_bit) > 0
    hard = prior_distill(t, t.clone(), kind="hard")
    assert hard.item() == pytest.approx(bitwise_ce(t, t.view(2, 7, 4, 2).argmax(-1)).mean().item())


def test_per_bit_and_whole_token_kl_differ_and_temperature_softens():
    s, t = _rand(1, 3, 8, seed=4), _rand(1, 3, 8, seed=5)
    assert prior_distill(s, t, per_bit=True).item() != pytest.approx(prior_distill(s, t, per_bit=False).item())
    assert prior_distill(s, t, temperature=4.0) < prior_distill(s, t, temperature=1.0)


def test_gradients_reach_the_student_only():
    s = _rand(1, 3, 8, seed=6).requires_grad_()
    t = _rand(1, 3, 8, seed=7).requires_grad_()
    prior_distill(s, t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None
