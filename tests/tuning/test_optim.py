"""TuningAdamW and stochastic rounding: exact AdamW in fp32, unbiased rounding, compact states."""

from __future__ import annotations

import pytest
import torch

from arbooth_cli.tuning.optim import FP8, SMALL_TENSOR, TuningAdamW, rounding_noise, stochastic_round

HP = {"lr": 1e-2, "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.05}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _key(k: int) -> torch.Tensor:
    return torch.tensor(k, dtype=torch.int64)


def _neighbours(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The representable values of ``dtype`` next to ``x`` towards and away from zero (normal range)."""
    drop = {torch.bfloat16: 16, FP8: 20}[dtype]
    low = x.view(torch.int32) & ~((1 << drop) - 1)
    return low.view(torch.float32), (low + (1 << drop)).view(torch.float32)


def test_fp32_state_matches_torch_adamw():
    """On fp32 weights with fp32 moments the update is torch's AdamW."""
    g = _gen(0)
    w0 = torch.randn(64, 80, generator=g)
    b0 = torch.randn(80, generator=g)
    ours = [w0.clone(), b0.clone()]
    ref = [torch.nn.Parameter(w0.clone()), torch.nn.Parameter(b0.clone())]
    opt = TuningAdamW(ours, state="fp32", **HP)
    torch_opt = torch.optim.AdamW(ref, foreach=False, **HP)
    for _ in range(20):
        grads = [torch.randn(t.shape, generator=g) for t in ours]
        for p, q, gr in zip(ours, ref, grads):
            p.grad, q.grad = gr.clone(), gr.clone()
        opt.step()
        torch_opt.step()
    assert opt.steps == 20
    for p, q in zip(ours, ref):
        assert not torch.equal(p, w0 if p.ndim == 2 else b0)
        torch.testing.assert_close(p, q.detach(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, FP8])
def test_stochastic_round_gives_a_neighbour_and_is_unbiased(dtype):
    """Every result is one of the two neighbours of x, and the mean of many draws is x."""
    g = _gen(1)
    sign = torch.where(torch.rand(20_000, generator=g) < 0.5, -1.0, 1.0)
    x = sign * torch.exp(torch.empty(20_000).uniform_(-2.0, 5.5, generator=g))  # |x| in [0.14, 245]
    r = stochastic_round(x, dtype, _key(2)).float()
    low, high = _neighbours(x, dtype)
    assert ((r == low) | (r == high)).all()
    assert (r != x.to(dtype).float()).any()  # not plain round-to-nearest

    spacing = {torch.bfloat16: 2.0**-7, FP8: 2.0**-3}[dtype]  # between 1 and 2
    v = 1.0 + 0.3 * spacing
    xs = torch.full((200_000,), v)
    rs = stochastic_round(xs, dtype, _key(3)).float()
    assert set(rs.unique().tolist()) == {1.0, 1.0 + spacing}
    assert abs((rs == 1.0 + spacing).float().mean().item() - 0.3) < 0.01
    assert abs(rs.mean().item() - v) < 0.02 * spacing
    neg = stochastic_round(-xs, dtype, _key(4)).float()
    assert abs(neg.mean().item() + v) < 0.02 * spacing


@pytest.mark.parametrize("dtype", [torch.bfloat16, FP8])
def test_stochastic_round_without_key_is_round_to_nearest_and_keyed_draws_repeat(dtype):
    """key=None is ``x.to(dtype)``; the same key gives the same bits, a key that differs only in
    its high half (another step) other bits."""
    x = torch.randn(5000, generator=_gen(5)) * 10
    assert torch.equal(stochastic_round(x, dtype, None).view(torch.uint8), x.to(dtype).view(torch.uint8))
    a = stochastic_round(x, dtype, _key(6))
    b = stochastic_round(x, dtype, _key(6))
    c = stochastic_round(x, dtype, _key(6 + (1 << 32)))
    assert torch.equal(a.view(torch.uint8), b.view(torch.uint8))
    assert not torch.equal(a.view(torch.uint8), c.view(torch.uint8))


def test_stochastic_rounding_keeps_updates_below_bf16_resolution():
    """lr 1e-5 on bf16 weights of 1.0: round-to-nearest drops every update, stochastic rounding
    moves the mean by lr per step (the normalised AdamW step of a constant gradient is 1)."""
    n, steps, lr = 1 << 16, 20, 1e-5

    def run(seed):
        w = torch.ones(n, dtype=torch.bfloat16)
        opt = TuningAdamW([w], lr=lr, state="fp32", seed=seed)
        for _ in range(steps):
            w.grad = torch.ones_like(w)
            opt.step()
        return w

    nearest = run(None)
    assert torch.equal(nearest, torch.ones(n, dtype=torch.bfloat16))
    rounded = run(8)
    moved = 1.0 - rounded.double().mean().item()
    assert moved == pytest.approx(steps * lr, rel=0.1)
    # each step rounds a weight down one bf16 step (2^-8 below 1) with probability lr / 2^-8,
    # independently: the share of weights that ever moved is 1 - (1 - p)^steps
    p = lr / 2.0**-8
    assert (rounded < 1).double().mean().item() == pytest.approx(1 - (1 - p) ** steps, abs=0.005)
    assert rounded.float().min().item() >= 1.0 - 4 * 2.0**-8


@pytest.mark.parametrize("state", ["bf16", "fp8"])
def test_low_precision_states_track_fp32_and_are_smaller(state):
    """After 50 steps the weights moved about as with fp32 moments, with less state memory."""
    g = _gen(9)
    w0 = torch.randn(128, 64, generator=g)  # 8192 >= SMALL_TENSOR values
    drift = torch.randn(128, 64, generator=g)
    grads = [0.5 * drift + torch.randn(128, 64, generator=g) for _ in range(50)]

    def run(kind):
        w = w0.clone()
        opt = TuningAdamW([w], lr=1e-3, weight_decay=0.01, state=kind, seed=10)
        for gr in grads:
            w.grad = gr.clone()
            opt.step()
        return w - w0, opt.state_bytes()

    ref, ref_bytes = run("fp32")
    got, got_bytes = run(state)
    assert ref_bytes == 8 * w0.numel()
    assert ((got - ref).norm() / ref.norm()).item() < 0.25
    assert got_bytes < ref_bytes
    if state == "fp8":
        assert got_bytes * 3 <= ref_bytes
    else:
        assert got_bytes * 2 == ref_bytes


def test_small_tensors_keep_fp32_moments():
    """A tensor below SMALL_TENSOR values costs fp32 state whatever the kind."""
    small = torch.zeros(SMALL_TENSOR - 1)
    for kind in ("fp32", "bf16", "fp8"):
        assert TuningAdamW([small], lr=1e-3, state=kind).state_bytes() == 8 * small.numel()


@pytest.mark.parametrize("state", ["fp32", "fp8"])
def test_state_round_trip_gives_an_identical_next_step(state):
    """A fresh optimizer with the same seed, loaded with another's state and step count, takes
    the same step (the rounding draws need no other state)."""
    g = _gen(11)
    w = torch.randn(96, 64, generator=g).to(torch.bfloat16)
    b = torch.randn(64, generator=g)
    a = TuningAdamW([w, b], lr=1e-3, weight_decay=0.01, state=state, seed=12)
    for _ in range(3):
        w.grad = torch.randn(w.shape, generator=g).to(torch.bfloat16)
        b.grad = torch.randn(b.shape, generator=g)
        a.step()
    saved = {k: v.clone() for k, v in a.state_tensors().items()}
    w2, b2 = w.clone(), b.clone()
    fresh = TuningAdamW([w2, b2], lr=1e-3, weight_decay=0.01, state=state, seed=12)
    fresh.load_state_tensors(saved, a.steps)
    assert fresh.steps == 3
    gw, gb = torch.randn(w.shape, generator=g).to(torch.bfloat16), torch.randn(b.shape, generator=g)
    for opt, (p, q) in ((a, (w, b)), (fresh, (w2, b2))):
        p.grad, q.grad = gw.clone(), gb.clone()
        opt.step()
    assert torch.equal(w.view(torch.int16), w2.view(torch.int16)) and torch.equal(b, b2)
    for k, v in a.state_tensors().items():
        assert torch.equal(v.view(torch.uint8), fresh.state_tensors()[k].view(torch.uint8)), k


def test_mismatching_state_is_refused():
    """Other names (another state kind or other tensors) or other shapes raise ValueError."""
    w = torch.zeros(64, 128)
    fp32 = TuningAdamW([w], lr=1e-3, state="fp32")
    fp8 = TuningAdamW([w.clone()], lr=1e-3, state="fp8")
    with pytest.raises(ValueError, match="does not match"):
        fp32.load_state_tensors(fp8.state_tensors(), 1)
    with pytest.raises(ValueError, match="does not match"):
        TuningAdamW([w, torch.zeros(3)], lr=1e-3).load_state_tensors(fp32.state_tensors(), 1)
    other = TuningAdamW([torch.zeros(128, 64)], lr=1e-3, state="fp32")
    with pytest.raises(ValueError, match="expected"):
        fp32.load_state_tensors(other.state_tensors(), 1)
    with pytest.raises(ValueError, match="unknown optimizer state"):
        TuningAdamW([w], lr=1e-3, state="int4")  # type: ignore[arg-type]


def test_step_in_backward_equals_step_after_backward():
    """Updating each tensor inside the backward pass gives the same weights as one step after it
    (fp32 weights and moments: no random rounding, so the order of updates cannot matter)."""
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8))
    b = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8))
    b.load_state_dict(a.state_dict())
    opt_a = TuningAdamW(list(a.parameters()), lr=1e-2, weight_decay=0.01)
    opt_b = TuningAdamW(list(b.parameters()), lr=1e-2, weight_decay=0.01)
    remove = opt_b.step_in_backward()
    for _ in range(5):
        x = torch.randn(4, 16)
        a(x).square().mean().backward()
        opt_a.step()
        opt_a.zero_grad()
        opt_b.begin_step()
        b(x).square().mean().backward()
        assert all(p.grad is None for p in b.parameters())  # dropped as soon as used
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    remove()
    b(torch.randn(4, 16)).sum().backward()
    assert all(p.grad is not None for p in b.parameters())  # hooks gone: gradients stay


