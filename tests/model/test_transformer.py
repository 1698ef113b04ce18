"""The Infinity transformer: checkpoint layout, the two forward paths, precisions, RoPE."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from arbooth_cli.errors import InvalidInputError
from arbooth_cli.models.build import build_transformer
from arbooth_cli.models.schedules import get_schedule
from arbooth_cli.specs.infinity import INFINITY_2B, INFINITY_8B
from arbooth_cli.specs.tiny import TINY_INFINITY
from arbooth_cli.models.text_encoder import TextCond
from arbooth_cli.models.transformer import InfinityTransformer, rope_angles, rope_frame

DATA = Path(__file__).parent / "data"
CFG = TINY_INFINITY.transformer
SQUARE = get_schedule(num_scales=4, h_div_w=1.0).scales  # 1, 2x2, 4x4, 6x6
WIDE = get_schedule(num_scales=5, h_div_w=0.75).scales  # landscape: non-square RoPE frame


def n_tokens(scales) -> int:
    return sum(t * h * w for t, h, w in scales)


@pytest.fixture(scope="module")
def model() -> InfinityTransformer:
    return build_transformer(CFG, generator=torch.Generator().manual_seed(0))


def make_text(gen: torch.Generator, lens=(3, 9), width: int = CFG.text_channels) -> TextCond:
    feats = torch.randn(sum(lens), width, generator=gen)
    return TextCond.from_packed(feats, lens)


def tf_input(gen: torch.Generator, scales, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, n_tokens(scales) - 1, CFG.bits, generator=gen)


def run_cached(model: InfinityTransformer, text, x, scales, *, break_offsets: bool = False) -> torch.Tensor:
    cache = model.new_cache(text, scales)
    outs, start = [], 0
    for si, (t, h, w) in enumerate(scales):
        l = t * h * w
        inp = None if si == 0 else x[:, start - 1 : start - 1 + l]
        if break_offsets:
            cache.offset = 0  # what the official non-fused path does
        outs.append(model.forward_scale(cache, inp))
        start += l
    assert cache.done and cache.cached_tokens == n_tokens(scales)
    return torch.cat(outs, dim=1)


# ---- checkpoint layout -------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [INFINITY_2B, INFINITY_8B], ids=lambda s: s.name)
def test_state_dict_matches_official_table(spec) -> None:
    table = json.loads((DATA / f"{spec.name}-state-dict.json").read_text())
    with torch.device("meta"):
        m = InfinityTransformer(spec.transformer)
    got = {k: list(v.shape) for k, v in m.state_dict().items()}
    assert got == table["keys"]
    assert sorted(n for n, _ in m.named_buffers()) == sorted(table["buffers"])
    assert sum(p.numel() for p in m.parameters()) == table["n_params"]


def test_block_order_and_names() -> None:
    with torch.device("meta"):
        m = InfinityTransformer(INFINITY_2B.transformer)
    assert len(m.blocks) == 32
    assert m.blocks[5] is m.block_chunks[1].module[1]  # global block = 4c + j


# ---- the two forward paths agree ----------------------------------------------------------------


@pytest.mark.parametrize("scales", [SQUARE, WIDE], ids=["1:1", "h/w 0.75"])
def test_kv_cache_matches_teacher_forcing(model, scales) -> None:
    gen = torch.Generator().manual_seed(1)
    text, x = make_text(gen), tf_input(gen, scales)
    with torch.no_grad():
        full = model(text, x, scales)
        inc = run_cached(model, text, x, scales)
    assert full.shape == (2, n_tokens(scales), CFG.vocab) and full.dtype == torch.float32
    assert full.abs().mean() > 0.1  # a degenerate model would make the comparison vacuous
    torch.testing.assert_close(inc, full, rtol=1e-5, atol=1e-5)


def test_rope_offset_matters(model) -> None:
    # control for the test above: restarting RoPE positions at every scale changes the logits
    gen = torch.Generator().manual_seed(1)
    text, x = make_text(gen), tf_input(gen, WIDE)
    with torch.no_grad():
        full = model(text, x, WIDE)
        broken = run_cached(model, text, x, WIDE, break_offsets=True)
    assert (broken[:, 1:] - full[:, 1:]).abs().max() > 1e-3
    torch.testing.assert_close(broken[:, :1], full[:, :1])  # scale 0 sits at offset 0 anyway


def test_causality_between_scales(model) -> None:
    gen = torch.Generator().manual_seed(2)
    text, x = make_text(gen), tf_input(gen, SQUARE)
    x2 = x.clone()
    x2[:, 1 + 4 :] += 1.0  # change the inputs of scales 2 and 3 only
    with torch.no_grad():
        a, b = model(text, x, SQUARE), model(text, x2, SQUARE)
    torch.testing.assert_close(a[:, :5], b[:, :5])  # scales 0 and 1 (1 + 4 tokens) cannot see them
    assert (a[:, 5:] - b[:, 5:]).abs().max() > 1e-3


def test_text_padding_and_batch_independence(model) -> None:
    gen = torch.Generator().manual_seed(3)
    text, x = make_text(gen, lens=(4, 7)), tf_input(gen, SQUARE)
    padded = TextCond(torch.nn.functional.pad(text.feats_BTC, (0, 0, 0, 5)), text.lens_B)
    with torch.no_grad():
        a = model(text, x, SQUARE)
        b = model(padded, x, SQUARE)
        c = model(text.select([1]), x[1:], SQUARE)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a[1:], c, rtol=1e-5, atol=1e-5)


def test_null_text_uses_first_rows_of_cfg_uncond(model) -> None:
    gen = torch.Generator().manual_seed(4)
    text = make_text(gen, lens=(2, 5))
    null = model.null_text(text)
    assert torch.equal(null.lens_B, text.lens_B)
    torch.testing.assert_close(null.feats_BTC[1], model.cfg_uncond[:5].float())
    torch.testing.assert_close(null.feats_BTC[0, :2], model.cfg_uncond[:2].float())
    assert null.feats_BTC[0, 2:].abs().sum() == 0
    dropped = model.drop_text(text, torch.tensor([True, False]))
    torch.testing.assert_close(dropped.feats_BTC[0], null.feats_BTC[0])
    torch.testing.assert_close(dropped.feats_BTC[1], text.feats_BTC[1])


# ---- precisions ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_paths(model, dtype) -> None:
    low = build_transformer(CFG, dtype=dtype, generator=torch.Generator().manual_seed(0))
    assert low.compute_dtype == dtype
    assert low.blocks[0].ffn.fc1.weight.dtype == dtype
    for name in ("head.weight", "shared_ada_lin.1.weight", "block_chunks.0.module.0.ada_gss", "cfg_uncond"):
        assert low.get_parameter(name).dtype == torch.float32, name
    gen = torch.Generator().manual_seed(5)
    text, x = make_text(gen), tf_input(gen, SQUARE)
    with torch.no_grad():
        ref = model(text, x, SQUARE)
        full = low(text, x, SQUARE)
        inc = run_cached(low, text, x, SQUARE)
    assert full.dtype == torch.float32 and torch.isfinite(full).all()
    scale = ref.abs().max()
    assert (full - ref).abs().max() / scale < 0.05
    assert (inc - full).abs().max() / scale < 0.05


# ---- training-time options ----------------------------------------------------------------------


def test_checkpointing_and_drop_path() -> None:
    m = build_transformer(CFG, generator=torch.Generator().manual_seed(0)).train().requires_grad_(True)
    gen = torch.Generator().manual_seed(6)
    text, x = make_text(gen), tf_input(gen, SQUARE)
    plain = m(text, x, SQUARE)
    plain.square().mean().backward()
    g_plain = m.head.weight.grad.clone()
    m.zero_grad()
    ckpt = m(text, x, SQUARE, checkpoint_blocks=True)
    ckpt.square().mean().backward()
    torch.testing.assert_close(ckpt, plain)
    torch.testing.assert_close(m.head.weight.grad, g_plain)
    # stochastic depth: only with a generator, reproducible from its seed
    d1 = m(text, x, SQUARE, drop_path_generator=torch.Generator().manual_seed(11))
    d2 = m(text, x, SQUARE, drop_path_generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(d1, d2)
    cfg_drop = dataclasses.replace(CFG, drop_path_rate=0.9)
    m9 = build_transformer(cfg_drop, generator=torch.Generator().manual_seed(0)).train()
    with torch.no_grad():
        dropped = m9(text, x, SQUARE, drop_path_generator=torch.Generator().manual_seed(3))
        kept = m9(text, x, SQUARE)
    assert (dropped - kept).abs().max() > 1e-3


def test_drop_text_trains_null_text() -> None:
    m = build_transformer(CFG, generator=torch.Generator().manual_seed(0)).train()
    m.cfg_uncond.requires_grad_(True)
    gen = torch.Generator().manual_seed(7)
    text, x = make_text(gen), tf_input(gen, SQUARE)
    m(m.drop_text(text, torch.tensor([True, False])), x, SQUARE).mean().backward()
    g = m.cfg_uncond.grad
    assert g is not None and g[:3].abs().sum() > 0 and g[3:].abs().sum() == 0  # prompt 0 has 3 tokens


# ---- RoPE and validation ------------------------------------------------------------------------


def test_rope_positions_in_the_frame() -> None:
    assert rope_frame(SQUARE) == (64, 64)
    assert rope_frame(WIDE) == (54, 72)
    with pytest.raises(InvalidInputError, match="frame_hw"):
        rope_frame(((1, 1, 1), (1, 2, 2)))  # a prefix of every template
    ang = rope_angles(2, 2, (64, 64), head_dim=8, theta=10000.0)  # P = 4: 2 y pairs, 2 x pairs
    inv = 1.0 / 10000.0 ** (torch.tensor([0.0, 2.0]) / 4)
    expected_y = torch.tensor([0.0, 0.0, 32.0, 32.0])[:, None] * inv
    expected_x = torch.tensor([0.0, 32.0, 0.0, 32.0])[:, None] * inv
    torch.testing.assert_close(ang, torch.cat([expected_y, expected_x], dim=1))


def test_input_validation(model) -> None:
    gen = torch.Generator().manual_seed(8)
    text, x = make_text(gen), tf_input(gen, SQUARE)
    with pytest.raises(InvalidInputError, match="teacher-forcing input"):
        model(text, x[:, :-1], SQUARE)
    cache = model.new_cache(text, SQUARE)
    with pytest.raises(InvalidInputError, match="scale 0"):
        model.forward_scale(cache, x[:, :1])
    model.forward_scale(cache)
    with pytest.raises(InvalidInputError, match="scale 1"):
        model.forward_scale(cache, None)
    with pytest.raises(InvalidInputError, match="first scale"):
        model.new_cache(text, SQUARE[1:], frame_hw=(64, 64))
    with pytest.raises(InvalidInputError, match="wide"):
        model.condition(make_text(gen, width=CFG.text_channels + 1))
    with pytest.raises(InvalidInputError, match="text lengths"):
        model.condition(TextCond(text.feats_BTC, text.lens_B + 20))


def test_wrapped_linears_take_effect() -> None:
    # fine-tuning adapters replace nn.Linear modules; the forward must call them, not their .weight
    m = build_transformer(CFG, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(9)
    text, x = make_text(gen), tf_input(gen, SQUARE)

    class Shifted(torch.nn.Module):
        def __init__(self, inner: torch.nn.Linear) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, v: torch.Tensor) -> torch.Tensor:
            return self.inner(v) + 0.5

    with torch.no_grad():
        base = m(text, x, SQUARE)
        for name in ("sa.mat_qkv", "ca.mat_kv", "ca.mat_q", "ffn.fc1"):
            block = m.blocks[1]
            owner, leaf = block.get_submodule(name.split(".")[0]), name.split(".")[1]
            original = getattr(owner, leaf)
            setattr(owner, leaf, Shifted(original))
            changed = m(text, x, SQUARE)
            setattr(owner, leaf, original)
            assert (changed - base).abs().max() > 1e-4, name


@pytest.mark.parametrize("head_tokens", [0, 5, 2600])
def test_scale_prefix_attention_matches_mask(model, head_tokens) -> None:
    """Attention scale by scale (with the first scales in one masked call, or none, or all)
    equals the (L, L) block-causal mask; gradients too."""
    from arbooth_cli.models.transformer import ScalePrefixes, block_causal_mask

    scales = WIDE
    sp = ScalePrefixes.of(scales, torch.device("cpu"), head_tokens)
    ends = [e for _, e in sp.bounds]
    assert (ends[-1] if ends else sp.head) == n_tokens(scales)
    if sp.head_mask is not None:
        assert torch.equal(sp.head_mask, block_causal_mask(scales, torch.device("cpu"))[: sp.head, : sp.head])
    gen = torch.Generator().manual_seed(4)
    text, x = make_text(gen), tf_input(gen, scales)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    masked = model(text, x1, scales)
    import arbooth_cli.models.transformer as T

    orig = T.ScalePrefixes.of
    T.ScalePrefixes.of = staticmethod(lambda s, d, h=head_tokens: orig(s, d, h))
    try:
        prefix = model(text, x2, scales, prefix_attention=True)
    finally:
        T.ScalePrefixes.of = orig
    torch.testing.assert_close(prefix, masked, rtol=1e-5, atol=1e-5)
    masked.square().mean().backward()
    prefix.square().mean().backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("ends", [[3, 7, 12], [2, 5]])
@pytest.mark.parametrize("dense", [True, False])
def test_prefix_views_give_the_slices_gradients(ends, dense) -> None:
    """The keys' and values' prefixes of the scale-by-scale attention: the same values as plain
    slices, and one gradient with the slices' sum (also where no prefix reaches the end), laid out
    as the input (a transposed (B, N, H, c) tensor, or a view of a wider one as unbind gives)."""
    from arbooth_cli.models.transformer import _Prefixes

    gen = torch.Generator().manual_seed(6)
    base = torch.randn(2, 12, 3, 3, 4, generator=gen, dtype=torch.float64)
    weights = [torch.randn(2, 3, e, 4, generator=gen, dtype=torch.float64) for e in ends]
    grads, seen = [], []
    # fresh memory is NaN-filled here, so a gradient row left unwritten shows
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        for views in (lambda x: _Prefixes.apply(x, ends), lambda x: [x[:, :, :e] for e in ends]):
            leaf = base.clone().requires_grad_()
            x_BNHc = leaf[:, :, 0].contiguous() if dense else leaf.unbind(2)[1]
            x = x_BNHc.transpose(1, 2)  # (B, H, N, c), as attend() passes it
            x.register_hook(seen.append)
            parts = views(x)
            assert [p.shape[2] for p in parts] == ends
            torch.testing.assert_close(parts[-1], x[:, :, : ends[-1]], rtol=0, atol=0)
            sum((p * w).sum() for p, w in zip(parts, weights)).backward()
            grads.append(leaf.grad)
    finally:
        torch.use_deterministic_algorithms(was)
    assert seen[0].transpose(1, 2).is_contiguous()  # the gradient reaching x: a contiguous (B, N, H, c) tensor
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-12)


def test_checkpointed_blocks_give_the_same_gradients(model) -> None:
    """Recomputing blocks in the backward pass changes nothing in float32 (the stored block
    inputs keep the blocks' dtype)."""
    gen = torch.Generator().manual_seed(5)
    text, x = make_text(gen), tf_input(gen, SQUARE)
    grads = []
    for ckpt in (False, True):
        xi = x.clone().requires_grad_()
        model(text, xi, SQUARE, checkpoint_blocks=ckpt).square().mean().backward()
        grads.append(xi.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)
