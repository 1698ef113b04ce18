"""Weight-change maths, the Pillow charts, and the feature extractors (tiny random encoders)."""

from __future__ import annotations

import math

import pytest
import torch

from arbooth_cli.analysis.features import check_features, load_features, tokenizer_features
from arbooth_cli.analysis.plots import Panel, Series, grouped_bars, labelled_grid, line_panels, nice_ticks
from arbooth_cli.analysis.weights import aggregate, compare, module_group, tensor_change
from arbooth_cli.errors import NotFoundError


@pytest.mark.parametrize("name, group", [
    ("sa.mat_qkv.weight", "self-attention"), ("block_chunks.0.module.1.sa.proj.bias", "self-attention"),
    ("ca.mat_kv.weight", "cross-attention"), ("ca_norm.weight", "cross-attention"),
    ("ffn.fc1.weight", "FFN"), ("ada_gss", "other"), ("head.weight", "other"), ("word_embed.weight", "other"),
])
def test_module_groups(name, group):
    assert module_group(name) == group


def test_tensor_change_is_the_norm_ratio_and_zero_without_change():
    w = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    ch = tensor_change("ffn.fc1.weight", w, w + torch.tensor([[0.0, 0.5], [0.0, 0.0]]), block=0, group="FFN")
    assert ch.base_norm == pytest.approx(5.0) and ch.delta_norm == pytest.approx(0.5)
    assert ch.relative == pytest.approx(0.1) and ch.numel == 4
    assert tensor_change("x", w, w.clone(), block=None, group="other").relative == 0.0
    with pytest.raises(ValueError, match="differ"):
        tensor_change("x", w, w[:1], block=None, group="other")


def test_tensor_change_compares_in_the_tuned_precision():
    """A bf16 subject over an fp32 base: the base's bf16 rounding is not a change."""
    w = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    assert tensor_change("x", w, w.to(torch.bfloat16), block=None, group="other").delta_norm == 0.0


def test_aggregate_weights_tensors_by_size():
    base = {"a": torch.full((4,), 1.0), "b": torch.full((100,), 1.0)}
    tuned = {"a": base["a"] * 1.5, "b": base["b"].clone()}
    changes = compare(base, tuned, {"a": (0, "ffn.fc1.weight"), "b": (1, "ffn.fc2.weight")})
    g = aggregate(changes, lambda c: c.group)["FFN"]
    assert g.tensors == 2 and g.numel == 104
    assert g.relative == pytest.approx(math.sqrt(4 * 0.25) / math.sqrt(104))
    assert g.mean_relative == pytest.approx(0.25)  # (0.5 + 0) / 2
    assert g.elementwise == pytest.approx(0.5 * 4 / 104, rel=1e-6)
    by_block = aggregate(changes, lambda c: c.block)
    assert by_block[0].relative == pytest.approx(0.5) and by_block[1].relative == 0.0


def test_nice_ticks_cover_the_range():
    for lo, hi in [(0, 0.25), (0, 1), (0.3, 17.2), (0, 1e-4), (2, 2)]:
        ticks = nice_ticks(lo, hi)
        assert ticks[0] <= lo and ticks[-1] >= hi and len(ticks) >= 2
        steps = {round(b - a, 12) for a, b in zip(ticks, ticks[1:])}
        assert len(steps) == 1


def test_charts_and_grid_have_the_asked_layout():
    panels = [Panel("a", "y", [Series("s", [0.1, 0.3, float("nan")], [0.01, 0.0, 0.0])]),
              Panel("b", "y", [Series("s", [1.0, 2.0, 3.0]), Series("t", [3.0, 2.0, 1.0])])]
    img = line_panels(panels, ["1\n1x1", "2\n2x2", "3\n4x4"], title="t", x_label="scale", panel_size=(300, 200))
    assert img.size == (600, 244)
    bars = grouped_bars([str(i) for i in range(40)], [Series("a", [i / 40 for i in range(40)])],
                        title="t", y_label="y", x_label="block")
    assert bars.width >= 640 and bars.mode == "RGB"
    from PIL import Image

    tiles = [[Image.new("RGB", (32, 16), "red")] * 3] * 2
    grid = labelled_grid(tiles, ["reference", "scale 1\n1x1"], ["a", "b", "c"], thumb=64)
    assert grid.height > 2 * 32 and grid.width > 3 * 64


def test_tokenizer_features_of_the_tiny_model():
    from arbooth_cli.models.build import build_components
    from arbooth_cli.specs.tiny import TINY_INFINITY

    vae = build_components(TINY_INFINITY, device=torch.device("cpu"), dtype=torch.float32, weights={},
                           roles=("vae",)).vae
    fx = load_features("auto", weights=None, vae=vae, device=torch.device("cpu"))  # nothing cached: tokenizer
    assert fx.kind == "tokenizer" and fx is not None
    img = torch.randint(0, 256, (2, 3, 96, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    f = tokenizer_features(vae)(img)
    assert f.shape[0] == 2 and f.ndim == 2 and torch.isfinite(f).all()
    one = tokenizer_features(vae)(img[:1])
    assert torch.equal(one, tokenizer_features(vae)(img[:1])) and torch.allclose(f[:1], one, atol=1e-5)


def _save_tiny_vit(folder):
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=16), add_pooling_layer=False).save_pretrained(folder)
    return folder


def _save_tiny_clip(folder):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                   num_attention_heads=2, image_size=32, patch_size=16,
                                                   projection_dim=24)).save_pretrained(folder)
    return folder


def test_dino_and_clip_features_from_local_folders(tmp_path):
    img = torch.randint(0, 256, (3, 3, 48, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    dino = load_features("dino", weights=str(_save_tiny_vit(tmp_path / "dino")), vae=None, device=torch.device("cpu"))
    assert dino.kind == "dino" and "DINO" in dino.name and str(tmp_path / "dino") in dino.name
    assert dino(img).shape == (3, 32)
    clip = load_features("auto", weights=str(_save_tiny_clip(tmp_path / "clip")), vae=None,
                         device=torch.device("cpu"))
    assert clip.kind == "clip" and clip(img).shape == (3, 24)


def test_missing_feature_weights_fail_early(tmp_path):
    with pytest.raises(NotFoundError, match="DINO ViT-S/16"):
        check_features("dino", None)
    with pytest.raises(NotFoundError, match="CLIP ViT-B/32"):
        check_features("clip", None)
    with pytest.raises(NotFoundError, match="no .* weights at"):
        check_features("dino", str(tmp_path))
    check_features("auto", None)  # falls back to the tokenizer's features
    check_features("tokenizer", None)
