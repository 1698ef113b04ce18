"""Building components: expected shapes, seeded init, strict streaming loads and their errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from arbooth_cli.errors import CheckpointError, ModelFilesError, UnsafeCheckpointError
from arbooth_cli.models.build import (
    build_components,
    build_transformer,
    build_vae,
    check_tensor_shapes,
    expected_tensors,
    read_tensor_shapes,
    transformer_tensor_shapes,
    validate_checkpoint,
    vae_tensor_shapes,
)
from arbooth_cli.models.bsq_vae import BSQVAE
from arbooth_cli.models.schedules import get_schedule
from arbooth_cli.specs.infinity import INFINITY_2B, INFINITY_8B
from arbooth_cli.specs.tiny import TINY_INFINITY
from arbooth_cli.models.transformer import InfinityTransformer

DATA = Path(__file__).parent / "data"
SCALES = get_schedule(num_scales=4).scales


@pytest.fixture(scope="module")
def tiny():
    return build_components(TINY_INFINITY, seed=0)


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def save(tensors: dict[str, torch.Tensor], path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


# ---- expected names and shapes without building ------------------------------------------------


def _table(name: str) -> dict[str, tuple[int, ...]]:
    raw = json.loads((DATA / name).read_text())
    return {k: tuple(v) for k, v in raw.get("keys", raw).items()}


def test_expected_tensors_match_official_tables() -> None:
    for spec, tf_table, vae_table in [
        (INFINITY_2B, "infinity-2b-state-dict.json", "vae-d32-state-dict.json"),
        (INFINITY_8B, "infinity-8b-state-dict.json", "vae-d56-patchify-state-dict.json"),
    ]:
        exp = expected_tensors(spec)
        assert exp["transformer"] == _table(tf_table)
        assert exp["vae"] == _table(vae_table)


def test_expected_tensors_match_the_modules() -> None:
    cfgs = [TINY_INFINITY, dataclasses.replace(TINY_INFINITY, vae=dataclasses.replace(TINY_INFINITY.vae, encoder_blocks=3, ch_mult=(1, 2)))]
    for spec in cfgs:
        with torch.device("meta"):
            t, v = InfinityTransformer(spec.transformer), BSQVAE(spec.vae)
        assert {k: tuple(x.shape) for k, x in t.state_dict().items()} == transformer_tensor_shapes(spec.transformer)
        assert {k: tuple(x.shape) for k, x in v.state_dict().items()} == vae_tensor_shapes(spec.vae)


def test_8b_weights_for_the_2b_spec_are_named() -> None:
    with pytest.raises(CheckpointError) as err:
        check_tensor_shapes("transformer file", _table("infinity-8b-state-dict.json"), expected_tensors(INFINITY_2B)["transformer"])
    msg = str(err.value)
    assert "a transformer of width 3584 with 56 bits per token, the model has width 2048 and 32 bits" in msg
    assert "head.weight (file [112, 3584], expected [64, 2048])" in msg
    assert "unexpected: block_chunks.0.module.4." in msg  # 5 blocks per chunk in 8B, 4 in 2B


# ---- seeded init --------------------------------------------------------------------------------


def test_seeded_init_is_deterministic(tiny) -> None:
    again = build_components(TINY_INFINITY, seed=0)
    for a, b in [(tiny.transformer, again.transformer), (tiny.vae, again.vae), (tiny.text_encoder.model, again.text_encoder.model)]:
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    other = build_transformer(TINY_INFINITY.transformer, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(other.head.weight, tiny.transformer.head.weight)


def test_seeded_init_golden_numbers(tiny) -> None:
    # float64 uniform draws cast to float32: identical on every machine and thread count
    t, v, te = tiny.transformer, tiny.vae, tiny.text_encoder.model
    assert t.pos_start[0, 0, :3].tolist() == GOLDEN["pos_start"]
    assert t.head.weight[0, :3].tolist() == GOLDEN["head.weight"]
    assert t.blocks[1].sa.scale_mul_1H11.flatten().tolist() == GOLDEN["scale_mul"]
    assert v.encoder.conv_in.conv.weight.flatten()[:3].tolist() == GOLDEN["vae.conv_in"]
    assert te.shared.weight[0, :3].tolist() == GOLDEN["t5.shared"]
    assert t.blocks[0].sa.zero_k_bias.abs().sum() == 0
    assert v.quantizer.lfq.mask.tolist() == [128, 64, 32, 16, 8, 4, 2, 1]
    # and the model's output on a fixed input (float maths: a tolerance, not bytes)
    text = tiny.text_encoder.encode(["a photo of sks dog"])
    x = torch.linspace(-1, 1, 56 * 8).reshape(1, 56, 8)
    with torch.no_grad():
        logits = t(text, x, SCALES)
    torch.testing.assert_close(logits[0, [0, 10, 56], :4], torch.tensor(GOLDEN["logits"]), rtol=1e-4, atol=1e-4)


GOLDEN = {
    "pos_start": [0.15875715017318726, 0.028094492852687836, 0.11215609312057495],
    "head.weight": [0.16276195645332336, 0.15212881565093994, -0.047738298773765564],
    "scale_mul": [1.3528825044631958, 1.4270802736282349],
    "vae.conv_in": [-0.2926311492919922, -0.1836303323507309, -0.1771649867296219],
    "t5.shared": [0.18080906569957733, -0.17454083263874054, 0.09039191156625748],
    "logits": [[0.58782, -0.31887, 0.5159, -2.85541], [-0.76145, 0.43456, -0.29136, -2.87011], [0.7266, -0.88889, 1.29672, -0.72521]],
}


def test_dtypes(tiny) -> None:
    c = build_components(TINY_INFINITY, dtype=torch.bfloat16, roles=("transformer",))
    assert c.vae is None and c.text_encoder is None
    t = c.transformer
    assert t.blocks[0].sa.mat_qkv.weight.dtype == torch.bfloat16
    assert t.blocks[0].sa.zero_k_bias.dtype == torch.bfloat16
    assert t.head.weight.dtype == torch.float32 and t.blocks[0].ada_gss.dtype == torch.float32
    assert not any(p.requires_grad for p in t.parameters()) and not t.training
    # same seeded values, rounded
    torch.testing.assert_close(t.blocks[0].ffn.fc1.weight.float(), tiny.transformer.blocks[0].ffn.fc1.weight, rtol=1e-2, atol=1e-2)


# ---- strict loading -----------------------------------------------------------------------------


def test_round_trip_through_safetensors(tiny, tmp_path) -> None:
    files = {
        "transformer": save(state(tiny.transformer), tmp_path / "t.safetensors"),
        "vae": save(state(tiny.vae), tmp_path / "v.safetensors"),
    }
    loaded = build_components(TINY_INFINITY, weights=files, roles=("transformer", "vae"), seed=123)
    for a, b in [(loaded.transformer, tiny.transformer), (loaded.vae, tiny.vae)]:
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sb)
    validate_checkpoint(TINY_INFINITY, "vae", files["vae"])
    assert read_tensor_shapes(files["transformer"]) == transformer_tensor_shapes(TINY_INFINITY.transformer)


def test_missing_unexpected_and_misshaped_tensors_are_named(tiny, tmp_path) -> None:
    sd = state(tiny.transformer)
    cfg = TINY_INFINITY.transformer

    bad = dict(sd)
    del bad["block_chunks.1.module.0.ffn.fc2.bias"]
    with pytest.raises(CheckpointError, match=r"1 missing: block_chunks\.1\.module\.0\.ffn\.fc2\.bias"):
        build_transformer(cfg, weights=save(bad, tmp_path / "missing.safetensors"))

    bad = dict(sd, **{"extra.weight": torch.zeros(3)})
    with pytest.raises(CheckpointError, match=r"1 unexpected: extra\.weight"):
        build_transformer(cfg, weights=save(bad, tmp_path / "extra.safetensors"))

    bad = dict(sd, **{"head.weight": torch.zeros(16, 32)})
    with pytest.raises(CheckpointError, match=r"head\.weight \(file \[16, 32\], expected \[16, 64\]\)"):
        build_transformer(cfg, weights=save(bad, tmp_path / "shape.safetensors"))

    # a VAE of another width
    wide = build_vae(dataclasses.replace(TINY_INFINITY.vae, bits=16), generator=torch.Generator().manual_seed(0))
    with pytest.raises(CheckpointError, match=r"encoder\.conv_out\.conv\.weight \(file \[16, 32, 3, 3\], expected \[8, 32, 3, 3\]\)"):
        build_vae(TINY_INFINITY.vae, weights=save(state(wide), tmp_path / "wide.safetensors"))


def test_constant_buffers_may_be_absent(tiny, tmp_path) -> None:
    sd = {k: v for k, v in state(tiny.transformer).items() if not k.endswith("zero_k_bias")}
    t = build_transformer(TINY_INFINITY.transformer, weights=save(sd, tmp_path / "nobuf.safetensors"))
    assert t.blocks[1].ca.zero_k_bias.abs().sum() == 0 and not t.blocks[1].ca.zero_k_bias.is_meta
    vsd = {k: v for k, v in state(tiny.vae).items() if "lfq" not in k}
    v = build_vae(TINY_INFINITY.vae, weights=save(vsd, tmp_path / "novbuf.safetensors"))
    assert v.quantize.lfq.mask.tolist() == tiny.vae.quantizer.lfq.mask.tolist()


def test_truncated_and_corrupt_files(tiny, tmp_path) -> None:
    path = save(state(tiny.vae), tmp_path / "v.safetensors")
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors is not a readable safetensors file"):
        build_vae(TINY_INFINITY.vae, weights=cut)
    with pytest.raises(CheckpointError, match="does not exist"):
        build_vae(TINY_INFINITY.vae, weights=tmp_path / "absent.safetensors")
    pth = tmp_path / "cut.pth"
    torch.save({"vae": state(tiny.vae)}, pth)
    pth.write_bytes(pth.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cut.pth"):
        build_vae(TINY_INFINITY.vae, weights=pth, state_dict_keys=(("vae",),))


def test_sharded_index(tiny, tmp_path) -> None:
    sd = state(tiny.transformer)
    names = sorted(sd)
    half = len(names) // 2
    shards = {"a.safetensors": names[:half], "b.safetensors": names[half:]}
    for fname, keys in shards.items():
        save({k: sd[k] for k in keys}, tmp_path / fname)
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {k: f for f, ks in shards.items() for k in ks}}))
    t = build_transformer(TINY_INFINITY.transformer, weights=index)
    assert torch.equal(t.head.weight, tiny.transformer.head.weight)
    t2 = build_transformer(TINY_INFINITY.transformer, weights=tmp_path)  # the folder finds its index
    assert torch.equal(t2.lvl_embed.weight, tiny.transformer.lvl_embed.weight)
    (tmp_path / "b.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"missing: b\.safetensors"):
        build_transformer(TINY_INFINITY.transformer, weights=index)


def test_pickled_checkpoints(tiny, tmp_path) -> None:
    # official VAE files: a pickle with the state dict under 'vae'; plain X.weight spellings allowed
    sd = state(tiny.vae)
    plain = {k.replace(".conv.weight", ".weight").replace(".norm.bias", ".bias"): v for k, v in sd.items()}
    torch.save({"vae": plain, "step": torch.tensor(3)}, tmp_path / "vae.pth")
    c = build_components(TINY_INFINITY, weights={"vae": tmp_path / "vae.pth"}, roles=("vae",))
    assert torch.equal(c.vae.decoder.conv_out.conv.weight, tiny.vae.decoder.conv_out.conv.weight)
    assert torch.equal(c.vae.encoder.norm_out.norm.bias, tiny.vae.encoder.norm_out.norm.bias)

    torch.save({"vae": {"x": NotATensor()}}, tmp_path / "evil.pth")
    with pytest.raises(UnsafeCheckpointError):
        build_vae(TINY_INFINITY.vae, weights=tmp_path / "evil.pth", state_dict_keys=(("vae",),))


class NotATensor:
    """Stands for arbitrary pickled objects, which the loader must refuse to unpickle."""


def test_real_specs_need_files() -> None:
    with pytest.raises(ModelFilesError, match="needs a transformer file"):
        build_components(INFINITY_2B, roles=("transformer",))
    with pytest.raises(ModelFilesError, match="unknown roles"):
        build_components(TINY_INFINITY, weights={"unet": "x"})


# ---- start-up: building a model imports nothing heavy --------------------------------------------

_BUILD_PROBE = """
import sys
import torch
from arbooth_cli.loading import load_components, resolve_model
from arbooth_cli.models.bsq_vae import BSQVAE
from arbooth_cli.models.build import build_components
from arbooth_cli.models.skeleton import skeleton
from arbooth_cli.models.transformer import InfinityTransformer
from arbooth_cli.registry import get_spec

rng = torch.get_rng_state()
comps = load_components(resolve_model("toy"), device=torch.device("cpu"), dtype=torch.float32)
text = comps.text_encoder.encode(["a red star on the left, blue background", "x"])
build_components(get_spec("tiny-infinity"), seed=0).text_encoder.encode(["a photo of sks dog"])
for name in ("infinity-2b", "infinity-8b"):
    with skeleton():
        InfinityTransformer(get_spec(name).transformer), BSQVAE(get_spec(name).vae)
assert torch.equal(rng, torch.get_rng_state()), "the global RNG was used"
print("LOADED=" + ",".join(m for m in ("torch._dynamo", "sympy", "transformers") if m in sys.modules))
"""


def test_building_models_imports_no_dynamo_sympy_or_transformers() -> None:
    # The meta-device skeleton skips random inits and Python meta kernels, and the tiny text encoders
    # are plain torch: a toy image's start-up pays for none of these imports (about 3 s together).
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _BUILD_PROBE], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "LOADED=\n" in proc.stdout, proc.stdout