@pytest.mark.parametrize("state", ["bf16", "fp8"])
def test_rounded_updates_do_not_depend_on_the_order_of_tensors(state):
    """With stochastic rounding on (bf16 weights, low-precision moments), updating inside the
    backward pass (tensors in the order their gradients complete) gives the same bits as one
    step after it: each draw is keyed by seed, step and tensor, not taken from a shared stream."""
    torch.manual_seed(1)
    a = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.GELU(), torch.nn.Linear(96, 64)).to(torch.bfloat16)
    b = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.GELU(), torch.nn.Linear(96, 64)).to(torch.bfloat16)
    b.load_state_dict(a.state_dict())
    w0 = a[0].weight.detach().clone()
    opt_a = TuningAdamW(list(a.parameters()), lr=1e-3, weight_decay=0.01, state=state, seed=3)
    opt_b = TuningAdamW(list(b.parameters()), lr=1e-3, weight_decay=0.01, state=state, seed=3)
    opt_b.step_in_backward()
    for _ in range(4):
        x = torch.randn(8, 64).to(torch.bfloat16)
        a(x).float().square().mean().backward()
        opt_a.step()
        opt_a.zero_grad()
        opt_b.begin_step()
        b(x).float().square().mean().backward()
    assert not torch.equal(a[0].weight, w0)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa.view(torch.int16), pb.view(torch.int16))
    for k, v in opt_a.state_tensors().items():
        assert torch.equal(v.view(torch.uint8), opt_b.state_tensors()[k].view(torch.uint8)), k


