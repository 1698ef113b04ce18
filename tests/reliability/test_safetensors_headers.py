"""Hostile and damaged safetensors files: every one is a CheckpointError naming the file (exit 4),
never a traceback; valid files from both writers pass unchanged."""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from arbooth_cli.checkpoint_io import (
    _nesting_depth,
    read_safetensors_header,
    tensor_shapes,
    write_safetensors,
)
from arbooth_cli.errors import CheckpointError
from arbooth_cli.subjects.use import read_subject_values


def entry(dtype: str = "F32", shape: list = [1], offsets: list = [0, 4]) -> dict:  # noqa: B006 - never mutated
    return {"dtype": dtype, "shape": shape, "data_offsets": offsets}


def st(header: dict | bytes, data: bytes = b"", *, n: int | None = None) -> bytes:
    """The bytes of a safetensors file: length, header (JSON of a dict, or raw bytes), data."""
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(blob) if n is None else n) + blob + data


DEEP = 200_000
#: (id, file bytes, does the safetensors library refuse it too? False: arbooth is stricter)
HOSTILE: list[tuple[str, bytes, bool]] = [
    ("string offsets", st({"a": entry(offsets=["0", "4"])}, b"\0" * 4), True),
    ("200k-deep nesting", st(b'{"a":' + b"[" * DEEP + b"]" * DEEP + b"}"), True),
    ("200k-deep objects", st(b'{"a":' + b'{"b":' * DEEP + b"1" + b"}" * DEEP + b"}"), True),
    ("unclosed deep nesting", st(b"{" + b"[" * DEEP), True),
    ("metadata not an object", st({"__metadata__": ["x"], "a": entry()}, b"\0" * 4), True),
    ("metadata value not a string", st({"__metadata__": {"k": 1}, "a": entry()}, b"\0" * 4), True),
    ("metadata null", st({"__metadata__": None, "a": entry()}, b"\0" * 4), False),
    ("metadata lone surrogate", st(b'{"__metadata__":{"k":"\\ud800"}}'), True),
    ("negative shape", st({"a": entry(shape=[-1])}, b"\0" * 4), True),
    ("float shape", st({"a": entry(shape=[1.0])}, b"\0" * 4), True),
    ("bool shape", st({"a": entry(dtype="U8", shape=[True], offsets=[0, 1])}, b"\0"), True),
    ("shape not a list", st({"a": entry(shape=1)}, b"\0" * 4), True),
    ("shape overflows", st({"a": entry(shape=[2**62, 2**62, 0], offsets=[0, 0])}), True),
    ("dimension beyond int64", st({"a": entry(shape=[0, 2**63], offsets=[0, 0])}), False),
    ("integer of 5000 digits", st(b'{"a":{"dtype":"F32","shape":[' + b"9" * 5000 + b'],"data_offsets":[0,4]}}',
                                  b"\0" * 4), True),
    ("overlapping offsets", st({"a": entry(shape=[2], offsets=[0, 8]), "b": entry(shape=[2], offsets=[4, 12])},
                               b"\0" * 12), True),
    ("same offsets twice", st({"a": entry(), "b": entry()}, b"\0" * 4), True),
    ("gap between tensors", st({"a": entry(), "b": entry(offsets=[8, 12])}, b"\0" * 12), True),
    ("data not from 0", st({"a": entry(offsets=[4, 8])}, b"\0" * 8), True),
    ("trailing bytes", st({"a": entry()}, b"\0" * 8), True),
    ("size disagrees with shape", st({"a": entry(shape=[2])}, b"\0" * 4), True),
    ("unknown dtype", st({"a": entry(dtype="F128")}, b"\0" * 4), True),
    ("dtype not a string", st({"a": entry(dtype=["F32"])}, b"\0" * 4), True),
    ("entry not an object", st({"a": [1, 2]}), True),
    ("entry a string", st({"a": "F32"}), True),
    ("missing key", st({"a": {"dtype": "F32", "shape": [1]}}, b"\0" * 4), True),
    ("extra key", st({"a": {**entry(), "offsets": [0, 4]}}, b"\0" * 4), False),
    ("offsets reversed", st({"a": entry(shape=[0], offsets=[4, 0])}, b"\0" * 4), True),
    ("three offsets", st({"a": entry(offsets=[0, 4, 4])}, b"\0" * 4), True),
    ("repeated tensor name", st(b'{"a":' + json.dumps(entry()).encode() + b',"a":'
                                + json.dumps(entry(offsets=[4, 8])).encode() + b"}", b"\0" * 8), True),
    ("repeated metadata key", st(b'{"__metadata__":{"k":"1","k":"2"}}'), False),
    ("lone surrogate name", st(b'{"\\udc00":' + json.dumps(entry()).encode() + b"}", b"\0" * 4), True),
    ("header length beyond file", st({"a": entry()}, b"\0" * 4, n=1000), True),
    ("header length beyond the cap", st(b"{}", n=100_000_001), True),
    ("header length near 2**64", st(b"{}", n=2**64 - 1), True),
    ("empty file", b"", True),
    ("shorter than its length field", b"\x02\0\0", True),
    ("empty header", st(b""), True),
    ("non-UTF-8 header", st(b'{"\xff":' + json.dumps(entry()).encode() + b"}", b"\0" * 4), True),
    ("UTF-16 header", st('{"a":{"dtype":"U8","shape":[],"data_offsets":[0,1]}}'.encode("utf-16-le"), b"\0"), True),
    ("top-level JSON array", st(b"[" + json.dumps(entry()).encode() + b"]", b"\0" * 4), True),
    ("top-level number", st(b"42"), True),
    ("not JSON", st(b"{not json}"), True),
    ("unterminated string", st(b'{"a' + b'\\"' * 1000), True),
    ("text, not safetensors", b"hello world, not a checkpoint at all", True),
]


