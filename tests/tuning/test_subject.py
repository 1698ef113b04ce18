import pytest
import torch
from transformers import ByT5Tokenizer, PreTrainedTokenizerFast

from arbooth_cli.errors import InvalidInputError
from arbooth_cli.models.text_encoder import TextCond
from arbooth_cli.subjects.embedding import splice_subject, word_token_span
from arbooth_cli.subjects.words import word_char_span


def test_whole_word_match_only():
    assert word_char_span("a photo of sks dog", "sks") == (11, 14)
    assert word_char_span("sksx sks", "sks") == (5, 8)
    with pytest.raises(InvalidInputError, match="does not contain the subject token 'sks'"):
        word_char_span("a photo of a dog", "sks")


def test_byte_tokenizer_span():
    tok = ByT5Tokenizer()
    s, e = word_token_span(tok, "a photo of sks dog", "sks")
    ids = tok("a photo of sks dog")["input_ids"]
    assert tok.decode(ids[s:e]) == "sks"


def test_fast_tokenizer_span_from_offsets():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["[UNK]", "a", "photo", "of", "sk", "s", "dog", "</s>"])}
    inner = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix=""))
    inner.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=inner)
    enc = tok("a photo of sks dog")["input_ids"]
    s, e = word_token_span(tok, "a photo of sks dog", "sks")
    assert [tok.convert_ids_to_tokens(i) for i in enc[s:e]] == ["sk", "s"]


def test_splice_replaces_rows_shifts_the_rest_and_passes_gradients():
    feats = torch.arange(2 * 6 * 3, dtype=torch.float32).view(2, 6, 3)
    text = TextCond(feats, torch.tensor([6, 4]))
    subject = torch.zeros(4, 3, requires_grad=True)
    out = splice_subject(text, [(2, 4), (1, 2)], subject)
    assert out.lens_B.tolist() == [8, 7]
    assert torch.equal(out.feats_BTC[0, :2], feats[0, :2]) and torch.equal(out.feats_BTC[0, 6:8], feats[0, 4:6])
    assert torch.equal(out.feats_BTC[1, 5:7], feats[1, 2:4]) and (out.feats_BTC[1, 7:] == 0).all()
    (out.feats_BTC[:, 2:6].sum() + out.feats_BTC[1, 1:5].sum()).backward()
    assert subject.grad is not None and (subject.grad > 0).all()
    with pytest.raises(InvalidInputError, match="outside prompt 1"):
        splice_subject(text, [(2, 4), (3, 6)], subject)