def test_rounding_noise_is_uniform_and_keys_are_independent():
    """The counter-based draws cover [0, 2**bits) evenly, and draws of nearby keys (the next
    tensor, the next step) are uncorrelated."""
    n, bits = 1 << 16, 16
    draws = [rounding_noise(n, _key(k), bits, torch.device("cpu")).double() / (1 << bits)
             for k in (5, 6, 5 + (1 << 32))]
    for u in draws:
        assert u.min() >= 0 and u.max() < 1
        counts = torch.histc(u, bins=16, min=0, max=1)
        assert (counts - n / 16).abs().max() < 5 * (n / 16) ** 0.5  # 5 sigma of a binomial count
        assert abs(u.mean().item() - 0.5) < 0.01
    for u, v in ((draws[0], draws[1]), (draws[0], draws[2])):
        corr = torch.corrcoef(torch.stack([u, v]))[0, 1].item()
        assert abs(corr) < 0.02
    assert torch.equal(rounding_noise(n, _key(5), bits, torch.device("cpu")), (draws[0] * (1 << bits)).int())


def test_an_update_that_does_not_compile_falls_back_to_the_eager_one():
    """A compile error (raised before anything is written) warns once and takes the same step eagerly."""
    w = torch.randn(96, 64)
    w0, ref = w.clone(), w.clone()
    fused = TuningAdamW([w], lr=1e-3, state="bf16", seed=2)
    eager = TuningAdamW([ref], lr=1e-3, state="bf16", seed=2)

    def broken(*args):
        raise torch._dynamo.exc.Unsupported("no compiler here")

    fused._plain = broken
    w.grad = ref.grad = torch.randn(96, 64)
    with pytest.warns(RuntimeWarning, match="did not compile"):
        fused.step()
    eager.step()
    assert torch.equal(w, ref) and not torch.equal(w, w0)


