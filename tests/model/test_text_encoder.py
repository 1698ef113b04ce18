"""Text conditioning: the tiny T5 encoder, lengths, truncation, packing, missing files."""

from __future__ import annotations

import pytest
import torch

from arbooth_cli.errors import CheckpointError, InvalidInputError
from arbooth_cli.models.build import seeded_init_
from arbooth_cli.specs.tiny import TINY_TEXT
from arbooth_cli.models.text_encoder import PromptTruncatedWarning, T5TextEncoder, TextCond


def tiny_encoder(seed: int = 2, **kw) -> T5TextEncoder:
    gen = torch.Generator().manual_seed(seed)
    return T5TextEncoder.tiny(TINY_TEXT, init=lambda m: seeded_init_(m, gen), **kw)


@pytest.fixture(scope="module")
def encoder() -> T5TextEncoder:
    return tiny_encoder()


def test_encode_lengths_include_eos(encoder) -> None:
    text = encoder.encode(["a photo of sks dog", "x"])
    # byte-level tokenizer: one token per byte, plus </s>
    assert text.lens_B.tolist() == [19, 2]
    assert text.feats_BTC.shape == (2, 19, TINY_TEXT.width) and text.feats_BTC.dtype == torch.float32
    assert text.feats_BTC[1, 2:].abs().sum() == 0  # padding rows are zero
    assert text.feats_BTC[1, :2].abs().sum() > 0
    assert text.mask_BT.sum(1).tolist() == [19, 2]


def test_padding_does_not_change_features(encoder) -> None:
    prompts = ["a photo of sks dog", "x"]
    longest = T5TextEncoder(encoder.model, encoder.tokenizer, max_length=encoder.max_length, pad_to_max_length=False)
    torch.testing.assert_close(longest.encode(prompts).feats_BTC, encoder.encode(prompts).feats_BTC, rtol=1e-5, atol=1e-5)
    alone = encoder.encode(["x"])
    torch.testing.assert_close(alone.feats_BTC[0], encoder.encode(prompts).feats_BTC[1, :2], rtol=1e-5, atol=1e-5)


def test_long_prompt_is_truncated_with_a_warning(encoder) -> None:
    with pytest.warns(PromptTruncatedWarning, match="prompt 1"):
        text = encoder.encode(["short", "y" * 200])
    assert text.lens_B.tolist() == [6, TINY_TEXT.max_length]


def test_deterministic_init() -> None:
    a = tiny_encoder(seed=2).encode(["same"]).feats_BTC
    b = tiny_encoder(seed=2).encode(["same"]).feats_BTC
    c = tiny_encoder(seed=3).encode(["same"]).feats_BTC
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_pack_round_trip() -> None:
    feats = torch.randn(3 + 5, 4, generator=torch.Generator().manual_seed(0))
    text = TextCond.from_packed(feats, [3, 5])
    assert text.feats_BTC.shape == (2, 5, 4)
    packed = text.pack()
    assert packed.lens == [3, 5] and packed.max_seqlen_k == 5
    assert packed.cu_seqlens_k.tolist() == [0, 3, 8] and packed.cu_seqlens_k.dtype == torch.int32
    assert torch.equal(packed.kv_compact, feats)
    both = TextCond.cat([text.select([0]), text])
    assert both.feats_BTC.shape == (3, 5, 4) and both.lens_B.tolist() == [3, 3, 5]
    assert torch.equal(both.feats_BTC[0], text.feats_BTC[0])
    assert both.repeat(2).lens_B.tolist() == [3, 3, 3, 3, 5, 5]
    with pytest.raises(InvalidInputError):
        TextCond.from_packed(feats, [3, 4])


def test_missing_files_are_named(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        T5TextEncoder.from_pretrained(tmp_path / "nope")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="tokenizer.json or spiece.model") as err:
        T5TextEncoder.from_pretrained(tmp_path)
    assert "model.safetensors" in str(err.value)
    (tmp_path / "model.safetensors").write_bytes(b"")
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    with pytest.raises(CheckpointError, match=r"tok lacks a tokenizer"):
        T5TextEncoder.from_pretrained(tmp_path, tokenizer_path=tok_dir)


def test_tiny_requires_a_tiny_config() -> None:
    from arbooth_cli.specs.infinity import FLAN_T5_XL

    with pytest.raises(InvalidInputError, match="tiny_config"):
        T5TextEncoder.tiny(FLAN_T5_XL)


def test_from_pretrained_folder(tmp_path) -> None:
    # a T5 tokenizer (tokenizer.json) and encoder saved the way hub snapshots are laid out
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(c, -1.0 - i / 100) for i, c in enumerate("▁abcdefghijklmnopqrstuvwxyz")]
    T5Tokenizer(vocab=vocab, extra_ids=0).save_pretrained(str(tmp_path))
    T5EncoderModel(T5Config(vocab_size=32, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4)).save_pretrained(str(tmp_path))
    te = T5TextEncoder.from_pretrained(tmp_path, max_length=8)
    assert te.width == 16 and te.dtype == torch.float32 and not te.model.training
    with pytest.warns(PromptTruncatedWarning):
        text = te.encode(["a dog", "abcdefghijklmnop"])
    assert text.lens_B.tolist() == [7, 8]  # "▁a ▁ d o g </s>" and a cut prompt
    assert text.feats_BTC.shape == (2, 8, 16)
