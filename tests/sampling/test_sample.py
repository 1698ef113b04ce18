"""The sampler on the tiny model: determinism, batch independence, guidance paths."""

import pytest
import torch

from arbooth_cli.errors import InvalidInputError
from arbooth_cli.models.build import build_components
from arbooth_cli.models.schedules import get_schedule
from arbooth_cli.specs.tiny import TINY_INFINITY
from arbooth_cli.sampling.sample import SamplingParams, sample_images

PROMPTS = ["a red star on the left", "a blue square", "two green hearts, striped background"]


@pytest.fixture(scope="module")
def tiny():
    c = build_components(TINY_INFINITY)
    scales = get_schedule(num_scales=TINY_INFINITY.num_scales).scales
    return c, scales


def _sample(tiny, prompts, seeds, params=SamplingParams(cfg=3.0, tau=1.0), **kw):
    c, scales = tiny
    text = c.text_encoder.encode(prompts)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    return sample_images(c.transformer, c.vae, text, scales, params, gens, **kw)


def test_images_have_the_schedule_size_and_are_uint8(tiny):
    img = _sample(tiny, PROMPTS[:1], [0])
    assert img.shape == (1, 3, 96, 96) and img.dtype == torch.uint8
    assert img.float().std() > 5  # not a constant image


def test_same_seed_same_image_whatever_the_batch(tiny):
    batch = _sample(tiny, PROMPTS, [5, 6, 7])
    for i, (p, s) in enumerate(zip(PROMPTS, [5, 6, 7])):
        assert torch.equal(_sample(tiny, [p], [s])[0], batch[i]), i
    swapped = _sample(tiny, PROMPTS[::-1], [7, 6, 5])
    assert torch.equal(swapped.flip(0), batch)


def test_seeds_and_prompts_change_the_image(tiny):
    a = _sample(tiny, PROMPTS[:1], [0])
    assert not torch.equal(a, _sample(tiny, PROMPTS[:1], [1]))
    assert not torch.equal(a, _sample(tiny, PROMPTS[1:2], [0]))


def test_guidance_matters_and_cfg_1_skips_the_null_branch(tiny):
    plain = _sample(tiny, PROMPTS[:1], [3], SamplingParams(cfg=1.0, tau=1.0))
    guided = _sample(tiny, PROMPTS[:1], [3], SamplingParams(cfg=4.0, tau=1.0))
    assert not torch.equal(plain, guided)
    per_scale = _sample(tiny, PROMPTS[:1], [3], SamplingParams(cfg=(4.0, 4.0, 4.0, 4.0), tau=1.0))
    assert torch.equal(per_scale, guided)


def test_greedy_sampling_ignores_the_seed(tiny):
    p = SamplingParams(cfg=3.0, tau=1.0, top_k=1)
    assert torch.equal(_sample(tiny, PROMPTS[:1], [0], p), _sample(tiny, PROMPTS[:1], [99], p))


def test_batch_stream_is_reproducible_and_needs_one_generator(tiny):
    a = _sample(tiny, PROMPTS[:2], [11], stream="batch")
    b = _sample(tiny, PROMPTS[:2], [11], stream="batch")
    assert torch.equal(a, b)
    with pytest.raises(Exception, match="exactly one generator"):
        _sample(tiny, PROMPTS[:2], [1, 2], stream="batch")


def test_scale_callback_sees_every_scale(tiny):
    seen = []
    _sample(tiny, PROMPTS[:1], [0], on_scale=seen.append)
    assert seen == [0, 1, 2, 3]


