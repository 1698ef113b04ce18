"""Text conditioning: a T5 encoder (flan-t5-xl for Infinity) and the padded feature batch it yields.

Semantics follow the official Infinity pipeline:

* tokenise with the model's tokenizer, ``max_length`` tokens (512 for flan-t5-xl), padded to
  ``max_length`` and truncated; a prompt that does not fit is cut (the checkpoints were trained
  that way) and :class:`PromptTruncatedWarning` says so;
* the length of a prompt counts its ``</s>`` token (``attention_mask.sum()``);
* features are ``last_hidden_state`` cast to float32; no normalisation here (the transformer
  applies its own RMSNorm).

The official code packs the prompts into one (sum of lengths, Ct) tensor for flash-attn's varlen
kernel; arbooth keeps them padded (:class:`TextCond`) and masks the padding, which computes the same
attention with plain SDPA. :meth:`TextCond.pack` / :meth:`TextCond.from_packed` convert.

``transformers`` is imported lazily, for hub encoders only: building a :class:`TextCond` does not
need it, and the built-in tiny encoders (toy, tiny-infinity) are :mod:`.byte_t5`'s plain-torch T5
and byte tokenizer, whose outputs are bit-identical to transformers' (its T5 import alone takes
longer than a toy image).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..errors import CheckpointError, InvalidInputError
from ..registry import TextEncoderConfig

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase, T5EncoderModel

    from .byte_t5 import ByT5Tokenizer, T5Encoder


class PromptTruncatedWarning(UserWarning):
    """A prompt had more tokens than the text encoder's maximum length and was cut."""


# ---------------------------------------------------------------------------------------------
# feature batches
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PackedText:
    """The official packed layout: rows of all prompts back to back (flash-attn varlen style)."""

    kv_compact: Tensor  # (sum(lens), Ct)
    lens: list[int]
    cu_seqlens_k: Tensor  # (B + 1,) int32 prefix sums with a leading 0
    max_seqlen_k: int

    def as_tuple(self) -> tuple[Tensor, list[int], Tensor, int]:
        """``(kv_compact, lens, cu_seqlens_k, max_seqlen_k)``: the official ``text_cond_tuple``."""
        return self.kv_compact, self.lens, self.cu_seqlens_k, self.max_seqlen_k


