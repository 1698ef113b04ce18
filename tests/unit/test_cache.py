import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from arbooth_cli import checkpoint_io
from arbooth_cli.cache import MANIFEST, ModelCache, assign_roles
from arbooth_cli.errors import (
    CacheNotWritableError,
    CheckpointError,
    DiskFullError,
    HashMismatchError,
    ModelExistsError,
    ModelFilesError,
    ModelNotCachedError,
    UnsafeCheckpointError,
)


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file under the store except lock files (which may be created by a failed write)."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "locks" not in p.parts
    }


def test_add_converts_pth_to_safetensors_and_records_hashes(filed_spec, make_checkpoints):
    tr_path, vae_path, tr, vae = make_checkpoints()
    cache = ModelCache()
    model = cache.add(filed_spec, [tr_path, vae_path])
    assert model.name == "tiny-filed" and model.source == "add"
    assert set(model.roles) == {"transformer", "vae"}
    loaded = load_file(model.path("transformer"))
    assert set(loaded) == set(tr) and all(torch.equal(loaded[k], tr[k]) for k in tr)
    assert loaded["pos_start"].dtype == torch.bfloat16
    vae_loaded = load_file(model.path("vae"))
    assert set(vae_loaded) == set(vae) and all(torch.equal(vae_loaded[k], vae[k]) for k in vae)
    assert model.originals["transformer"]["sha256"] == checkpoint_io.sha256_file(tr_path)
    for f in model.files:
        assert checkpoint_io.sha256_file(model.root / f.path) == f.sha256
    manifest = json.loads((model.root / MANIFEST).read_text())
    assert manifest["spec"]["name"] == "tiny-filed" and len(manifest["model_hash"]) == 64
    assert [m.name for m in cache.scan().models] == ["tiny-filed"]
    assert cache.verify("tiny-filed").ok


def test_roles_by_name_pattern_or_explicit_role(filed_spec, make_checkpoints, tmp_path):
    tr_path, vae_path, *_ = make_checkpoints()
    renamed = tmp_path / "weird_name.pth"
    renamed.write_bytes(vae_path.read_bytes())
    got = assign_roles(filed_spec, [tr_path, f"vae={renamed}"])
    assert got == {"transformer": tr_path, "vae": renamed}
    with pytest.raises(ModelFilesError, match="cannot tell which file") as err:
        assign_roles(filed_spec, [tr_path, renamed])
    assert "ROLE=PATH" in err.value.hint
    with pytest.raises(ModelFilesError, match=r"missing files for 'tiny-filed': vae \(tiny_vae.pth\)"):
        assign_roles(filed_spec, [tr_path])
    with pytest.raises(ModelFilesError, match="two inputs for the vae"):
        assign_roles(filed_spec, [tr_path, vae_path, f"vae={renamed}"])
    with pytest.raises(ModelFilesError, match="no such file"):
        assign_roles(filed_spec, [tr_path, tmp_path / "nope.pth"])


def test_add_safetensors_input_and_verify_detects_tampering(filed_spec, make_checkpoints, tmp_path):
    tr_path, vae_path, tr, _ = make_checkpoints()
    st = tmp_path / "tiny_transformer.safetensors"
    checkpoint_io.write_safetensors(st, tr)
    cache = ModelCache()
    model = cache.add(filed_spec, [st, vae_path])
    assert model.originals["transformer"]["sha256"] == checkpoint_io.sha256_file(st)
    target = model.path("transformer")
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    report = cache.verify("tiny-filed")
    assert not report.ok and "sha256 differs" in report.problems[0]
    model.path("vae").unlink()
    assert any("missing" in p for p in cache.verify("tiny-filed").problems)


def test_exists_force_and_remove(filed_spec, make_checkpoints):
    tr_path, vae_path, *_ = make_checkpoints()
    cache = ModelCache()
    first = cache.add(filed_spec, [tr_path, vae_path])
    with pytest.raises(ModelExistsError):
        cache.add(filed_spec, [tr_path, vae_path])
    second = cache.add(filed_spec, [tr_path, vae_path], force=True)
    assert second.model_hash == first.model_hash and cache.verify("tiny-filed").ok
    assert cache.scan().partial == ()
    cache.remove("tiny-filed")
    assert not cache.has("tiny-filed") and cache.scan().models == ()
    with pytest.raises(ModelNotCachedError):
        cache.remove("tiny-filed")
    with pytest.raises(ModelNotCachedError):
        cache.verify("tiny-filed")


