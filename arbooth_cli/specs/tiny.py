"""Tiny Infinity-shaped specs whose weights are made in code: tests and demos run on a CPU in seconds.

They have the same components and code paths as the real models (bitwise tokenizer, RoPE,
cross-attention, shared AdaLN), only narrow and shallow. Weights come from a seeded init, so they
need no files; the text encoder is a 2-layer T5 with a byte-level tokenizer, which can spell any
new identifier such as ``sks``.
"""

from __future__ import annotations

from ..modelspec import (
    ModelSpec,
    RegisterFn,
    SamplingDefaults,
    TextEncoderConfig,
    TransformerConfig,
    VAEConfig,
)

TINY_TEXT = TextEncoderConfig(
    repo_id=None,
    width=64,
    max_length=64,
    tokenizer="byt5",
    tiny_config=(
        ("vocab_size", 384),
        ("d_model", 64),
        ("d_kv", 16),
        ("d_ff", 128),
        ("num_layers", 2),
        ("num_heads", 4),
        ("feed_forward_proj", "gated-gelu"),
    ),
)

TINY_INFINITY = ModelSpec(
    name="tiny-infinity",
    family="infinity",
    description="a tiny random Infinity-shaped model (2 blocks, width 64) for tests and demos",
    transformer=TransformerConfig(
        depth=2,
        embed_dim=64,
        num_heads=2,
        block_chunks=2,
        bits=8,
        text_channels=64,
        text_maxlen=64,
        pool_head_width=32,
    ),
    vae=VAEConfig(
        bits=8,
        base_channels=16,
        ch_mult=(1, 1, 2, 2, 2),
        encoder_blocks=1,
        decoder_blocks=1,
        norm_groups=8,
    ),
    text_encoder=TINY_TEXT,
    sampling=SamplingDefaults(cfg=3.0, tau=1.0, top_p=0.97, size="tiny"),
    sizes=("tiny",),
    num_scales=4,
    license="MIT",
    source="built in",
    builtin_weights=True,
)


def register_models(register: RegisterFn) -> None:
    register(TINY_INFINITY)