@pytest.mark.parametrize("data, reference_refuses", [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_hostile_headers_are_a_checkpoint_error_naming_the_file(tmp_path, data, reference_refuses):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    with pytest.raises(CheckpointError) as info:
        read_safetensors_header(path)
    msg = str(info.value)
    assert str(path) in msg and "\n" not in msg and len(msg) < 400 + len(str(path)), msg
    assert info.value.exit_code == 4
    if reference_refuses:  # arbooth refuses at least what the reference loader refuses
        with pytest.raises(SafetensorError):
            safe_open(str(path), "pt").keys()


def test_truncated_data_keeps_its_friendly_message(tmp_path):
    path = tmp_path / "cut.safetensors"
    path.write_bytes(st({"a": entry(shape=[4], offsets=[0, 16])}, b"\0" * 10))
    with pytest.raises(CheckpointError, match="truncated: its header needs 16 data bytes but the file has 10") as info:
        read_safetensors_header(path)
    assert info.value.hint == "download or copy the file again"


def _reference_header(path: Path) -> dict:
    """The header as the safetensors library reports it."""
    with safe_open(str(path), "pt") as f:
        names = f.keys()
        return {"meta": f.metadata(), "shapes": {k: tuple(f.get_slice(k).get_shape()) for k in names},
                "dtypes": {k: f.get_slice(k).get_dtype() for k in names}}


TENSORS = {
    "w": torch.arange(12, dtype=torch.float32).reshape(3, 4),
    "half": torch.ones(5, dtype=torch.float16),
    "bf": torch.ones(2, 2, dtype=torch.bfloat16),
    "ids": torch.arange(3, dtype=torch.int64),
    "mask": torch.tensor([True, False, True]),
    "bytes": torch.arange(7, dtype=torch.uint8),
    "empty": torch.zeros(0, 4),
    "scalar": torch.tensor(1.5, dtype=torch.float64),
}
META = {"format": "pt", "note": 'brackets [[[{{ and "quotes" \\ inside strings are no nesting' + "[" * 500}


@pytest.mark.parametrize("writer", ["write_safetensors", "save_file"])
def test_files_of_both_writers_pass_and_return_their_header(tmp_path, writer):
    path = tmp_path / "ok.safetensors"
    if writer == "write_safetensors":
        write_safetensors(path, TENSORS, META)
    else:
        save_file(TENSORS, str(path), metadata=META)
    header = read_safetensors_header(path)
    ref = _reference_header(path)
    assert header["__metadata__"] == ref["meta"] == META
    assert tensor_shapes(header) == ref["shapes"] == {k: tuple(v.shape) for k, v in TENSORS.items()}
    assert {k: v["dtype"] for k, v in header.items() if k != "__metadata__"} == ref["dtypes"]
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert header == json.loads(raw[8:8 + n])  # returned as stored


def test_empty_tensors_may_share_an_offset_with_the_next_tensor(tmp_path):
    path = tmp_path / "zeros.safetensors"
    path.write_bytes(st({"b": entry(), "a": entry(shape=[0], offsets=[0, 0]), "c": entry(shape=[2, 0], offsets=[4, 4])},
                        b"\0" * 4))
    assert set(read_safetensors_header(path)) == {"a", "b", "c"}
    path.write_bytes(st({}))  # no tensors at all
    assert read_safetensors_header(path) == {}


def test_nesting_scan_skips_strings_and_its_two_paths_agree():
    assert _nesting_depth(b'{"a":"[[[{", "b":[[1]], "c":"\\\\"}') == 3
    assert _nesting_depth(b'{"a\\"[":[[{}]]}') == 4
    rng = random.Random(0)
    for _ in range(500):
        blob = bytes(rng.choice(b'[]{}"\\ax') for _ in range(rng.randrange(40)))
        assert _nesting_depth(blob) == _nesting_depth(blob, vector_from=0), blob


def _subject_file(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    write_safetensors(path, tensors)
    return path


PARAMS = {"w": torch.zeros(4, 3), "b": torch.zeros(4)}


@pytest.mark.parametrize("tensors, needle", [
    ({"w.lora_up": torch.ones(4, 2)}, "has no 'w.lora_down'"),
    ({"w.lora_down": torch.ones(2, 3)}, "has no lora_up"),
    ({"w.lora_up": torch.ones(4, 2), "w.lora_down": torch.ones(3, 3)}, "do not make the model's (4, 3)"),
    ({"b.lora_up": torch.ones(4, 1), "b.lora_down": torch.ones(1, 1)}, "do not make the model's (4,)"),
    ({"w.delta": torch.ones(3)}, "'w.delta' is (3,)"),
    ({"w": torch.ones(4, 3), "w.delta": torch.ones(4, 3)}, "sets 'w' twice"),
    ({"nope": torch.ones(1)}, "does not have, e.g. 'nope'"),
    ({"subject_embedding": torch.ones(5)}, "subject_embedding is (5,)"),
])
def test_subject_entries_that_cannot_apply_are_refused_before_reading(tmp_path, tensors, needle):
    path = _subject_file(tmp_path / "s.safetensors", tensors)
    with pytest.raises(CheckpointError) as info:
        read_subject_values(path, PARAMS)
    assert needle in str(info.value) and str(path) in str(info.value)


def test_subject_values_of_a_valid_low_rank_file(tmp_path):
    up, down = torch.ones(4, 2), torch.full((2, 3), 0.5)
    path = _subject_file(tmp_path / "s.safetensors", {"w.lora_up": up, "w.lora_down": down, "b.delta": torch.ones(4),
                                                      "subject_embedding": torch.ones(2, 8)})
    values, emb = read_subject_values(path, PARAMS)
    assert torch.equal(values["w"], up @ down) and torch.equal(values["b"], torch.ones(4))
    assert emb.shape == (2, 8)
    (tmp_path / "bad.safetensors").write_bytes(HOSTILE[0][1])
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        read_subject_values(tmp_path / "bad.safetensors", PARAMS)


# ---- through the CLI ---------------------------------------------------------------------------


@pytest.fixture
def cli():
    from typer.testing import CliRunner

    from arbooth_cli.cli import build_app

    runner = CliRunner()
    return lambda *args: runner.invoke(build_app(None), list(args), prog_name="arbooth")


@pytest.mark.parametrize("case", ["string offsets", "200k-deep nesting", "metadata value not a string"])
def test_cli_refuses_a_hostile_subject_file_with_one_error_line(cli, tmp_path, case):
    bad = tmp_path / "BAD.safetensors"
    bad.write_bytes({c[0]: c[1] for c in HOSTILE}[case])
    for args in (["gen", "a red star", "--delta", str(bad), "--out", str(tmp_path / "out")],
                 ["inspect", "weights", str(bad), "--out", str(tmp_path / "rep")]):
        r = cli(*args)
        assert r.exit_code == 4, r.output
        assert "Traceback" not in r.output
        errors = [line for line in r.stderr.splitlines() if line.strip()]
        assert len(errors) == 1 and errors[0].startswith("error: ") and str(bad) in errors[0], r.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