@pytest.mark.parametrize("case", ["truncated", "unsafe", "hash", "wrong-content", "extra"])
def test_bad_inputs_leave_the_store_exactly_as_it_was(case, filed_spec, make_checkpoints, tmp_path):
    import argparse
    from dataclasses import replace

    tr_path, vae_path, *_ = make_checkpoints()
    cache = ModelCache()
    cache.add(replace(filed_spec, name="other"), [tr_path, vae_path])
    before = _snapshot(cache.root)
    spec, inputs = filed_spec, [tr_path, vae_path]
    if case == "truncated":
        data = vae_path.read_bytes()
        vae_path.write_bytes(data[: len(data) - 200])
        expected = CheckpointError
    elif case == "unsafe":
        torch.save({"vae": {"w": torch.ones(1)}, "args": argparse.Namespace(a=1)}, vae_path)
        expected = UnsafeCheckpointError
    elif case == "hash":
        files = (filed_spec.files[0], replace(filed_spec.files[1], sha256="0" * 64))
        spec = replace(filed_spec, files=files)
        expected = HashMismatchError
    elif case == "wrong-content":
        torch.save({"optimizer": {"step": 3}}, vae_path)  # no tensors where the state dict should be
        expected = CheckpointError
    else:
        extra = tmp_path / "notes.txt"
        extra.write_text("hello")
        inputs = [tr_path, vae_path, extra]
        expected = ModelFilesError
    with pytest.raises(expected):
        cache.add(spec, inputs)
    assert _snapshot(cache.root) == before
    assert not cache.has("tiny-filed") and cache.scan().partial == ()


def test_full_disk_is_a_clear_error_and_leaves_nothing(filed_spec, make_checkpoints, monkeypatch):
    tr_path, vae_path, *_ = make_checkpoints()
    real_init = checkpoint_io.HashingWriter.__init__

    class FullFile:
        def __init__(self, f):
            self.f, self.left = f, 64

        def write(self, data):
            if len(data) > self.left:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.left -= len(data)
            return self.f.write(data)

    def init(self, f):
        real_init(self, FullFile(f))

    monkeypatch.setattr(checkpoint_io.HashingWriter, "__init__", init)
    cache = ModelCache()
    with pytest.raises(DiskFullError, match="no space left") as err:
        cache.add(filed_spec, [tr_path, vae_path])
    assert err.value.exit_code == 5 and "ARBOOTH_HOME" in err.value.hint
    assert not cache.has("tiny-filed") and cache.scan().partial == ()


def test_unwritable_cache_directory(filed_spec, make_checkpoints, tmp_path, monkeypatch):
    tr_path, vae_path, *_ = make_checkpoints()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("ARBOOTH_HOME", str(blocker / "home"))
    with pytest.raises(CacheNotWritableError, match="cannot write to the cache directory"):
        ModelCache().add(filed_spec, [tr_path, vae_path])
    assert blocker.read_text() == "not a directory"


def _run_py(code: str, env_home: Path, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, ARBOOTH_HOME=str(env_home))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True,
                          text=True, timeout=120, **kw)


_SPEC_CODE = """
    from dataclasses import replace
    from arbooth_cli.registry import FileSpec
    from arbooth_cli.specs.tiny import TINY_INFINITY
    spec = replace(TINY_INFINITY, name="tiny-filed", builtin_weights=False, files=(
        FileSpec(role="transformer", kind="pth", repo_id="e/t", filename="tiny_transformer.pth"),
        FileSpec(role="vae", kind="pth", repo_id="e/t", filename="tiny_vae.pth", state_dict_keys=(("vae",), ())),
    ))
"""


def test_a_killed_import_never_shows_as_ready_and_prune_cleans_it(make_checkpoints, tmp_path):
    tr_path, vae_path, *_ = make_checkpoints()
    home = Path(os.environ["ARBOOTH_HOME"])
    code = _SPEC_CODE + f"""
    import os, signal
    from arbooth_cli import cache as c
    real = c.write_safetensors
    def dying(path, tensors, meta=None):
        real(path, tensors, meta)
        os.kill(os.getpid(), signal.SIGKILL)  # as if the machine went down mid-import
    c.write_safetensors = dying
    c.ModelCache().add(spec, [{str(tr_path)!r}, {str(vae_path)!r}])
    """
    proc = _run_py(code, home)
    assert proc.returncode == -9, proc.stderr
    cache = ModelCache()
    scan = cache.scan()
    assert scan.models == () and not cache.has("tiny-filed") and len(scan.partial) == 1
    assert cache.prune() == list(scan.partial)
    assert cache.scan().partial == ()


def test_concurrent_adds_leave_one_complete_model(make_checkpoints):
    tr_path, vae_path, *_ = make_checkpoints()
    home = Path(os.environ["ARBOOTH_HOME"])
    code = _SPEC_CODE + f"""
    from arbooth_cli.cache import ModelCache
    from arbooth_cli.errors import ModelExistsError
    try:
        ModelCache().add(spec, [{str(tr_path)!r}, {str(vae_path)!r}])
        print("added")
    except ModelExistsError:
        print("exists")
    """
    env = dict(os.environ, ARBOOTH_HOME=str(home))
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
    assert all(p.returncode == 0 for p in procs)
    assert outs == ["added", "exists"]  # the loser is told, never half-overwrites
    cache = ModelCache()
    assert [m.name for m in cache.scan().models] == ["tiny-filed"]
    assert cache.verify("tiny-filed").ok and cache.scan().partial == ()
