"""The tiny text encoders' T5 and byte tokenizer, in plain torch: no ``transformers`` import.

The built-in tiny text encoders (the toy model's, tiny-infinity's) are small T5 encoders that read
UTF-8 bytes. ``transformers`` builds them too, but importing its T5 modeling code imports
``torch._dynamo``, ``torch.distributed.tensor`` and sympy: about 1.5 s of a 64x64 toy image on a
2-core CPU. This module computes the same thing with the same torch calls in the same order (those
of transformers 5.25's ``modeling_t5`` with SDPA attention; a transformers whose T5 computes its
attention otherwise rounds differently), so its outputs no longer depend on the installed transformers:

* :class:`T5Encoder` is ``transformers.T5EncoderModel`` restricted to what a tiny config sets
  (its SDPA attention path, the ``relu`` and ``gated-gelu`` feed-forwards): the same parameter
  names, shapes and registration order (so bundles, seeded inits and state dicts are unchanged) and
  bit-identical outputs, which ``tests/model/test_text_encoder.py`` checks against transformers.
* :class:`ByT5Tokenizer` gives the ids and masks of ``transformers.ByT5Tokenizer`` for the calls
  :class:`.text_encoder.T5TextEncoder` makes. Text holding one of ByT5's special token strings
  (``</s>``, ``<pad>``, ``<unk>``, ``<extra_id_N>``), and any other call, goes to the transformers
  tokenizer itself, built on first use.

:func:`supports` says whether a tiny config is one of these; others use ``transformers``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class T5EncoderConfig:
    """The fields of ``transformers.T5Config`` an encoder uses, with T5Config's defaults."""

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"

    @property
    def is_gated_act(self) -> bool:
        return self.feed_forward_proj.split("-")[0] == "gated"

    @property
    def dense_act_fn(self) -> str:
        # T5Config: the part after "gated-", and "gelu_new" for "gated-gelu" (backwards compatibility)
        return "gelu_new" if self.feed_forward_proj == "gated-gelu" else self.feed_forward_proj.split("-")[-1]


#: the feed-forwards built here (others: transformers)
_FEED_FORWARDS = ("relu", "gated-gelu")


def supports(tiny_config: Mapping[str, Any]) -> bool:
    """True when every key of ``tiny_config`` is a :class:`T5EncoderConfig` field and its feed-forward
    is one this module builds."""
    fields = T5EncoderConfig.__dataclass_fields__
    return set(tiny_config) <= set(fields) and tiny_config.get("feed_forward_proj", "relu") in _FEED_FORWARDS


# ---------------------------------------------------------------------------------------------
# the encoder (transformers.models.t5.modeling_t5, encoder side, SDPA attention)
# ---------------------------------------------------------------------------------------------


class T5LayerNorm(nn.Module):
    """RMS norm, no bias; statistics in float32, as T5's."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: Tensor) -> Tensor:
        variance = hidden_states.to(torch.float32).pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        if self.weight.dtype in [torch.float16, torch.bfloat16]:
            hidden_states = hidden_states.to(self.weight.dtype)
        return self.weight * hidden_states


class NewGELU(nn.Module):
    """transformers' ``gelu_new`` (the tanh approximation, written out)."""

    def forward(self, input: Tensor) -> Tensor:
        return 0.5 * input * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (input + 0.044715 * torch.pow(input, 3.0))))


def _activation(name: str) -> nn.Module:
    return NewGELU() if name == "gelu_new" else nn.ReLU()


def _to_wo_dtype(hidden_states: Tensor, wo: nn.Linear) -> Tensor:
    if isinstance(wo.weight, Tensor) and hidden_states.dtype != wo.weight.dtype and wo.weight.dtype != torch.int8:
        hidden_states = hidden_states.to(wo.weight.dtype)
    return hidden_states