def test_a_pass_that_drops_the_unconditional_rows_keeps_the_conditional_ones_exactly(tiny):
    """KVCache.rows(B) mid-pass: the conditional rows' logits are those of the full 2B-row pass."""
    import math

    from arbooth_cli.models.text_encoder import TextCond

    c, scales = tiny
    tr = c.transformer
    text = c.text_encoder.encode(PROMPTS[:2])
    both = TextCond.cat([text, tr.null_text(text)])
    g = torch.Generator().manual_seed(0)
    xs = [None] + [torch.randn(4, math.prod(s), tr.cfg.bits, generator=g) for s in scales[1:]]
    for k in range(1, len(scales)):
        full, part = tr.new_cache(both, scales), tr.new_cache(both, scales)
        for si, x in enumerate(xs):
            want = tr.forward_scale(full, x)[:2]
            if si == k:
                part = part.rows(2)
            got = tr.forward_scale(part, x if si < k or x is None else x[:2])
            assert torch.equal(got[:2], want) and got.shape[0] == (4 if si < k else 2), (k, si)


def test_cfg_until_scale_guides_the_first_scales_only(tiny):
    n = len(tiny[1])
    full = _sample(tiny, PROMPTS[:2], [3, 4], SamplingParams(cfg=4.0, tau=1.0))
    none = _sample(tiny, PROMPTS[:2], [3, 4], SamplingParams(cfg=1.0, tau=1.0))
    cut = [_sample(tiny, PROMPTS[:2], [3, 4], SamplingParams(cfg=4.0, tau=1.0, cfg_until_scale=k)) for k in range(1, n)]
    assert all(not torch.equal(x, full) and not torch.equal(x, none) for x in cut[:1])
    per_scale = _sample(tiny, PROMPTS[:2], [3, 4], SamplingParams(cfg=(4.0, 4.0) + (1.0,) * (n - 2), tau=1.0))
    assert torch.equal(per_scale, cut[1])  # the same guidance said per scale
    assert torch.equal(_sample(tiny, PROMPTS[:2], [3, 4], SamplingParams(cfg=4.0, tau=1.0, cfg_until_scale=n)), full)
    for bad in (0, n + 1, -1):
        with pytest.raises(InvalidInputError, match="--cfg-until-scale"):
            SamplingParams(cfg=4.0, cfg_until_scale=bad).per_scale(n)


def test_a_new_capture_is_built_only_after_the_old_one_is_freed(monkeypatch):
    """The engine keeps one set of CUDA graphs; a call of another batch size replaces it. The old
    set (its key/value buffers) must be gone before the new one allocates, or both are held at
    once: a prior pool drawn in batches of 3 then 1 ran out of memory under a 15 GiB cap."""
    import gc
    import weakref
    from types import SimpleNamespace

    import arbooth_cli.sampling.sample as sample_mod
    from arbooth_cli.models.text_encoder import TextCond

    alive_at_build: list[bool] = []
    last: list[weakref.ref] = []

    class FakeGraphs:  # stands in for ScaleGraphs, which needs a CUDA device
        def __init__(self, transformer, batch, text_len, scales, **kw):
            was = gc.isenabled()
            gc.disable()  # no collection during the check: the old set must be gone already
            alive_at_build.append(bool(last) and last[-1]() is not None)
            if was:
                gc.enable()
            last.append(weakref.ref(self))
            self.batch = batch

        def matches(self, transformer, batch, *args):
            return batch == self.batch

        def start(self, cond):
            pass

        def forward_scale(self, x=None):
            return torch.zeros(1)

    monkeypatch.setattr(sample_mod, "ScaleGraphs", FakeGraphs)
    model = SimpleNamespace(device=torch.device("cuda"),
                            condition=lambda text: SimpleNamespace(batch=text.batch))
    engine = sample_mod.SamplingEngine(compile=False, text_bucket=0)
    for batch in (3, 3, 1):
        text = TextCond(torch.zeros(batch, 4, 8), torch.full((batch,), 4))
        engine.scale_runner(model, text, ((1, 1, 1),))  # type: ignore[arg-type]
    assert alive_at_build == [False, False]  # built twice (3, then 1); nothing alive either time
    assert last[0]() is None and last[1]() is not None