@dataclass(frozen=True)
class TextCond:
    """Padded text features of a batch of prompts.

    ``feats_BTC``: (B, T, Ct) float features, T = the longest prompt; rows at or past a prompt's
    length are padding (zero) and are masked out everywhere. ``lens_B``: (B,) int64 token counts
    (``</s>`` included), each in [1, T].
    """

    feats_BTC: Tensor
    lens_B: Tensor

    def __post_init__(self) -> None:
        if self.feats_BTC.ndim != 3 or self.lens_B.shape != (self.feats_BTC.shape[0],):
            raise InvalidInputError(
                f"text features must be (B, T, C) with B lengths, got {tuple(self.feats_BTC.shape)} "
                f"and {tuple(self.lens_B.shape)}"
            )

    @property
    def batch(self) -> int:
        return self.feats_BTC.shape[0]

    @property
    def mask_BT(self) -> Tensor:
        """True on real tokens."""
        T = self.feats_BTC.shape[1]
        lens = self.lens_B.to(self.feats_BTC.device)
        return torch.arange(T, device=self.feats_BTC.device)[None, :] < lens[:, None]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> TextCond:
        return TextCond(self.feats_BTC.to(device=device, dtype=dtype), self.lens_B.to(device))

    def select(self, index: Tensor | Sequence[int] | slice) -> TextCond:
        """A sub-batch (rows of ``index``), trimmed to its own longest prompt."""
        return TextCond(self.feats_BTC[index], self.lens_B[index]).trimmed()

    def trimmed(self) -> TextCond:
        """Drop padding columns no prompt uses."""
        T = int(self.lens_B.max())
        return self if T == self.feats_BTC.shape[1] else TextCond(self.feats_BTC[:, :T], self.lens_B)

    def repeat(self, n: int) -> TextCond:
        """Each prompt n times in a row (prompt 0, 0, ..., 1, 1, ...)."""
        return TextCond(self.feats_BTC.repeat_interleave(n, 0), self.lens_B.repeat_interleave(n, 0))

    @staticmethod
    def cat(parts: Sequence[TextCond]) -> TextCond:
        """Stack batches, padding to the longest prompt of all (e.g. [cond; uncond] for CFG)."""
        if not parts:
            raise InvalidInputError("nothing to concatenate")
        T = max(p.feats_BTC.shape[1] for p in parts)
        feats = [torch.nn.functional.pad(p.feats_BTC, (0, 0, 0, T - p.feats_BTC.shape[1])) for p in parts]
        lens = [p.lens_B.to(parts[0].lens_B.device) for p in parts]
        return TextCond(torch.cat(feats), torch.cat(lens))

    def pack(self) -> PackedText:
        lens = [int(v) for v in self.lens_B.tolist()]
        rows = torch.cat([f[:n] for f, n in zip(self.feats_BTC.unbind(0), lens)])
        cu = torch.nn.functional.pad(
            torch.tensor(lens, dtype=torch.int32, device=self.feats_BTC.device).cumsum(0, dtype=torch.int32), (1, 0)
        )
        return PackedText(rows, lens, cu, max(lens))

    @staticmethod
    def from_packed(kv_compact: Tensor, lens: Sequence[int]) -> TextCond:
        lens = [int(n) for n in lens]
        if sum(lens) != kv_compact.shape[0]:
            raise InvalidInputError(f"lengths sum to {sum(lens)}, but there are {kv_compact.shape[0]} rows")
        if min(lens, default=0) < 1:
            raise InvalidInputError("every prompt needs at least one token")
        T = max(lens)
        feats = kv_compact.new_zeros(len(lens), T, kv_compact.shape[1])
        for i, chunk in enumerate(kv_compact.split(lens)):
            feats[i, : chunk.shape[0]] = chunk
        return TextCond(feats, torch.tensor(lens, dtype=torch.int64, device=kv_compact.device))


# ---------------------------------------------------------------------------------------------
# the encoder
# ---------------------------------------------------------------------------------------------

_TOKENIZER_FILES = ("tokenizer.json", "spiece.model")
_MODEL_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def _check_hf_dir(path: Path, *, need_model: bool, need_tokenizer: bool) -> None:
    if not path.is_dir():
        raise CheckpointError(f"text encoder directory {path} does not exist or is not a directory")
    missing = []
    if need_tokenizer and not any((path / f).is_file() for f in _TOKENIZER_FILES):
        missing.append("a tokenizer (tokenizer.json or spiece.model)")
    if need_model:
        if not (path / "config.json").is_file():
            missing.append("config.json")
        if not any((path / f).is_file() for f in _MODEL_WEIGHT_FILES):
            missing.append("the weights (model.safetensors, or model.safetensors.index.json with its shards)")
    if missing:
        raise CheckpointError(f"text encoder directory {path} lacks " + " and ".join(missing))


