from dataclasses import replace

import pytest

from arbooth_cli.errors import PluginError, UnknownModelError
from arbooth_cli.registry import ModelRegistry, default_registry, get_spec


def test_builtin_specs_carry_the_official_hyper_parameters():
    two, eight = get_spec("infinity-2b"), get_spec("infinity-8b")
    assert (two.transformer.depth, two.transformer.embed_dim, two.transformer.num_heads) == (32, 2048, 16)
    assert two.transformer.ffn_hidden == 8192 and two.transformer.head_dim == 128
    assert two.transformer.pool_heads == 16 and two.transformer.vocab == 64
    assert (eight.transformer.depth, eight.transformer.embed_dim, eight.transformer.ffn_hidden) == (40, 3584, 14336)
    assert eight.vae.spatial_patchify and eight.vae.transformer_bits == 56 and eight.vae.token_stride == 16
    assert two.vae.token_stride == 16
    assert {f.role for f in two.files} == {"transformer", "vae", "text_encoder"}
    assert two.file("transformer").filename == "infinity_2b_reg.pth"
    assert eight.file("transformer").kind == "safetensors-index"
    assert two.text_encoder.repo_id == "google/flan-t5-xl"
    assert get_spec("tiny-infinity").builtin_weights and not get_spec("tiny-infinity").requires_files


def test_unknown_names_suggest_close_ones():
    with pytest.raises(UnknownModelError) as err:
        get_spec("infinty-2b")
    assert err.value.suggestions[0] == "infinity-2b"
    assert isinstance(err.value, KeyError) and err.value.exit_code == 3
    with pytest.raises(UnknownModelError) as err:
        get_spec("zzzzzz")
    assert err.value.suggestions == []


def test_register_refuses_duplicates_and_inconsistent_specs():
    reg = ModelRegistry()
    spec = get_spec("tiny-infinity")
    reg.register(spec)
    with pytest.raises(PluginError, match="twice"):
        reg.register(spec)
    bad = replace(spec, name="bad", transformer=replace(spec.transformer, num_heads=3))
    with pytest.raises(PluginError, match="divisible"):
        reg.register(bad)
    mismatched = replace(spec, name="bad2", vae=replace(spec.vae, bits=16))
    with pytest.raises(PluginError, match="bits per token"):
        reg.register(mismatched)


def test_specs_are_frozen_and_serialisable():
    spec = get_spec("infinity-2b")
    with pytest.raises(AttributeError):
        spec.name = "x"  # type: ignore[misc]
    d = spec.to_dict()
    assert d["transformer"]["depth"] == 32 and d["files"][0]["role"] == "transformer"
    assert default_registry().names() == ["infinity-2b", "infinity-8b", "tiny-infinity", "toy"]


def test_the_fast_presets_resolve_against_the_schedule():
    """--fast: infinity-2b's preset is FastVAR's released setting at 1M (13 scales: skip 11 and 12,
    prune 9 and 10), and infinity-8b's the same; toy's stops guidance two scales before the end."""
    from arbooth_cli.registry import get_spec

    assert get_spec("infinity-2b").sampling.fast.resolve(13) == {
        "skip_scales": 2, "cfg_until_scale": None, "prune": ((9, 0.4), (10, 0.5))}
    assert get_spec("toy").sampling.fast.resolve(5) == {"skip_scales": 0, "cfg_until_scale": 3, "prune": ()}
    assert get_spec("infinity-8b").sampling.fast == get_spec("infinity-2b").sampling.fast
