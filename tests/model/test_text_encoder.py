"""Text conditioning: the tiny T5 encoder, lengths, truncation, packing, missing files."""

from __future__ import annotations

import warnings

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


# ---- the plain-torch tiny T5 and byte tokenizer match transformers bit for bit ---------------------


def _transformers_tiny(cfg, init):
    """The tiny encoder as it was built with transformers (meta device, zeros, ``init``)."""
    from transformers import T5Config, T5EncoderModel

    with torch.device("meta"):
        model = T5EncoderModel(T5Config(**dict(cfg.tiny_config)))
    model.to_empty(device="cpu")
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            t.zero_()
        init(model)
    return model.eval().requires_grad_(False)


def _seeded(seed: int):
    gen = torch.Generator().manual_seed(seed)
    return lambda m: seeded_init_(m, gen)


PARITY_PROMPTS = ["a red star on the left, blue background", "x", "", "y" * 170, "z" * 159, "w" * 160,
                  "a photo of sks dog", "Ünïcödé 中文 🙂\tand\nnewlines", "</s> and <pad> and <extra_id_3> inside"]


@pytest.mark.parametrize("which", ["toy", "tiny"])
def test_tiny_t5_matches_transformers_bit_for_bit(which) -> None:
    from transformers import ByT5Tokenizer as Reference

    from arbooth_cli.loading import packaged_path
    from arbooth_cli.models.build import load_text_encoder_state_, read_bundle
    from arbooth_cli.models.byte_t5 import T5Encoder
    from arbooth_cli.registry import get_spec

    if which == "toy":
        spec = get_spec("toy")
        state = read_bundle(packaged_path(spec))["text_encoder"]
        cfg, make_init = spec.text_encoder, lambda: (lambda m: load_text_encoder_state_(m, state))
    else:
        cfg, make_init = TINY_TEXT, lambda: _seeded(5)
    ref = _transformers_tiny(cfg, make_init())
    ours = T5TextEncoder.tiny(cfg, init=make_init())
    assert isinstance(ours.model, T5Encoder)
    # same names, order (bundles, seeded inits) and values
    assert [n for n, _ in ours.model.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert list(ours.model.state_dict()) == list(ref.state_dict())
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in ours.model.state_dict().items())
    reference = Reference()
    batches = [PARITY_PROMPTS[:2], PARITY_PROMPTS[2:6], PARITY_PROMPTS[4:5], PARITY_PROMPTS[6:]]
    for dtype in (torch.float32, torch.bfloat16):
        r, m = ref.to(dtype), ours.model.to(dtype)
        for padding in ("max_length", "longest"):
            for batch in batches:
                kw = {"max_length": cfg.max_length, "padding": padding, "truncation": True, "return_tensors": "pt"}
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # transformers: "This sequence already has </s>"
                    a, b = reference(batch, **kw), ours.tokenizer(batch, **kw)
                    assert reference(batch, max_length=9, truncation=True)["input_ids"] == \
                        ours.tokenizer(batch, max_length=9, truncation=True)["input_ids"]
                assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["attention_mask"], b["attention_mask"])
                with torch.no_grad():
                    x = r(input_ids=a["input_ids"], attention_mask=a["attention_mask"]).last_hidden_state
                    y = m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
                assert x.dtype == y.dtype and torch.equal(x, y), (dtype, padding, batch)


def test_byte_tokenizer_matches_transformers() -> None:
    import random

    from transformers import ByT5Tokenizer as Reference

    from arbooth_cli.models.byte_t5 import ByT5Tokenizer

    reference, ours = Reference(), ByT5Tokenizer()
    # every special token of the reference is sent to it (the fast path never sees one)
    assert all(t.startswith(ours.SPECIAL_PREFIXES) for t in reference.added_tokens_encoder)
    rng = random.Random(0)
    pieces = ["a", " ", "\t", "\n", "é", "中", "🙂", "<", ">", "/", "s", "</s>", "<pad>", "<unk>", "<extra_id_0>",
              "<extra_id_125>", " </s> ", "x" * 40, "\u0301", "\x00", "\ufeff"]
    for _ in range(300):
        batch = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 10))) for _ in range(rng.randint(1, 3))]
        max_length = rng.choice([1, 2, 16, 161])
        for kw in ({}, {"padding": "max_length", "return_tensors": "pt"}, {"padding": "longest", "return_tensors": "pt"},
                   {"padding": "longest"}):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                a = reference(batch, max_length=max_length, truncation=True, **kw)
                b = ours(batch, max_length=max_length, truncation=True, **kw)
            for key in ("input_ids", "attention_mask"):
                if isinstance(a[key], torch.Tensor):
                    assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), (batch, kw)
                else:
                    assert a[key] == b[key], (batch, kw)


def test_other_tiny_configs_use_transformers() -> None:
    import dataclasses

    from transformers import T5EncoderModel

    from arbooth_cli.models.byte_t5 import T5Encoder

    silu = dataclasses.replace(TINY_TEXT, tiny_config=(*TINY_TEXT.tiny_config[:-1], ("feed_forward_proj", "gated-silu")))
    relu = dataclasses.replace(TINY_TEXT, tiny_config=(*TINY_TEXT.tiny_config[:-1], ("feed_forward_proj", "relu")))
    assert isinstance(T5TextEncoder.tiny(silu).model, T5EncoderModel)
    assert isinstance(T5TextEncoder.tiny(relu).model, T5Encoder)
    ref = _transformers_tiny(relu, _seeded(1))
    ours = T5TextEncoder.tiny(relu, init=_seeded(1))
    tokens = ours.tokenizer(["a relu", "b"], max_length=64, padding="longest", truncation=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(ref(**tokens).last_hidden_state, ours.model(**tokens).last_hidden_state)
