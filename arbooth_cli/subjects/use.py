"""A tuned subject at sampling time: its file read for a model, put into the model's weights and
into a prompt's text features."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import CheckpointError, InvalidInputError
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
    width = transformer.cfg.text_channels
    if emb is not None and emb.shape[1] != width:  # would fail when a prompt names the subject
        raise CheckpointError(f"{path}: subject_embedding is {emb.shape[1]} wide, this model's text is {width}")
    values = {n: v.to(params[n].dtype) for n, v in values.items()}
    return LoadedSubject(meta["name"], meta["token"], meta["base_model"], meta["base_model_hash"], path,
                         sha256_file(path), values, emb.float() if emb is not None else None)


def read_subject_values(path: str | Path, params: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], Tensor | None]:
    """The tensors a subject file sets, as full values in the file's dtype (low-rank forms applied
    to ``params``, the base model's tensors by name), and its embedding; read onto the params'
    device. Refuses a damaged file, and names or shapes the model does not have, before reading
    any tensor."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ..checkpoint_io import read_safetensors_header, tensor_shapes
    from ..errors import CheckpointError

    path = Path(path)
    _check_entries(path, tensor_shapes(read_safetensors_header(path)), params)
    device = next(iter(params.values())).device
    try:
        entries = load_file(str(path), device=str(device))
    except SafetensorError as exc:  # the file changed after its header was checked
        first = str(exc).splitlines()[0] if str(exc) else "corrupt"
        raise CheckpointError(f"{path} cannot be read: {first}", hint="copy or export the subject file again") from None
    values = tuned_values(entries, {n: params[n] for n in set(_target(entries).values())})
    return values, entries.get("subject_embedding")


_LOWRANK_SUFFIXES = (".lora_up", ".lora_down", ".delta")


def _target(entries: Mapping[str, Any]) -> dict[str, str]:
    """entry name -> the model tensor it sets (the embedding sets none)."""
    return {k: k.rsplit(".", 1)[0] if k.endswith(_LOWRANK_SUFFIXES) else k for k in entries if k != "subject_embedding"}


def _check_entries(path: Path, shapes: Mapping[str, tuple[int, ...]], params: Mapping[str, Tensor]) -> None:
    """Refuse entries :func:`tuned_values` could not apply to ``params`` (from the header alone):
    its arithmetic would otherwise fail on a hostile or mismatched file with a shape error."""
    from ..checkpoint_io import short_repr as q

    emb = shapes.get("subject_embedding")
    if emb is not None and (len(emb) != 2 or emb[0] < 1):
        raise CheckpointError(f"{path}: subject_embedding is {q(emb)}, not (vectors, width)")
    target = _target(shapes)
    unknown = sorted(n for n in set(target.values()) if n not in params)
    if unknown:
        raise CheckpointError(f"{path} sets tensors this model does not have, e.g. {q(unknown[0])}")
    seen: dict[str, str] = {}
    for key, name in target.items():
        if key.endswith(".lora_down"):
            continue  # checked with its lora_up
        if name in seen:
            raise CheckpointError(f"{path} sets {q(name)} twice ({q(seen[name])} and {q(key)})")
        seen[name] = key
        want, got = tuple(params[name].shape), shapes[key]
        if key.endswith(".lora_up"):
            down = shapes.get(f"{name}.lora_down")
            if down is None:
                raise CheckpointError(f"{path}: {q(key)} has no {q(name + '.lora_down')} beside it")
            if len(want) != 2 or len(got) != 2 or len(down) != 2 or (got[0], down[1]) != want or got[1] != down[0]:
                raise CheckpointError(
                    f"{path}: {q(key)} {q(got)} and its lora_down {q(down)} do not make the model's {want}")
        elif got != want:
            raise CheckpointError(f"{path}: {q(key)} is {q(got)}, the model's {q(name)} is {want}")
    orphans = sorted(k for k in target if k.endswith(".lora_down") and f"{target[k]}.lora_up" not in shapes)
    if orphans:
        raise CheckpointError(f"{path}: {q(orphans[0])} has no lora_up beside it")


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
