"""Token pruning with refill (FastVAR) in the KV-cached pass: the plan, the pure pieces, the pass."""

import pytest
import torch

from arbooth_cli.errors import InvalidInputError
from arbooth_cli.models.build import build_components
from arbooth_cli.models.pruning import (
    default_blocks,
    plan_pruning,
    refill,
    token_scores,
    top_tokens,
)
from arbooth_cli.models.schedules import get_schedule
from arbooth_cli.sampling.sample import SamplingParams, sample_token_maps
from arbooth_cli.specs.tiny import TINY_INFINITY

ONE_M = get_schedule("1M", 1.0).scales


def test_the_plan_of_fastvars_released_setting_on_the_1m_schedule():
    plan = plan_pruning(ONE_M, [(10, 0.5), (9, 0.4)], depth=32)
    assert plan.keep == ((9, 615), (10, 800))  # 1024 - int(409.6), 1600 - 800
    assert plan.blocks == (3, 28) == default_blocks(32)  # FastVAR prunes blocks 3..27 of 32
    assert plan.source == 8 and plan.hw[plan.source] == (24, 24)  # refilled from the 24x24 scale
    assert plan.prunes(9, 3) and plan.prunes(10, 27) and not plan.prunes(9, 28) and not plan.prunes(8, 5)
    assert not plan.prunes(9, 2)


def test_key_value_rows_of_a_pruned_block_count_only_the_kept_tokens():
    plan = plan_pruning(ONE_M, [(9, 0.4), (10, 0.5)], depth=32)
    before_32 = sum(h * w for _, h, w in ONE_M[:9])
    for block in (0, 28, 31):  # full blocks: the plain offsets
        assert plan.kv_start(10, block) == before_32 + 32 * 32
        assert plan.kv_start(11, block) == before_32 + 32 * 32 + 40 * 40
    assert plan.kv_start(9, 5) == before_32
    assert plan.kv_start(10, 5) == before_32 + 615
    assert plan.kv_start(11, 5) == before_32 + 615 + 800


@pytest.mark.parametrize("ratios, message", [
    ([(0, 0.5)], "must be in 1..12"), ([(13, 0.5)], "must be in 1..12"), ([(9, 1.0)], r"in \[0, 1\)"),
    ([(9, -0.1)], r"in \[0, 1\)"), ([(9, 0.4), (9, 0.5)], "twice"), ([], "at least one"),
])
def test_bad_plans_are_refused_with_what_to_change(ratios, message):
    with pytest.raises(InvalidInputError, match=message):
        plan_pruning(ONE_M, ratios, depth=32)
    if ratios:
        with pytest.raises(InvalidInputError, match=message):
            SamplingParams(prune=tuple(ratios)).per_scale(len(ONE_M))


def test_scores_rank_tokens_by_their_distance_from_the_row_mean():
    x = torch.zeros(2, 4, 3)
    x[0, 2] = 4.0  # far from row 0's mean
    x[0, 0] = -1.0
    x[1, 3] = 2.0
    s = token_scores(x)
    assert s.shape == (2, 4)
    assert top_tokens(x, 2)[0].tolist() == [2, 0] and top_tokens(x, 1)[1].tolist() == [3]
    assert torch.allclose(s[0], ((x[0] - x[0].mean(0)) ** 2).sum(-1))


def test_refill_resizes_the_source_by_area_and_keeps_the_fresh_tokens():
    src = torch.arange(4.0).view(1, 4, 1).expand(1, 4, 2)  # a 2x2 map of values 0..3
    idx = torch.tensor([[5, 0]])
    fresh = torch.full((1, 2, 2), -7.0)
    out = refill(src, (2, 2), (4, 4), idx, fresh)
    want = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3.0]]).view(16)
    want[[0, 5]] = -7.0
    assert torch.equal(out[0, :, 0], want) and torch.equal(out[0, :, 1], want)
    # down-sizing averages the covered cells
    none = torch.zeros(1, 0, dtype=torch.long)
    assert torch.equal(refill(src, (2, 2), (1, 1), none, torch.zeros(1, 0, 2)), torch.full((1, 1, 2), 1.5))