class T5TextEncoder:
    """A T5 encoder and its tokenizer; :meth:`encode` turns prompts into a :class:`TextCond`."""

    def __init__(
        self,
        model: T5EncoderModel | T5Encoder,
        tokenizer: PreTrainedTokenizerBase | ByT5Tokenizer,
        *,
        max_length: int,
        pad_to_max_length: bool = True,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        #: pad every batch to ``max_length`` as the official code does; False pads to the longest
        #: prompt instead (same features for the real tokens up to float rounding, faster)
        self.pad_to_max_length = pad_to_max_length

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def width(self) -> int:
        return int(self.model.config.d_model)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        max_length: int = 512,
        tokenizer_path: str | Path | None = None,
    ) -> T5TextEncoder:
        """Load a T5 encoder (e.g. a flan-t5-xl snapshot) and its tokenizer from local folders.

        Only the encoder half of an encoder-decoder checkpoint is read. The official pipeline runs
        flan-t5-xl in float16 on the GPU.
        """
        from transformers import AutoTokenizer, T5EncoderModel

        path = Path(path)
        tok_path = Path(tokenizer_path) if tokenizer_path is not None else path
        _check_hf_dir(path, need_model=True, need_tokenizer=tokenizer_path is None)
        if tokenizer_path is not None:
            _check_hf_dir(tok_path, need_model=False, need_tokenizer=True)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(tok_path), legacy=True)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot load the tokenizer from {tok_path}: {exc}") from exc
        try:
            model = T5EncoderModel.from_pretrained(str(path), dtype=dtype)
        except (OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"cannot load the T5 encoder from {path}: {exc}") from exc
        model.to(device).eval().requires_grad_(False)
        return cls(model, tokenizer, max_length=max_length)

    @classmethod
    def tiny(
        cls,
        cfg: TextEncoderConfig,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        init: Callable[[nn.Module], None] | None = None,
    ) -> T5TextEncoder:
        """A small T5 encoder from ``cfg.tiny_config`` with the byte-level tokenizer (no files).

        The module is created on the meta device without its random init (so no global RNG is
        touched), materialised as zeros on the CPU, and ``init`` fills every tensor in place (e.g. a
        seeded init); without ``init`` its weights are zero. Configs :mod:`.byte_t5` covers (the
        built-in ones) use its plain-torch T5 and tokenizer; others use transformers' classes.
        """
        from . import byte_t5
        from .skeleton import skeleton, zeros_

        if cfg.tiny_config is None:
            raise InvalidInputError("this text encoder is not a built-in tiny one (it has no tiny_config)")
        params = dict(cfg.tiny_config)
        own = byte_t5.supports(params)
        if own:
            config: Any = byte_t5.T5EncoderConfig(**params)
        else:
            from transformers import T5Config

            config = T5Config(**params)
        if config.d_model != cfg.width:
            raise InvalidInputError(f"tiny T5 d_model {config.d_model} differs from the configured width {cfg.width}")
        if own:
            with skeleton():
                model: Any = byte_t5.T5Encoder(config)
            zeros_(model)
        else:
            from transformers import T5EncoderModel

            with torch.device("meta"):
                model = T5EncoderModel(config)
            model.to_empty(device="cpu")
        with torch.no_grad():
            for t in [*model.parameters(), *model.buffers()]:
                t.zero_()
            if init is not None:
                init(model)
        model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        if cfg.tokenizer != "byt5":
            raise InvalidInputError(f"tiny text encoders use the byt5 tokenizer, not {cfg.tokenizer!r}")
        if own:
            tokenizer: Any = byte_t5.ByT5Tokenizer()
        else:
            from transformers import ByT5Tokenizer

            tokenizer = ByT5Tokenizer()
        return cls(model, tokenizer, max_length=cfg.max_length)

    def tokenize(self, prompts: Sequence[str]) -> Any:
        """Token ids and attention mask (CPU), with a warning for every prompt that was cut."""
        if isinstance(prompts, str) or not prompts:
            raise InvalidInputError("expected a non-empty list of prompts")
        # one token over the limit is enough to know a prompt was cut (and avoids the tokenizer's
        # own "sequence too long" log line)
        probe = self.tokenizer(list(prompts), max_length=self.max_length + 1, truncation=True)["input_ids"]
        for i, ids in enumerate(probe):
            if len(ids) > self.max_length:
                warnings.warn(
                    f"prompt {i} has more than {self.max_length} tokens; it was truncated to "
                    f"{self.max_length} (as the official pipeline does)",
                    PromptTruncatedWarning,
                    stacklevel=3,
                )
        return self.tokenizer(
            list(prompts),
            max_length=self.max_length,
            padding="max_length" if self.pad_to_max_length else "longest",
            truncation=True,
            return_tensors="pt",
        )

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> TextCond:
        """Encode prompts into float32 padded features (trimmed to the longest prompt)."""
        tokens = self.tokenize(prompts)
        ids = tokens["input_ids"].to(self.device)
        mask = tokens["attention_mask"].to(self.device)
        feats = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        lens = mask.sum(dim=-1).to(torch.int64)
        # zero the padding rows so padded batches are canonical (they are masked anyway)
        feats = feats * mask[..., None].to(feats.dtype)
        return TextCond(feats, lens).trimmed()