class T5DenseActDense(nn.Module):
    def __init__(self, config: T5EncoderConfig) -> None:
        super().__init__()
        self.wi = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)
        self.dropout = nn.Dropout(config.dropout_rate)
        self.act = _activation(config.dense_act_fn)

    def forward(self, hidden_states: Tensor) -> Tensor:
        hidden_states = self.wi(hidden_states)
        hidden_states = self.act(hidden_states)
        hidden_states = self.dropout(hidden_states)
        return self.wo(_to_wo_dtype(hidden_states, self.wo))


class T5DenseGatedActDense(nn.Module):
    def __init__(self, config: T5EncoderConfig) -> None:
        super().__init__()
        self.wi_0 = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wi_1 = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)
        self.dropout = nn.Dropout(config.dropout_rate)
        self.act = _activation(config.dense_act_fn)

    def forward(self, hidden_states: Tensor) -> Tensor:
        hidden_gelu = self.act(self.wi_0(hidden_states))
        hidden_linear = self.wi_1(hidden_states)
        hidden_states = hidden_gelu * hidden_linear
        hidden_states = self.dropout(hidden_states)
        return self.wo(_to_wo_dtype(hidden_states, self.wo))


class T5LayerFF(nn.Module):
    def __init__(self, config: T5EncoderConfig) -> None:
        super().__init__()
        self.DenseReluDense = T5DenseGatedActDense(config) if config.is_gated_act else T5DenseActDense(config)
        self.layer_norm = T5LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, hidden_states: Tensor) -> Tensor:
        forwarded_states = self.layer_norm(hidden_states)
        forwarded_states = self.DenseReluDense(forwarded_states)
        return hidden_states + self.dropout(forwarded_states)


def _relative_position_bucket(relative_position: Tensor, num_buckets: int, max_distance: int) -> Tensor:
    """T5's bidirectional bucketing of key - query offsets."""
    relative_buckets = 0
    num_buckets //= 2
    relative_buckets += (relative_position > 0).to(torch.long) * num_buckets
    relative_position = torch.abs(relative_position)
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    relative_position_if_large = max_exact + (
        torch.log(relative_position.float() / max_exact)
        / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).to(torch.long)
    relative_position_if_large = torch.min(
        relative_position_if_large, torch.full_like(relative_position_if_large, num_buckets - 1)
    )
    relative_buckets += torch.where(is_small, relative_position, relative_position_if_large)
    return relative_buckets


