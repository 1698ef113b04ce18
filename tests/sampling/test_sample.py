"""The sampler on the tiny model: determinism, batch independence, guidance paths."""

import pytest
import torch

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
