"""The learned subject embedding: S vectors that replace the text features of the subject's word.

ARBooth learns, together with the tuned layers, a few vectors (4 of the text width, zero at the
start) in the text encoder's *output* space. The prompt is encoded as written ("a photo of sks dog"),
so the other words see the identifier in context, and then the feature rows of the identifier's
tokens are replaced by the learned vectors. The released code inserts a special ``<placeholder>``
token for this; splicing by the word's own token span needs no change to the tokenizer or to the
encoder's vocabulary, and works with any tokenizer that reports offsets (and with byte tokenizers).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import InvalidInputError
from ..models.text_encoder import TextCond
from ..models.transformer import InfinityTransformer


def word_char_span(prompt: str, word: str) -> tuple[int, int]:
    """Characters of the first whole-word occurrence of ``word`` in ``prompt``."""
    m = re.search(rf"(?<![\w]){re.escape(word)}(?![\w])", prompt)
    if m is None:
        raise InvalidInputError(f"prompt {prompt!r} does not contain the subject token {word!r}")
    return m.span()


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


# ---------------------------------------------------------------------------------------------
# using a tuned subject at sampling time
# ---------------------------------------------------------------------------------------------


@dataclass
class LoadedSubject:
    """A subject file read onto a device: the values it sets and its embedding."""

    name: str
    token: str
    base_model: str
    base_model_hash: str
    path: Path
    sha256: str
    values: dict[str, Tensor]  # transformer parameter name -> tuned value (parameter dtype, device)
    embedding_SC: Tensor | None


def load_subject(path: str | Path, transformer: InfinityTransformer, *, model_name: str,
                 model_hash: str) -> LoadedSubject:
    """Read a subject file for ``transformer``; refuses one tuned on another base model."""
    from ..checkpoint_io import sha256_file
    from ..subjects import read_subject_header

    path = Path(path)
    meta, _ = read_subject_header(path)
    if meta["base_model"] != model_name or meta["base_model_hash"] != model_hash:
        same = meta["base_model"] == model_name
        raise InvalidInputError(
            f"subject {meta['name']!r} was tuned on {meta['base_model']}"
            + (" with other weight files" if same else "") + f", not on this {model_name}",
            hint=f"use --model {meta['base_model']}" if not same else "import the model files it was tuned on",
        )
    params = {n: p.detach() for n, p in transformer.named_parameters()}
    values, emb = read_subject_values(path, params)
    values = {n: v.to(params[n].dtype) for n, v in values.items()}
    return LoadedSubject(meta["name"], meta["token"], meta["base_model"], meta["base_model_hash"], path,
                         sha256_file(path), values, emb.float() if emb is not None else None)


def read_subject_values(path: str | Path, params: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], Tensor | None]:
    """The tensors a subject file sets, as full values in the file's dtype (low-rank forms applied
    to ``params``, the base model's tensors by name), and its embedding; read onto the params'
    device. Refuses names or shapes the model does not have."""
    from safetensors.torch import load_file

    from ..errors import CheckpointError
    from .lowrank import tuned_values

    device = next(iter(params.values())).device
    entries = load_file(str(path), device=str(device))
    names = {k.rsplit(".", 1)[0] if k.endswith((".lora_up", ".lora_down", ".delta")) else k
             for k in entries if k != "subject_embedding"}
    unknown = sorted(n for n in names if n not in params)
    if unknown:
        raise CheckpointError(f"{path} sets tensors this model does not have, e.g. {unknown[0]}")
    values = tuned_values(entries, {n: params[n] for n in names})
    for n, v in values.items():
        if v.shape != params[n].shape:
            raise CheckpointError(f"{path}: {n} is {tuple(v.shape)}, the model's is {tuple(params[n].shape)}")
    return values, entries.get("subject_embedding")


class SubjectSwitch:
    """Puts one subject's values into a model's parameters (in place, so CUDA graphs captured on
    the model stay valid) and restores the base values for the next subject or for none."""

    def __init__(self, transformer: InfinityTransformer) -> None:
        self.transformer = transformer
        self.base: dict[str, Tensor] = {}
        self.active: LoadedSubject | None = None

    @torch.no_grad()
    def use(self, subject: LoadedSubject | None) -> None:
        if subject is self.active:
            return
        params = dict(self.transformer.named_parameters())
        for n, v in self.base.items():
            params[n].copy_(v)
        if subject is not None:
            for n, v in subject.values.items():
                if n not in self.base:
                    self.base[n] = params[n].detach().to("cpu", copy=True)
                params[n].copy_(v)
        self.active = subject


def subject_text(text: TextCond, tokenizer: Any, prompt: str, subject: LoadedSubject | None) -> TextCond:
    """``text`` (one prompt) with the subject's learned vectors in place of its token, when the
    prompt names it and the subject has an embedding."""
    if subject is None or subject.embedding_SC is None:
        return text
    from ..subjects import token_in_prompt

    if not token_in_prompt(subject.token, prompt):
        return text
    span = word_token_span(tokenizer, prompt, subject.token)
    return splice_subject(text, [span], subject.embedding_SC.to(text.feats_BTC.device))
