"""Tiny random DINO (ViT) and CLIP models saved as local folders, in the layout of the hub repos
(no download): for the personalization metrics and `arbooth eval` tests."""

from __future__ import annotations

import json

import torch

_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_MERGES = ["d o", "do g</w>", "w a", "wa v", "wav e</w>", "c a", "ca t</w>"]


def _vocab() -> dict[str, int]:
    words = list(_LETTERS) + [c + "</w>" for c in _LETTERS] + [m.replace(" ", "") for m in _MERGES]
    return {w: i for i, w in enumerate(words + ["<|startoftext|>", "<|endoftext|>"])}


def _write_tokenizer(folder):
    """A BPE vocabulary and merges in the layout of openai/clip-vit-base-patch32 (no download)."""
    (folder / "vocab.json").write_text(json.dumps(_vocab()), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(_MERGES) + "\n", encoding="utf-8")


def save_dino(folder):
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=16), add_pooling_layer=False).save_pretrained(folder)
    return folder


def save_clip(folder, *, tokenizer=True):
    from transformers import CLIPConfig, CLIPModel

    v = _vocab()
    eos = v["<|endoftext|>"]
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(v), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=24, projection_dim=24,
                         bos_token_id=v["<|startoftext|>"], eos_token_id=eos, pad_token_id=eos),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=16, projection_dim=24),
        projection_dim=24)
    torch.manual_seed(1)
    CLIPModel(cfg).save_pretrained(folder)
    if tokenizer:
        _write_tokenizer(folder)
    return folder
