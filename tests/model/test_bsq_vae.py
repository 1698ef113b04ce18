"""The BSQ tokenizer: checkpoint layout, encode/decode, bit labels, teacher forcing, patchify."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from arbooth_cli.errors import InvalidInputError
from arbooth_cli.models.bsq_vae import (
    BSQVAE,
    CodeAccumulator,
    bits_to_codes,
    bits_to_tokens,
    bsq_quantize,
    teacher_forcing,
    tokens_to_bits,
    vae_scales,
)
from arbooth_cli.models.build import build_vae
from arbooth_cli.models.schedules import get_schedule
from arbooth_cli.specs.infinity import INFINITY_2B, INFINITY_8B
from arbooth_cli.specs.tiny import TINY_INFINITY

DATA = Path(__file__).parent / "data"
CFG = TINY_INFINITY.vae
SCALES = get_schedule(num_scales=4).scales  # 1, 2, 4, 6 tokens a side -> 96x96 pixels


@pytest.fixture(scope="module")
def vae() -> BSQVAE:
    return build_vae(CFG, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    "spec,table", [(INFINITY_2B, "vae-d32-state-dict.json"), (INFINITY_8B, "vae-d56-patchify-state-dict.json")]
)
def test_state_dict_matches_official_table(spec, table) -> None:
    expected = json.loads((DATA / table).read_text())
    with torch.device("meta"):
        m = BSQVAE(spec.vae)
    assert {k: list(v.shape) for k, v in m.state_dict().items()} == expected


def test_encode_decode_shapes(vae) -> None:
    img = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        feats = vae.encode_features(img)
        assert feats.shape == (2, CFG.bits, 1, 6, 6) and feats.dtype == torch.float32
        out = vae.decode(feats)
        assert out.shape == (2, 3, 96, 96)
        loud = vae.decode(feats * 1e4)
    assert out.min() >= -1 and out.max() <= 1
    assert loud.min() == -1.0 and loud.max() == 1.0  # clamped, not squashed
    with pytest.raises(InvalidInputError, match="stride"):
        vae.encode_features(img[..., :90, :90])


def test_bsq_codes() -> None:
    bits = torch.randint(0, 2, (2, 1, 3, 3, 8), generator=torch.Generator().manual_seed(0))
    codes = bits_to_codes(bits)
    assert codes.shape == (2, 8, 1, 3, 3)
    torch.testing.assert_close(codes.abs(), torch.full_like(codes, 1 / math.sqrt(8)))
    assert torch.equal((codes > 0).long().permute(0, 2, 3, 4, 1), bits)
    q, b = bsq_quantize(codes * 3.7)  # quantising codes gives them back
    assert torch.equal(b, bits)
    torch.testing.assert_close(q, codes)


def test_bit_labels_reproduce_the_quantisation() -> None:
    # Independent restatement of the residual recursion: labels of scale s are the signs of the
    # area-downsampled residual left by the codes of the earlier labels.
    gen = torch.Generator().manual_seed(2)
    raw = torch.randn(2, CFG.bits, 1, 6, 6, generator=gen)
    tf = teacher_forcing(raw, SCALES)
    assert [b.shape for b in tf.bits_per_scale] == [(2, h * w, CFG.bits) for _, h, w in SCALES]
    assert tf.bits_BLd.shape == (2, 57, CFG.bits) and tf.inputs_BLd.shape == (2, 56, CFG.bits)
    explained = torch.zeros_like(raw)
    for (t, h, w), bits in zip(SCALES, tf.bits_per_scale):
        residual = F.interpolate(raw - explained, size=(t, h, w), mode="area")
        assert torch.equal(bits, (residual > 0).long().permute(0, 2, 3, 4, 1).reshape(2, -1, CFG.bits))
        codes = bits_to_codes(bits.reshape(2, 1, h, w, CFG.bits))
        explained = explained + F.interpolate(codes, size=(1, 6, 6), mode="trilinear")
    # scale 0 is the sign of the mean feature
    assert torch.equal(tf.bits_per_scale[0][:, 0], (raw.mean(dim=(2, 3, 4)) > 0).long())


@pytest.mark.parametrize("patchify", [False, True])
def test_accumulator_reproduces_teacher_forcing_inputs(patchify) -> None:
    gen = torch.Generator().manual_seed(3)
    vs = vae_scales(SCALES, patchify)
    raw = torch.randn(2, CFG.bits, *vs[-1], generator=gen)
    tf = teacher_forcing(raw, vs, patchify=patchify)
    d_t = CFG.bits * (4 if patchify else 1)
    assert tf.bits_BLd.shape == (2, 57, d_t) and tf.inputs_BLd.shape == (2, 56, d_t)
    acc = CodeAccumulator(SCALES, patchify=patchify, bits=CFG.bits, batch=2, device="cpu")
    inputs = [acc.add(b) for b in tf.bits_per_scale]
    assert inputs[-1] is None and acc.done
    torch.testing.assert_close(torch.cat(inputs[:-1], dim=1), tf.inputs_BLd, rtol=0, atol=1e-6)
    assert acc.summed_Bd1HW.shape == raw.shape


def test_patchify_layout_round_trip() -> None:
    gen = torch.Generator().manual_seed(4)
    bits = torch.randint(0, 2, (2, 1, 4, 6, 3), generator=gen)  # VAE layout, 4x6 map, d = 3
    tokens = bits_to_tokens(bits, patchify=True)
    assert tokens.shape == (2, 2 * 3, 12)
    assert torch.equal(tokens_to_bits(tokens, (2, 3), patchify=True), bits)
    # token (0, 0) holds the 2x2 block's bits channel-major: channel c, then (dy, dx)
    assert torch.equal(tokens[0, 0].reshape(3, 2, 2), bits[0, 0, :2, :2].permute(2, 0, 1))
    flat = bits_to_tokens(bits, patchify=False)
    assert torch.equal(tokens_to_bits(flat, (4, 6), patchify=False), bits)


def test_bitwise_self_correction_noise() -> None:
    gen = torch.Generator().manual_seed(5)
    raw = torch.randn(2, CFG.bits, 1, 6, 6, generator=gen)
    clean = teacher_forcing(raw, SCALES)
    with pytest.raises(InvalidInputError, match="Generator"):
        teacher_forcing(raw, SCALES, noise_layers=3, noise_strength=0.3)
    a = teacher_forcing(raw, SCALES, noise_layers=3, noise_strength=0.3, generator=torch.Generator().manual_seed(9))
    b = teacher_forcing(raw, SCALES, noise_layers=3, noise_strength=0.3, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a.inputs_BLd, b.inputs_BLd) and torch.equal(a.bits_BLd, b.bits_BLd)
    assert torch.equal(a.bits_per_scale[0], clean.bits_per_scale[0])  # labels are never flipped
    assert not torch.equal(a.inputs_BLd, clean.inputs_BLd)  # but later inputs see the flips
    zero = teacher_forcing(raw, SCALES, noise_layers=3, noise_strength=0.0, generator=torch.Generator())
    assert torch.equal(zero.inputs_BLd, clean.inputs_BLd)


def test_teacher_forcing_from_images(vae) -> None:
    img = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(6)) * 2 - 1
    with torch.no_grad():
        tf = vae.teacher_forcing(img, SCALES)
        direct = teacher_forcing(vae.encode_features(img), SCALES)
    assert torch.equal(tf.bits_BLd, direct.bits_BLd)
    with pytest.raises(InvalidInputError, match="last scale"):
        teacher_forcing(vae.encode_features(img), SCALES[:-1])


def test_patchify_vae_end_to_end() -> None:
    cfg = dataclasses.replace(CFG, ch_mult=(1, 1, 2, 2), spatial_patchify=True)  # stride 8, tokens 16
    assert cfg.token_stride == 16 and cfg.transformer_bits == 4 * CFG.bits
    vae = build_vae(cfg, generator=torch.Generator().manual_seed(7))
    img = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(8)) * 2 - 1
    with torch.no_grad():
        tf = vae.teacher_forcing(img, SCALES)
        assert tf.inputs_BLd.shape == (1, 56, 4 * CFG.bits)
        acc = vae.new_accumulator(SCALES, batch=1)
        for bits in tf.bits_per_scale:
            acc.add(bits)
        assert acc.summed_Bd1HW.shape == (1, CFG.bits, 1, 12, 12)
        assert vae.decode(acc.summed_Bd1HW).shape == (1, 3, 96, 96)