@pytest.mark.slow
@pytest.mark.parametrize("state", ["bf16", "fp8"])
def test_the_compiled_update_equals_the_eager_one_up_to_float_rounding(state):
    """The fused update (what a GPU runs) compiles without graph breaks and takes the eager step:
    bf16 weights equal bit for bit here, float32 ones differ in the last bit at most. Also from
    the autograd engine's hooks, as inside the tuning loop's backward pass."""
    from arbooth_cli.tuning import optim

    torch.manual_seed(0)
    ps = [torch.randn(256, 128).to(torch.bfloat16), torch.randn(300, 40).to(torch.bfloat16), torch.randn(8192)]
    qs = [p.clone().requires_grad_() for p in ps]
    ps = [p.requires_grad_() for p in ps]
    fused = TuningAdamW(ps, lr=1e-3, weight_decay=0.01, state=state, seed=1, compile=True)
    fused._plain = torch.compile(optim._update_plain, dynamic=True, fullgraph=True)
    fused._fp8 = torch.compile(optim._update_fp8, dynamic=True, fullgraph=True)
    eager = TuningAdamW(qs, lr=1e-3, weight_decay=0.01, state=state, seed=1, compile=False)
    for opt in (fused, eager):
        opt.step_in_backward()
    for _ in range(2):
        g = [torch.randn(p.shape) for p in ps]
        for opt, ws in ((fused, ps), (eager, qs)):
            opt.begin_step()
            sum((w.float() * gi).sum() for w, gi in zip(ws, g)).backward()
    for p, q in zip(ps, qs):
        if p.dtype == torch.bfloat16:
            assert torch.equal(p.view(torch.int16), q.view(torch.int16))
        else:
            torch.testing.assert_close(p, q, rtol=2**-23, atol=1e-7)