class T5Attention(nn.Module):
    """Unscaled self-attention with T5's relative position bias (computed by the first layer)."""

    def __init__(self, config: T5EncoderConfig, has_relative_attention_bias: bool = False) -> None:
        super().__init__()
        self.has_relative_attention_bias = has_relative_attention_bias
        self.relative_attention_num_buckets = config.relative_attention_num_buckets
        self.relative_attention_max_distance = config.relative_attention_max_distance
        self.key_value_proj_dim = config.d_kv
        self.n_heads = config.num_heads
        self.dropout = config.dropout_rate
        inner_dim = self.n_heads * self.key_value_proj_dim
        self.q = nn.Linear(config.d_model, inner_dim, bias=False)
        self.k = nn.Linear(config.d_model, inner_dim, bias=False)
        self.v = nn.Linear(config.d_model, inner_dim, bias=False)
        self.o = nn.Linear(inner_dim, config.d_model, bias=False)
        if has_relative_attention_bias:
            self.relative_attention_bias = nn.Embedding(self.relative_attention_num_buckets, self.n_heads)

    def compute_bias(self, query_length: int, key_length: int, device: torch.device) -> Tensor:
        """(1, heads, query_length, key_length) position bias."""
        context_position = torch.arange(query_length, dtype=torch.long, device=device)[:, None]
        memory_position = torch.arange(key_length, dtype=torch.long, device=device)[None, :]
        relative_position = memory_position - context_position
        bucket = _relative_position_bucket(
            relative_position, self.relative_attention_num_buckets, self.relative_attention_max_distance
        )
        values = self.relative_attention_bias(bucket)
        return values.permute([2, 0, 1]).unsqueeze(0)

    def forward(self, hidden_states: Tensor, mask: Tensor | None, position_bias: Tensor | None) -> tuple[Tensor, Tensor]:
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.key_value_proj_dim)
        query_states = self.q(hidden_states).view(hidden_shape).transpose(1, 2)
        key_states = self.k(hidden_states).view(hidden_shape).transpose(1, 2)
        value_states = self.v(hidden_states).view(hidden_shape).transpose(1, 2)
        if position_bias is None:
            key_length = key_states.shape[-2]
            if self.has_relative_attention_bias:
                position_bias = self.compute_bias(input_shape[1], key_length, device=query_states.device)
            else:
                position_bias = torch.zeros(
                    (1, self.n_heads, input_shape[1], key_length), device=query_states.device, dtype=query_states.dtype
                )
        # transformers' sdpa_attention_forward: the bias, with the padded keys at the dtype's minimum
        if mask is None:
            bias_mask = position_bias
        else:
            min_dtype = max(torch.finfo(key_states.dtype).min, torch.finfo(position_bias.dtype).min)
            bias_mask = torch.where(mask, position_bias, min_dtype)
        q_length = query_states.shape[2]
        attn_output = nn.functional.scaled_dot_product_attention(
            query_states,
            key_states,
            value_states,
            attn_mask=bias_mask.contiguous(),
            dropout_p=0.0 if not self.training else self.dropout,
            scale=1.0,
            is_causal=False,
        )
        attn_output = attn_output.reshape(attn_output.shape[0], -1, q_length, value_states.shape[-1])
        attn_output = attn_output.transpose(1, 2).contiguous()
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return self.o(attn_output), position_bias


class T5LayerSelfAttention(nn.Module):
    def __init__(self, config: T5EncoderConfig, has_relative_attention_bias: bool = False) -> None:
        super().__init__()
        self.SelfAttention = T5Attention(config, has_relative_attention_bias=has_relative_attention_bias)
        self.layer_norm = T5LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, hidden_states: Tensor, mask: Tensor | None, position_bias: Tensor | None) -> tuple[Tensor, Tensor]:
        normed_hidden_states = self.layer_norm(hidden_states)
        attention_output, position_bias = self.SelfAttention(normed_hidden_states, mask, position_bias)
        return hidden_states + self.dropout(attention_output), position_bias


def _clamp_fp16(hidden_states: Tensor) -> Tensor:
    # T5Block: clamp inf values to enable fp16 training
    if hidden_states.dtype == torch.float16:
        clamp_value = torch.where(
            torch.isinf(hidden_states).any(),
            torch.finfo(hidden_states.dtype).max - 1000,
            torch.finfo(hidden_states.dtype).max,
        )
        hidden_states = torch.clamp(hidden_states, min=-clamp_value, max=clamp_value)
    return hidden_states


class T5Block(nn.Module):
    def __init__(self, config: T5EncoderConfig, has_relative_attention_bias: bool = False) -> None:
        super().__init__()
        self.layer = nn.ModuleList(
            [T5LayerSelfAttention(config, has_relative_attention_bias=has_relative_attention_bias), T5LayerFF(config)]
        )

    def forward(self, hidden_states: Tensor, mask: Tensor | None, position_bias: Tensor | None) -> tuple[Tensor, Tensor]:
        hidden_states, position_bias = self.layer[0](hidden_states, mask, position_bias)
        hidden_states = _clamp_fp16(hidden_states)
        hidden_states = _clamp_fp16(self.layer[-1](hidden_states))
        return hidden_states, position_bias