@pytest.fixture(scope="module")
def tiny():
    c = build_components(TINY_INFINITY)
    scales = get_schedule(num_scales=TINY_INFINITY.num_scales).scales
    text = c.text_encoder.encode(["a red star", "a blue square"])
    g = torch.Generator().manual_seed(0)
    xs = [None] + [torch.randn(2, h * w, c.transformer.cfg.bits, generator=g) for _, h, w in scales[1:]]
    return c, scales, text, xs


def _pass(tiny, ratios, rows_from=None):
    c, scales, text, xs = tiny
    tr = c.transformer
    plan = plan_pruning(scales, ratios, tr.cfg.depth) if ratios else None
    with torch.no_grad():
        cache = tr.new_cache(text, scales, prune=plan)
        out = []
        for si, x in enumerate(xs):
            if rows_from is not None and si == rows_from:
                cache = cache.rows(1)
            out.append(tr.forward_scale(cache, x if x is None or cache.cond.batch == 2 else x[:1]))
    return out


def test_a_ratio_of_zero_computes_every_token_and_matches_the_exact_pass(tiny):
    """Every token kept, in score order: the same logits up to float rounding (the attention sums
    in another order), so the plumbing (key/value rows, RoPE rows per batch row, refill) is right."""
    exact = _pass(tiny, None)
    kept = _pass(tiny, [(2, 0.0), (3, 0.0)])
    for a, b in zip(exact, kept):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5, rtol=0)


def test_pruning_changes_only_the_pruned_scales_and_runs_with_a_guidance_cut(tiny):
    exact = _pass(tiny, None)
    pruned = _pass(tiny, [(3, 0.5)])
    assert all(torch.equal(a, b) for a, b in zip(exact[:3], pruned[:3]))  # the source scale's record changes nothing
    assert not torch.allclose(exact[3], pruned[3], atol=1e-3)
    cut = _pass(tiny, [(3, 0.5)], rows_from=3)  # the conditional row alone from scale 3
    assert cut[3].shape[0] == 1 and torch.allclose(cut[3], pruned[3][:1], atol=1e-5, rtol=0)


def test_sampling_with_pruning_keeps_the_early_scales_bits(tiny):
    c, scales, text, _ = tiny
    gens = lambda: [torch.Generator().manual_seed(s) for s in (3, 4)]  # noqa: E731
    exact = sample_token_maps(c.transformer, c.vae, text, scales, SamplingParams(cfg=3.0, tau=1.0), gens())
    pruned = sample_token_maps(c.transformer, c.vae, text, scales, SamplingParams(cfg=3.0, tau=1.0, prune=((3, 0.5),)),
                               gens())
    assert all(torch.equal(a, b) for a, b in zip(exact.bits_per_scale[:3], pruned.bits_per_scale[:3]))
    assert pruned.bits_per_scale[3].shape == exact.bits_per_scale[3].shape


def test_pruned_and_full_blocks_read_only_key_value_rows_they_wrote(tiny):
    """Block 0 runs every token and block 1 prunes two scales in a row: each block must attend to
    the rows it wrote and no others (the buffers start as NaN, so a wrong row shows)."""
    c, scales, text, xs = tiny
    tr = c.transformer
    plan = plan_pruning(scales, [(2, 0.5), (3, 0.5)], tr.cfg.depth, blocks=(1, 2))
    assert plan.prunes(3, 1) and not plan.prunes(3, 0) and plan.kv_start(3, 1) < plan.kv_start(3, 0)
    with torch.no_grad():
        cache = tr.new_cache(text, scales, prune=plan)
        for k, v in cache.self_kv:
            k.fill_(float("nan"))
            v.fill_(float("nan"))
        out = [tr.forward_scale(cache, x) for x in xs]
    assert all(torch.isfinite(o).all() for o in out)
    exact = _pass(tiny, None)
    assert all(torch.equal(a, b) for a, b in zip(exact[:2], out[:2]))
