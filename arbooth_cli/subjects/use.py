"""A tuned subject at sampling time: its file read for a model, put into the model's weights and
into a prompt's text features."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import InvalidInputError
from ..models.text_encoder import TextCond
from ..models.transformer import InfinityTransformer
from .embedding import splice_subject, word_token_span
from .words import token_in_prompt


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
    from .store import read_subject_header

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
    if not token_in_prompt(subject.token, prompt):
        return text
    span = word_token_span(tokenizer, prompt, subject.token)
    return splice_subject(text, [span], subject.embedding_SC.to(text.feats_BTC.device))


def tuned_values(entries: Mapping[str, Tensor], base: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The tensors a subject file sets, from its entries (full values or low-rank changes) and the
    base model's tensors ``base`` (only those the file names are read)."""
    out: dict[str, Tensor] = {}
    for key, t in entries.items():
        if key == "subject_embedding":
            continue
        if key.endswith(".lora_up"):
            name = key[: -len(".lora_up")]
            down = entries[f"{name}.lora_down"]
            w = base[name]
            out[name] = (w.float() + (t.float().to(w.device) @ down.float().to(w.device))).to(w.dtype)
        elif key.endswith(".lora_down"):
            continue
        elif key.endswith(".delta"):
            name = key[: -len(".delta")]
            w = base[name]
            out[name] = (w.float() + t.float().to(w.device)).to(w.dtype)
        else:
            out[key] = t
    return out
