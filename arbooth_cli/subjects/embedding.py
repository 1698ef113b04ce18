"""The learned subject embedding: S vectors that replace the text features of the subject's word.

ARBooth learns, together with the tuned layers, a few vectors (4 of the text width, zero at the
start) in the text encoder's *output* space. The prompt is encoded as written ("a photo of sks dog"),
so the other words see the identifier in context, and then the feature rows of the identifier's
tokens are replaced by the learned vectors. The released code inserts a special ``<placeholder>``
token for this; splicing by the word's own token span needs no change to the tokenizer or to the
encoder's vocabulary, and works with any tokenizer that reports offsets (and with byte tokenizers).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import InvalidInputError
from ..models.text_encoder import TextCond
from .words import word_char_span


def word_token_span(tokenizer: Any, prompt: str, word: str) -> tuple[int, int]:
    """Token positions ``[start, end)`` of ``word`` in ``tokenizer(prompt)``."""
    cs, ce = word_char_span(prompt, word)
    if getattr(tokenizer, "is_fast", False):
        offsets = tokenizer(prompt, return_offsets_mapping=True)["offset_mapping"]
        hit = [i for i, (a, b) in enumerate(offsets) if b > a and a < ce and b > cs]
        if not hit:
            raise InvalidInputError(f"the tokenizer produced no token for {word!r} in {prompt!r}")
        return hit[0], hit[-1] + 1
    if type(tokenizer).__name__ == "ByT5Tokenizer":  # one token per UTF-8 byte, nothing before
        return len(prompt[:cs].encode()), len(prompt[:ce].encode())
    raise InvalidInputError(f"cannot locate words with a {type(tokenizer).__name__}; use a fast tokenizer")


def splice_subject(text: TextCond, spans: Sequence[tuple[int, int]], subject_SC: Tensor) -> TextCond:
    """Replace rows ``spans[i]`` of prompt i by the S subject vectors (lengths change by S - span)."""
    if len(spans) != text.batch:
        raise InvalidInputError(f"{len(spans)} spans for {text.batch} prompts")
    rows = []
    for i, (s, e) in enumerate(spans):
        n = int(text.lens_B[i])
        if not 0 <= s < e <= n:
            raise InvalidInputError(f"span {s}:{e} is outside prompt {i} of {n} tokens")
        f = text.feats_BTC[i]
        rows.append(torch.cat([f[:s], subject_SC.to(f.dtype), f[e:n]]))
    lens = torch.tensor([r.shape[0] for r in rows], dtype=torch.int64, device=text.lens_B.device)
    T = int(lens.max())
    feats = torch.stack([torch.nn.functional.pad(r, (0, 0, 0, T - r.shape[0])) for r in rows])
    return TextCond(feats, lens)
