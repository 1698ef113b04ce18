"""Folders (a text encoder), sharded safetensors, and pulling from the hub cache or offline."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from arbooth_cli import checkpoint_io
from arbooth_cli.cache import ModelCache
from arbooth_cli.errors import ModelFilesError, OfflineError
from arbooth_cli.models.build import expected_tensors
from arbooth_cli.specs.infinity import _T5_FILE
from arbooth_cli.specs.tiny import TINY_INFINITY
from arbooth_cli.registry import FileSpec


def _t5_dir(root: Path, with_weights=True) -> Path:
    d = root / "flan-t5-xl"
    d.mkdir(parents=True)
    (d / "config.json").write_text('{"d_model": 8}')
    (d / "spiece.model").write_bytes(b"sentencepiece-bytes")
    (d / "README.md").write_text("not needed")
    if with_weights:
        checkpoint_io.write_safetensors(d / "model.safetensors", {"enc.w": torch.ones(2, 2)})
    return d


def _sharded(root: Path) -> Path:
    """The tiny transformer split over two shards with an index, as the 8B weights are on the hub."""
    d = root / "infinity_8b_weights"
    d.mkdir(parents=True)
    shapes = list(expected_tensors(TINY_INFINITY)["transformer"].items())
    weight_map = {}
    for i, part in enumerate((shapes[::2], shapes[1::2])):
        fname = f"model-0000{i + 1}-of-00002.safetensors"
        checkpoint_io.write_safetensors(d / fname, {k: torch.zeros(s) for k, s in part})
        weight_map.update({k: fname for k, _ in part})
    index = {"metadata": {}, "weight_map": weight_map}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    return d


@pytest.fixture
def folder_spec(filed_spec):
    shard = FileSpec(role="transformer", kind="safetensors-index", repo_id="example/tiny",
                     filename="infinity_8b_weights/model.safetensors.index.json", match=("infinity_8b_weights*",))
    return replace(filed_spec, files=(shard, filed_spec.files[1], _T5_FILE))


def test_add_a_text_encoder_folder_and_sharded_weights(folder_spec, make_checkpoints, tmp_path):
    _, vae_path, *_ = make_checkpoints()
    model = ModelCache().add(folder_spec, [_sharded(tmp_path), vae_path, _t5_dir(tmp_path)])
    names = {f.path for f in model.files}
    assert {"text_encoder/config.json", "text_encoder/spiece.model", "text_encoder/model.safetensors"} <= names
    assert "text_encoder/README.md" not in names
    assert model.roles["transformer"] == "transformer/model.safetensors.index.json"
    assert {"transformer/model-00001-of-00002.safetensors", "transformer/model-00002-of-00002.safetensors"} <= names
    assert ModelCache().verify(folder_spec.name).ok


def test_incomplete_folders_and_missing_shards_are_refused(folder_spec, make_checkpoints, tmp_path):
    _, vae_path, *_ = make_checkpoints()
    shards = _sharded(tmp_path / "a")
    with pytest.raises(ModelFilesError, match="lacks weights"):
        ModelCache().add(folder_spec, [shards, vae_path, _t5_dir(tmp_path / "b", with_weights=False)])
    (shards / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ModelFilesError, match="shard model-00002-of-00002.safetensors .* missing"):
        ModelCache().add(folder_spec, [shards, vae_path, _t5_dir(tmp_path / "c")])
    assert ModelCache().scan().models == ()


def test_pull_offline_names_models_add(filed_spec):
    with pytest.raises(OfflineError) as err:
        ModelCache().pull(filed_spec)
    assert err.value.exit_code == 6
    assert "example/tiny/tiny_transformer.pth" in err.value.message
    assert "arbooth models add tiny-filed" in err.value.hint
    assert ModelCache().scan().models == ()


def _fill_hub_cache(hub: Path, repo: str, files: dict[str, bytes]) -> None:
    """Lay files out as huggingface_hub's cache does: refs/main -> snapshots/<commit>/<file>."""
    base = hub / ("models--" + repo.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    for name, data in files.items():
        p = base / "snapshots" / commit / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def test_pull_uses_files_already_in_the_hub_cache(filed_spec, make_checkpoints, tmp_path, monkeypatch):
    tr_path, vae_path, *_ = make_checkpoints()
    hub = tmp_path / "hub-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    _fill_hub_cache(hub, "example/tiny", {"tiny_transformer.pth": tr_path.read_bytes(),
                                          "tiny_vae.pth": vae_path.read_bytes()})
    model = ModelCache().pull(filed_spec)
    assert model.source == "pull" and ModelCache().verify("tiny-filed").ok
    assert model.originals["vae"]["sha256"] == checkpoint_io.sha256_file(vae_path)
    assert ModelCache().scan().partial == ()
