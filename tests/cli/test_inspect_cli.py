"""`arbooth inspect noise|weights` through the CLI, on the tiny model."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from PIL import Image

TINY = ["-m", "tiny-infinity"]


def _fake_subject(path: Path, base_model: str, base_hash: str) -> Path:
    """A subject file header naming a base model (the tensors never get read: the base is refused first)."""
    meta = {"format": "arbooth.subject/1", "name": "other", "token": "sks", "class": "dog",
            "base_model": base_model, "base_model_hash": base_hash, "steps": "2", "config": "{}"}
    header = json.dumps({"__metadata__": meta,
                         "subject_embedding": {"dtype": "F32", "shape": [1, 1], "data_offsets": [0, 4]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    return path


def test_noise_prints_a_table_and_writes_the_report(cli, tmp_path):
    out = tmp_path / "rep"
    r = cli("inspect", "noise", "a red star", *TINY, "--seeds", "2", "--scales", "1,4", "--features", "tokenizer",
            "--out", str(out))
    assert r.exit_code == 0, r.output
    assert "feature" in r.stdout and "1x1" in r.stdout and "6x6" in r.stdout
    for name in ("noise.json", "noise-grid.png", "noise-plot.png"):
        assert str(out / name) in r.stdout and (out / name).is_file()
    assert "tokenizer" in r.stderr  # which features measured the distance


def test_noise_json_for_scripts(cli, tmp_path):
    r = cli("inspect", "noise", "a red star", *TINY, "--seeds", "2", "--mode", "flip", "-p", "0.2", "--json",
            "--out", str(tmp_path / "rep"))
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["mode"] == "flip" and data["strength"] == 0.2 and data["seeds"] == [0, 1]
    assert [row["scale"] for row in data["scales"]] == [1, 2, 3, 4]
    assert all(len(row["l1"]) == 2 for row in data["scales"])
    assert data["features"] == "the tokenizer's encoder features"


@pytest.mark.parametrize("args, code, message", [
    (["--scales", "1,7"], 4, "outside this model's schedule 1..4"),
    (["--strength", "1.5"], 4, "--strength must be in [0, 1]"),
    (["--seeds", "0"], 4, "--seeds must be >= 1"),
    (["--features", "clip"], 3, "CLIP ViT-B/32"),
    (["--subject", "nobody"], 3, "nobody"),
])
def test_noise_bad_input(cli, tmp_path, args, code, message):
    r = cli("inspect", "noise", "a red star", *TINY, *args, "--out", str(tmp_path / "rep"))
    assert r.exit_code == code, r.output
    assert message in r.stderr and "Traceback" not in r.output
    assert not (tmp_path / "rep" / "noise.json").exists()


@pytest.mark.parametrize("base, base_hash, message", [
    ("infinity-2b", "0" * 64, "was tuned on infinity-2b, not tiny-infinity"),
    ("tiny-infinity", "0" * 64, "other weight files"),
])
def test_a_delta_from_another_base_is_refused_before_work(cli, tmp_path, base, base_hash, message):
    delta = _fake_subject(tmp_path / "other.safetensors", base, base_hash)
    r = cli("inspect", "noise", "sks dog", *TINY, "--delta", str(delta), "--out", str(tmp_path / "rep"))
    assert r.exit_code == 4 and message in r.stderr, r.output
    r = cli("inspect", "weights", str(delta), *TINY, "--out", str(tmp_path / "rep"))
    assert r.exit_code == 4 and message in r.stderr, r.output


def test_weights_of_a_tuned_subject(cli, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, colour in enumerate([(200, 40, 40), (40, 180, 60)]):
        Image.new("RGB", (64, 64), colour).save(photos / f"p{i}.png")
    r = cli("tune", str(photos), "--token", "sks", "--class", "dog", *TINY, "--steps", "2", "--validate-every", "0",
            "--checkpoint-every", "0", "--lr", "1e-3", "--save-rank", "2")
    assert r.exit_code == 0, r.output

    out = tmp_path / "rep"
    r = cli("inspect", "weights", "sks", "--json", "--out", str(out))
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert set(data["by_type"]) == {"cross-attention", "FFN"}  # the default --layers ca,ffn
    assert all(g["relative"] > 0 for g in data["by_type"].values())
    assert set(data["by_block"]) == {"0", "1"}
    names = {t["name"] for t in data["tensors"]}
    assert names and all((".ca." in n or ".ffn." in n) for n in names)
    assert data["embedding"]["shape"] == [4, 64]
    with Image.open(out / "weights-chart.png") as chart:
        assert json.loads(chart.text["arbooth"])["subject"] == "sks"

    r = cli("inspect", "weights", "sks", "--out", str(out))
    assert r.exit_code == 4 and "already exists" in r.stderr
    r = cli("inspect", "weights", "sks", "--out", str(out), "--overwrite")
    assert r.exit_code == 0 and "cross-attention" in r.stdout

    rank2 = Path(data["subject_file"]).parent / "subject-r2.safetensors"
    r = cli("inspect", "weights", str(rank2), "--json", "--out", str(tmp_path / "rep2"))
    assert r.exit_code == 0, r.output
    low = json.loads(r.stdout)
    assert {t["name"] for t in low["tensors"]} == names  # the rank-2 form sets the same tensors
    assert all(g["relative"] > 0 for g in low["by_type"].values())

    # the noise analysis picks the subject up by its token, and says so
    r = cli("inspect", "noise", "a sks dog", "--seeds", "1", "--scales", "1", "--json", "--out", str(tmp_path / "n"))
    assert r.exit_code == 0, r.output
    noise = json.loads(r.stdout)
    assert noise["subject"] == "sks" and noise["model"] == "tiny-infinity" and noise["subject_hash"]


def test_weights_of_an_unknown_subject(cli, tmp_path):
    r = cli("inspect", "weights", "nobody", "--out", str(tmp_path / "rep"))
    assert r.exit_code == 3 and "nobody" in r.stderr
    r = cli("inspect", "weights", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "rep"))
    assert r.exit_code == 3 and "does not exist" in r.stderr