class T5Stack(nn.Module):
    def __init__(self, config: T5EncoderConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.block = nn.ModuleList(
            [T5Block(config, has_relative_attention_bias=i == 0) for i in range(config.num_layers)]
        )
        self.final_layer_norm = T5LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        inputs_embeds = self.embed_tokens(input_ids)
        mask = None
        if attention_mask is not None:
            # transformers' create_bidirectional_mask (SDPA): no mask when no key is padding, else
            # a boolean (B, 1, Q, K) mask of the real keys
            keys = attention_mask.to(device=inputs_embeds.device, dtype=torch.bool)
            if not keys.all():
                B, Q = inputs_embeds.shape[:2]
                mask = keys[:, None, None, :].expand(B, 1, Q, keys.shape[-1])
        position_bias = None
        hidden_states = self.dropout(inputs_embeds)
        for layer_module in self.block:
            hidden_states, position_bias = layer_module(hidden_states, mask, position_bias)
        hidden_states = self.final_layer_norm(hidden_states)
        return self.dropout(hidden_states)


class EncoderOutput(NamedTuple):
    last_hidden_state: Tensor


class T5Encoder(nn.Module):
    """``transformers.T5EncoderModel`` for tiny configs: same state dict, same outputs.

    ``shared`` is registered (and stored in bundles) as in transformers; the encoder reads its own
    ``encoder.embed_tokens``.
    """

    def __init__(self, config: T5EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = T5Stack(config)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.shared

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> EncoderOutput:
        return EncoderOutput(self.encoder(input_ids, attention_mask))


# ---------------------------------------------------------------------------------------------
# the byte tokenizer
# ---------------------------------------------------------------------------------------------


class ByT5Tokenizer:
    """``transformers.ByT5Tokenizer`` for plain text: a token per UTF-8 byte (id = byte + 3), then
    ``</s>`` (1); padding is 0, on the right.

    Handles ``tok(texts, max_length=n, truncation=True, padding=False | "longest" | "max_length",
    return_tensors=None | "pt")``; text holding a special token string, and any other call, go to
    transformers' tokenizer.
    """

    pad_token_id = 0
    eos_token_id = 1
    unk_token_id = 2
    offset = 3
    is_fast = False
    #: every special token of ByT5 starts with one of these (checked against transformers in the tests)
    SPECIAL_PREFIXES = ("<pad>", "</s>", "<unk>", "<extra_id_")

    def __init__(self) -> None:
        self._reference: Any = None

    def _transformers(self) -> Any:
        if self._reference is None:
            from transformers import ByT5Tokenizer as Reference

            self._reference = Reference()
        return self._reference

    def __call__(
        self,
        text: str | Sequence[str],
        *,
        max_length: int | None = None,
        truncation: bool | str = False,
        padding: bool | str = False,
        return_tensors: str | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        texts = [text] if isinstance(text, str) else list(text)
        mode = {False: None, "longest": "longest", "max_length": "max_length"}.get(padding, "other")  # type: ignore[call-overload]
        fast = (
            not kwargs
            and texts
            and all(isinstance(t, str) and not any(s in t for s in self.SPECIAL_PREFIXES) for t in texts)
            and truncation is True
            and isinstance(max_length, int) and max_length >= 1
            and mode != "other"
            and return_tensors in (None, "pt")
            and not (return_tensors == "pt" and mode is None)
        )
        if not fast:
            return dict(self._transformers()(text, max_length=max_length, truncation=truncation, padding=padding,
                                             return_tensors=return_tensors, **kwargs))
        # truncation keeps max_length - 1 bytes and the </s>
        ids = [[*(b + self.offset for b in t.encode("utf-8")[: max_length - 1]), self.eos_token_id] for t in texts]
        width = max_length if mode == "max_length" else max(len(i) for i in ids) if mode == "longest" else 0
        masks = [[1] * len(i) + [0] * (width - len(i)) for i in ids]
        ids = [i + [self.pad_token_id] * (width - len(i)) for i in ids]
        if return_tensors == "pt":
            return {"input_ids": torch.tensor(ids, dtype=torch.int64), "attention_mask": torch.tensor(masks, dtype=torch.int64)}
        if isinstance(text, str):
            return {"input_ids": ids[0], "attention_mask": masks[0]}
        return {"input_ids": ids, "attention_mask": masks}
