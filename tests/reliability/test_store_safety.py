"""Names that become paths never leave their store; damaged or vanished subjects are one-line
errors, never a silent run without the subject."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from arbooth_cli import paths
from arbooth_cli.config import GenConfig, PromptJob
from arbooth_cli.errors import CheckpointError, NotFoundError
from arbooth_cli.jobs.gen import generate

TINY = ["-m", "tiny-infinity"]
FAST = ["--steps", "2", "--validate-every", "0", "--checkpoint-every", "0"]
BAD_NAMES = ["../runs", "", ".", "..", "a/b", "/tmp", "..\\x", "-rf"]


@pytest.fixture
def home_with_runs(tmp_path: Path) -> tuple[Path, Path]:
    """The store's home with a run folder in it, and a folder outside it: neither may be touched."""
    home = paths.home()
    (home / "runs" / "keep").mkdir(parents=True)
    (home / "subjects").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "mine.txt").write_text("mine")
    return home, outside


def _untouched(home: Path, outside: Path) -> bool:
    return (home / "runs" / "keep").is_dir() and (outside / "mine.txt").read_text() == "mine"


@pytest.mark.parametrize("name", BAD_NAMES + ["{outside}"])
@pytest.mark.parametrize("command", [
    ["subjects", "rm", "{name}"],
    ["subjects", "info", "{name}"],
    ["subjects", "export", "{name}", "{dest}"],
    ["gen", "a red star", "--subject", "{name}", "--out", "{dest}"],
    ["inspect", "weights", "{name}", "--out", "{dest}"],
    ["eval", "{name}"],
    ["models", "rm", "{name}"],
    ["models", "info", "{name}"],
])
def test_a_name_never_leads_out_of_its_store(cli, home_with_runs, tmp_path, command, name):
    home, outside = home_with_runs
    name = str(outside) if name == "{outside}" else name
    args = [a.replace("{name}", name).replace("{dest}", str(tmp_path / "dest")) for a in command]
    r = cli(*args)
    assert r.exit_code in (2, 3, 4), r.output  # usage, not found or invalid: documented codes
    assert "Traceback" not in r.output
    if r.exit_code != 2:  # the parser's usage errors come in their own box
        assert r.stderr.startswith("error: ") and r.stderr.count("\n") <= 2, r.stderr
    assert _untouched(home, outside)


def test_tune_refuses_a_name_that_is_no_store_name(cli, tmp_path):
    photos = tmp_path / "p"
    photos.mkdir()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(photos / "a.png")
    for name in ("../runs", "a/b", "."):
        r = cli("tune", str(photos), "--token", "sks", "--class", "dog", "--name", name, *TINY, *FAST)
        assert r.exit_code == 4 and "--name" in r.stderr, r.output
    r = cli("tune", str(photos), "--token", "ſks", "--class", "dog", *TINY, *FAST)  # a Unicode token
    assert r.exit_code == 4 and "--token" in r.stderr and "--name" in r.stderr, r.output


def test_a_link_out_of_the_store_is_not_followed(cli, home_with_runs):
    home, outside = home_with_runs
    (home / "subjects" / "evil").symlink_to(outside, target_is_directory=True)
    r = cli("subjects", "rm", "evil")
    assert r.exit_code == 4 and "link" in r.stderr
    assert _untouched(home, outside)


@pytest.fixture
def tuned(cli, tmp_path) -> Path:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, colour in enumerate([(200, 40, 40), (40, 180, 60)]):
        Image.new("RGB", (64, 64), colour).save(photos / f"p{i}.png")
    r = cli("tune", str(photos), "--token", "sks", "--class", "dog", *TINY, *FAST)
    assert r.exit_code == 0, r.output
    return paths.home() / "subjects" / "sks" / "subject.safetensors"


def test_a_truncated_subject_is_listed_as_damaged_and_never_silently_skipped(cli, tuned, tmp_path):
    data = tuned.read_bytes()
    tuned.write_bytes(data[: len(data) // 2])
    r = cli("subjects", "list")
    assert r.exit_code == 0 and "damaged" in r.stdout and "sks" in r.stdout and "damaged" in r.stderr
    rows = [json.loads(line) for line in cli("subjects", "list", "--json").stdout.splitlines()]
    assert rows == [{"name": "sks", "token": "sks", "damaged": rows[0]["damaged"]}] and "truncated" in rows[0]["damaged"]
    r = cli("gen", "a sks dog", *TINY, "--out", str(tmp_path / "o"))
    assert r.exit_code == 4 and "damaged" in r.stderr and "subjects rm sks" in r.stderr, r.output
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("*.png"))
    assert cli("subjects", "rm", "sks").exit_code == 0 and not tuned.parent.exists()


def test_a_bit_flipped_subject_fails_its_checksum(cli, tuned, tmp_path):
    data = bytearray(tuned.read_bytes())
    data[-3] ^= 0x10  # inside the last tensor's data: the header still reads
    tuned.write_bytes(bytes(data))
    r = cli("gen", "a sks dog", *TINY, "--out", str(tmp_path / "o"))
    assert r.exit_code == 4 and "checksum" in r.stderr, r.output
    assert not list((tmp_path / "o").glob("*.png"))


def test_a_subject_removed_while_gen_starts_is_a_one_line_error(tuned, tmp_path):
    def remove(kind, data):
        if kind == "plan":  # after the plan is made, before the subject is read
            shutil.rmtree(tuned.parent)

    config = GenConfig(prompts=(PromptJob("a sks dog"),), model="tiny-infinity", out_dir=str(tmp_path / "o"))
    with pytest.raises(NotFoundError, match="was removed") as info:
        generate(config, on_event=remove)
    assert info.value.exit_code == 3


def test_a_subject_file_of_another_kind_is_a_checkpoint_error(tmp_path):
    bogus = tmp_path / "x.safetensors"
    bogus.write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    config = GenConfig(prompts=(PromptJob("a red star"),), delta=str(bogus), out_dir=str(tmp_path / "o"))
    with pytest.raises(CheckpointError, match="not an arbooth subject file"):
        generate(config)


def test_export_into_a_folder_that_cannot_be_made_is_a_resource_error(cli, tuned, tmp_path):
    (tmp_path / "file.txt").write_text("in the way")
    r = cli("subjects", "export", "sks", str(tmp_path / "file.txt" / "sks.safetensors"))
    assert r.exit_code == 5 and r.stderr.startswith("error: cannot write") and "ARBOOTH_HOME" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []


def test_a_full_disk_while_writing_output_names_the_output_in_its_hint(tmp_path):
    import errno

    from arbooth_cli.atomic import write_file_atomic
    from arbooth_cli.errors import DiskFullError
    from arbooth_cli.sampling.writers import OUT_HINT

    def full(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError) as info:
        write_file_atomic(tmp_path / "x.png", full, hint=OUT_HINT)
    assert info.value.exit_code == 5 and "--out" in (info.value.hint or "") and not list(tmp_path.iterdir())
