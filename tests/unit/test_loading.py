"""Which model a command uses when none is named, and the packaged default."""

from __future__ import annotations

import pytest
import torch

from arbooth_cli import loading
from arbooth_cli.errors import CheckpointError, ConfigError, ModelFilesError
from arbooth_cli.loading import (DEFAULT_MODEL, LAST_MODEL_FILE, last_model, load_components, remember_model,
                                 resolve_model)
from arbooth_cli.models.build import build_components, bundle_tensors, read_bundle
from arbooth_cli.specs.tiny import TINY_INFINITY
from arbooth_cli.checkpoint_io import write_safetensors


def test_last_used_model_is_the_default_else_the_packaged_one(_isolated_env):
    assert resolve_model(None, env={}).spec.name == DEFAULT_MODEL  # nothing cached, nothing remembered
    remember_model("tiny-infinity")
    assert last_model(_isolated_env) == "tiny-infinity"
    assert resolve_model(None, env={}).spec.name == "tiny-infinity"


def test_environment_wins_over_last_used_and_stale_names_are_ignored(_isolated_env):
    (_isolated_env).mkdir(parents=True, exist_ok=True)
    (_isolated_env / LAST_MODEL_FILE).write_text("no-such-model\n")
    # a remembered name that is no longer known is not used
    assert resolve_model(None, env={}).spec.name == DEFAULT_MODEL
    remember_model("infinity-2b")  # known but not cached: not usable, so not the default
    assert resolve_model(None, env={}).spec.name == DEFAULT_MODEL
    assert resolve_model(None, env={"ARBOOTH_MODEL": "tiny-infinity"}).spec.name == "tiny-infinity"


def test_without_the_packaged_file_nothing_is_guessed(_isolated_env, monkeypatch, tmp_path):
    monkeypatch.setattr(loading, "PACKAGED_DIR", tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="no --model given"):
        resolve_model(None, env={})
    with pytest.raises(ModelFilesError, match="missing from this installation"):
        resolve_model(DEFAULT_MODEL, env={})


def test_packaged_model_identity_is_the_file_hash(_isolated_env):
    r = resolve_model(DEFAULT_MODEL, env={})
    assert r.model_hash.startswith("packaged-") and len(r.model_hash) == len("packaged-") + 64
    assert set(r.weights) == {"transformer", "vae", "text_encoder"}


def test_a_bundle_round_trips_every_component(tmp_path):
    comps = build_components(TINY_INFINITY)
    path = tmp_path / "b.safetensors"
    write_safetensors(path, bundle_tensors(comps))
    parts = read_bundle(path)
    assert set(parts) == {"transformer", "vae", "text_encoder"}
    back = build_components(TINY_INFINITY, weights=parts)
    for a, b in ((comps.transformer, back.transformer), (comps.vae, back.vae),
                 (comps.text_encoder.model, back.text_encoder.model)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # different weights give different text features, so the text encoder really was loaded
    parts["text_encoder"] = {k: v + 0.01 for k, v in parts["text_encoder"].items()}
    other = build_components(TINY_INFINITY, weights=parts)
    p = ["a red star"]
    assert not torch.equal(comps.text_encoder.encode(p).feats_BTC, other.text_encoder.encode(p).feats_BTC)


def test_bundles_are_checked_strictly(tmp_path):
    comps = build_components(TINY_INFINITY)
    tensors = bundle_tensors(comps)
    bad = tmp_path / "stray.safetensors"
    write_safetensors(bad, tensors | {"optimizer.x": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="belongs to no role"):
        read_bundle(bad)
    parts = read_bundle(_write(tmp_path / "short.safetensors", {k: v for k, v in tensors.items()
                                                                  if k != "text_encoder.shared.weight"}))
    with pytest.raises(CheckpointError, match="shared.weight"):
        build_components(TINY_INFINITY, weights=parts)
    with pytest.raises(CheckpointError, match="cannot read"):
        read_bundle(_write_bytes(tmp_path / "junk.safetensors", b"not a file"))


def test_the_packaged_model_loads_and_draws_its_world(_isolated_env):
    from arbooth_cli.models.schedules import model_scales
    from arbooth_cli.sampling.sample import SamplingParams, sample_images

    r = resolve_model(DEFAULT_MODEL, env={})
    c = load_components(r, device=torch.device("cpu"), dtype=torch.float32)
    spec = r.spec
    scales = model_scales(spec.sampling.size, num_scales=spec.num_scales)
    text = c.text_encoder.encode(["a white circle in the center, blue background"])
    img = sample_images(c.transformer, c.vae, text, scales,
                        SamplingParams(cfg=spec.sampling.cfg, tau=spec.sampling.tau, top_p=spec.sampling.top_p),
                        [torch.Generator().manual_seed(0)])
    assert img.shape == (1, 3, 64, 64)
    px = img[0].permute(1, 2, 0).float()
    blue, white = torch.tensor([40.0, 80, 220]), torch.tensor([245.0, 245, 245])
    assert (px[0, 0] - blue).abs().max() < 40  # a corner shows the background it was asked for
    assert (px[32, 32] - white).abs().max() < 40  # and the centre the shape


def _write(path, tensors):
    write_safetensors(path, tensors)
    return path


def _write_bytes(path, data):
    path.write_bytes(data)
    return path


def test_cpu_threads_default_to_half_the_cores_unless_told():
    from arbooth_cli.errors import ConfigError
    from arbooth_cli.loading import cpu_threads

    assert cpu_threads({}, cores=2) == 1 and cpu_threads({}, cores=1) == 1
    assert cpu_threads({}, cores=16) == 8 and cpu_threads({}, cores=64) == 8
    assert cpu_threads({"OMP_NUM_THREADS": "2"}, cores=2) is None  # the user's OpenMP setting stands
    assert cpu_threads({"ARBOOTH_THREADS": "3", "OMP_NUM_THREADS": "2"}, cores=2) == 3
    with pytest.raises(ConfigError, match="ARBOOTH_THREADS"):
        cpu_threads({"ARBOOTH_THREADS": "many"})
