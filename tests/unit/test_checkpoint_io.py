import argparse
import os
import pickle

import pytest
import torch
from safetensors import safe_open

from arbooth_cli.checkpoint_io import (
    find_state_dict,
    load_pth_weights_only,
    read_safetensors_header,
    sha256_file,
    write_safetensors,
)
from arbooth_cli.errors import CheckpointError, UnsafeCheckpointError


def test_streaming_writer_round_trips_through_safetensors(tmp_path):
    g = torch.Generator().manual_seed(1)
    tensors = {
        "a": torch.randn(3, 5, generator=g),
        "b.bf16": torch.randn(7, generator=g).to(torch.bfloat16),
        "c.int": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "d.scalar": torch.tensor(2.5),
        "e.empty": torch.zeros(0, 4),
        "f.noncontig": torch.randn(4, 6, generator=g).t(),
    }
    path = tmp_path / "x.safetensors"
    sha, size = write_safetensors(path, tensors, {"note": "hi"})
    assert sha == sha256_file(path) and size == path.stat().st_size
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"note": "hi"}
        assert set(f.keys()) == set(tensors)
        for k, v in tensors.items():
            got = f.get_tensor(k)
            assert got.dtype == v.dtype and torch.equal(got, v), k
    header = read_safetensors_header(path)
    assert header["f.noncontig"]["shape"] == [6, 4]


def test_truncated_or_foreign_safetensors_are_caught_from_the_header(tmp_path):
    path = tmp_path / "x.safetensors"
    write_safetensors(path, {"w": torch.ones(1000)})
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        read_safetensors_header(tmp_path / "cut.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"hello world, not a checkpoint")
    with pytest.raises(CheckpointError, match="not a safetensors"):
        read_safetensors_header(tmp_path / "junk.safetensors")


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickles_with_code_are_refused_without_running_it(tmp_path):
    marker = str(tmp_path / "pwned")
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"w": _Exploit(marker)}, f)
    with pytest.raises(UnsafeCheckpointError, match="refusing to unpickle"):
        load_pth_weights_only(tmp_path / "evil.pth")
    assert not os.path.exists(marker)
    torch.save({"args": argparse.Namespace(lr=1), "w": torch.ones(2)}, tmp_path / "ns.pth")
    with pytest.raises(UnsafeCheckpointError, match="argparse.Namespace"):
        load_pth_weights_only(tmp_path / "ns.pth")


def test_truncated_pth_and_nested_state_dicts(tmp_path):
    torch.save({"trainer": {"gpt_fsdp": {"w": torch.ones(3)}, "step": 5}}, tmp_path / "ok.pth")
    obj = load_pth_weights_only(tmp_path / "ok.pth")
    sd = find_state_dict(obj, [(), ("trainer", "gpt_fsdp")], tmp_path / "ok.pth")
    assert list(sd) == ["w"] and torch.equal(sd["w"], torch.ones(3))
    with pytest.raises(CheckpointError, match="no state dict at <top level>, vae"):
        find_state_dict(obj, [(), ("vae",)], tmp_path / "ok.pth")
    data = (tmp_path / "ok.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_pth_weights_only(tmp_path / "cut.pth")
