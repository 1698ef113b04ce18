"""FoundationVision Infinity checkpoints (MIT). Facts: docs/models.md and the hub model card."""

from __future__ import annotations

from ..modelspec import (
    FastPreset,
    FileSpec,
    ModelSpec,
    RegisterFn,
    SamplingDefaults,
    TextEncoderConfig,
    TransformerConfig,
    VAEConfig,
)

HUB_REPO = "FoundationVision/Infinity"
SOURCE = "https://github.com/FoundationVision/Infinity"

#: flan-t5-xl, encoder only is used; Apache-2.0. Shared by every Infinity model.
FLAN_T5_XL = TextEncoderConfig(repo_id="google/flan-t5-xl", width=2048, max_length=512, tokenizer="t5")

#: gen --fast: FastVAR's released Infinity setting (the last two scales skipped, the two before
#: pruned 40% and 50%); measured at 1M, docs/sampling.md
FASTVAR_PRESET = FastPreset(skip_last=2, prune_from_end=((4, 0.4), (3, 0.5)))

_T5_FILE = FileSpec(
    role="text_encoder",
    kind="hf-dir",
    repo_id="google/flan-t5-xl",
    filename="",
    include=(
        "config.json",
        "spiece.model",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "model*.safetensors",
        "model.safetensors.index.json",
    ),
    match=("*t5*",),
)

# Where the plain state dict sits inside the official pickles: top level for slim transformer files,
# under 'trainer'/'gpt_fsdp' for training checkpoints, under 'vae' (or 'ema') for tokenizers.
_TRANSFORMER_KEYS = ((), ("trainer", "gpt_fsdp"), ("model",), ("state_dict",))
_VAE_KEYS = (("vae",), ("ema",), ())

INFINITY_2B = ModelSpec(
    name="infinity-2b",
    family="infinity",
    description="Infinity 2B text-to-image, bitwise next-scale prediction, up to 1024x1024",
    transformer=TransformerConfig(depth=32, embed_dim=2048, num_heads=16, block_chunks=8, bits=32),
    vae=VAEConfig(bits=32, ch_mult=(1, 2, 4, 4, 4)),
    text_encoder=FLAN_T5_XL,
    files=(
        FileSpec(
            role="transformer",
            kind="pth",
            repo_id=HUB_REPO,
            filename="infinity_2b_reg.pth",
            size_hint=8_820_000_000,
            state_dict_keys=_TRANSFORMER_KEYS,
            match=("infinity_2b*",),
        ),
        FileSpec(
            role="vae",
            kind="pth",
            repo_id=HUB_REPO,
            filename="infinity_vae_d32reg.pth",
            size_hint=1_560_000_000,
            state_dict_keys=_VAE_KEYS,
            match=("infinity_vae_d32*",),
        ),
        _T5_FILE,
    ),
    # --fast: 0.147 s an image at 1024x1024 against 0.296 s exact, 8.98 img/s at batch 8 (H200)
    sampling=SamplingDefaults(cfg=3.0, tau=0.5, top_p=0.97, size="1M", fast=FASTVAR_PRESET),
    license="MIT (weights and code); flan-t5-xl: Apache-2.0",
    source=SOURCE,
)

INFINITY_8B = ModelSpec(
    name="infinity-8b",
    family="infinity",
    description="Infinity 8B text-to-image with the d56 patchify tokenizer, up to 1024x1024",
    transformer=TransformerConfig(depth=40, embed_dim=3584, num_heads=28, block_chunks=8, bits=56),
    vae=VAEConfig(bits=14, ch_mult=(1, 2, 4, 4), spatial_patchify=True),
    text_encoder=FLAN_T5_XL,
    files=(
        FileSpec(
            role="transformer",
            kind="safetensors-index",
            repo_id=HUB_REPO,
            filename="infinity_8b_weights/model.safetensors.index.json",
            size_hint=33_500_000_000,
            match=("infinity_8b_weights*", "model.safetensors.index.json"),
        ),
        FileSpec(
            role="vae",
            kind="pth",
            repo_id=HUB_REPO,
            filename="infinity_vae_d56_f8_14_patchify.pth",
            size_hint=1_220_000_000,
            state_dict_keys=_VAE_KEYS,
            match=("infinity_vae_d56*",),
        ),
        _T5_FILE,
    ),
    # --fast: infinity-2b's (FastVAR released none for 8B): 0.327 s an image at 1024x1024 against
    # 0.799 s exact (H100); scales 0-8 drawn bit for bit as exact
    sampling=SamplingDefaults(cfg=3.0, tau=1.0, top_p=0.97, size="1M", fast=FASTVAR_PRESET),
    license="MIT (weights and code); flan-t5-xl: Apache-2.0",
    source=SOURCE,
)


def register_models(register: RegisterFn) -> None:
    register(INFINITY_2B)
    register(INFINITY_8B)
