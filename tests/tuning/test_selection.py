import pytest

from arbooth_cli.models.build import build_transformer
from arbooth_cli.specs.tiny import TINY_INFINITY
from arbooth_cli.tuning.selection import parse_blocks, parse_layers, select_params

import torch


@pytest.fixture(scope="module")
def model():
    return build_transformer(TINY_INFINITY.transformer, generator=torch.Generator().manual_seed(0))


def test_default_selection_is_cross_attention_and_ffn_of_every_block(model):
    names = select_params(model, model.blocks)
    assert names and all((".ca." in n or ".ffn." in n) for n in names)
    assert not any("ca_norm" in n or ".sa." in n or "ada_gss" in n for n in names)
    per_block = {n.split(".")[1] + "." + n.split(".")[3] for n in names}
    assert len(per_block) == TINY_INFINITY.transformer.depth
    expected_leaves = {"ca.mat_q.weight", "ca.mat_q.bias", "ca.mat_kv.weight", "ca.v_bias", "ca.proj.weight",
                       "ca.proj.bias", "ffn.fc1.weight", "ffn.fc1.bias", "ffn.fc2.weight", "ffn.fc2.bias"}
    leaves = {".".join(n.split(".")[4:]) for n in names}
    assert leaves == expected_leaves
    assert all(n in dict(model.named_parameters()) for n in names)


def test_block_range_and_types(model):
    only_first = select_params(model, model.blocks, ("sa",), blocks=[0])
    assert only_first and all(n.startswith("block_chunks.0.module.0.sa.") for n in only_first)
    assert parse_layers("ca,ffn") == ("ca", "ffn")
    assert "ada" in parse_layers("all")
    assert parse_blocks("0-2,5", 8) == (0, 1, 2, 5)
    assert parse_blocks("all", 3) == (0, 1, 2)
    for bad in ("x", "0-9"):
        with pytest.raises(ValueError):
            parse_blocks(bad, 8)
    with pytest.raises(ValueError, match="unknown layer types"):
        parse_layers("attn")
