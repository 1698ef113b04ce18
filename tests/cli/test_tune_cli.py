"""`arbooth tune`, `arbooth subjects ...` and `arbooth gen` with tuned subjects, on the tiny model."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image

from arbooth_cli import paths
from arbooth_cli.loading import LAST_MODEL_FILE

TINY = ["-m", "tiny-infinity"]
FAST = ["--steps", "2", "--validate-every", "0", "--checkpoint-every", "0", "--log-every", "1"]


@pytest.fixture
def tuned(cli, photos):
    """Tune subject 'sks' (class dog) for 2 steps through the CLI; returns its JSON summary."""

    def make(*extra: str) -> dict:
        r = cli("tune", str(photos), "--token", "sks", "--class", "dog", *TINY, *FAST, "--json", *extra)
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout)

    return make


def _gen_rows(r) -> list[dict]:
    assert r.exit_code == 0, r.output
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_tune_then_gen_uses_the_subject_by_its_token(cli, tuned, tmp_path):
    summary = tuned()
    subject = paths.home() / "subjects" / "sks" / "subject.safetensors"
    assert summary["name"] == "sks" and summary["subject"] == str(subject) and summary["steps"] == 2
    assert summary["model"] == "tiny-infinity" and subject.is_file()
    digest = hashlib.sha256(subject.read_bytes()).hexdigest()

    (paths.home() / LAST_MODEL_FILE).unlink()  # the model must come from the subject, not from memory
    rows = _gen_rows(cli("gen", "sks dog on a wave", "-n", "2", "--json", "--out", str(tmp_path / "out")))
    assert len(rows) == 2
    for row in rows:
        assert row["subject"] == "sks" and row["model"] == "tiny-infinity"
        assert row["subject_hash"] == digest and row["subject_token"] == "sks"
        with Image.open(row["path"]) as im:
            assert im.text["subject"] == "sks"

    rows = _gen_rows(cli("gen", "sks dog on a wave", *TINY, "--subject", "none", "--json",
                         "--out", str(tmp_path / "none")))
    assert rows[0]["subject"] is None and rows[0]["subject_hash"] is None
    rows = _gen_rows(cli("gen", "a dog on a wave", *TINY, "--json", "--out", str(tmp_path / "plain")))
    assert rows[0]["subject"] is None


def test_a_config_file_is_read_and_options_override_it(cli, photos, tmp_path):
    toml = tmp_path / "tune.toml"
    toml.write_text('steps = 3\nclass = "dog"\ntoken = "sks"\nvalidate-every = 0\nlog_every = 1\n'
                    'layers = "ffn"\n')
    r = cli("tune", str(photos), "--config", str(toml), *TINY, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["steps"] == 3 and out["token"] == "sks" and out["cls"] == "dog"
    info = json.loads(cli("subjects", "info", "sks", "--json").stdout)
    assert info["config"]["layers"] == ["ffn"] and info["config"]["validate_every"] == 0

    r = cli("tune", str(photos), "--config", str(toml), *TINY, "--steps", "2", "--name", "other", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["steps"] == 2 and out["name"] == "other"


def test_a_preset_sets_what_the_config_file_and_options_do_not(cli, photos, tmp_path):
    """--preset fast: an early stop and a prior pool of 200, below a --config file and the options
    given; an unknown preset is refused before any work."""
    from arbooth_cli.config import TUNE_PRESETS

    toml = tmp_path / "tune.toml"
    toml.write_text("prior_pool = 6\n")
    r = cli("tune", str(photos), "--token", "sks", "--class", "dog", *TINY, "--steps", "3", "--validate-every", "0",
            "--preset", "fast", "--config", str(toml), "--json")
    assert r.exit_code == 0, r.output
    config = json.loads(cli("subjects", "info", "sks", "--json").stdout)["config"]
    assert config["early_stop"] == TUNE_PRESETS["fast"]["early_stop"] == 2 and config["prior_pool"] == 6
    r = cli("tune", str(photos), "--token", "sks", "--class", "dog", *TINY, "--preset", "fastest", "--name", "x")
    assert r.exit_code == 4 and "unknown --preset 'fastest'" in r.stderr
    assert not (paths.home() / "subjects" / "x").exists()


def test_an_unknown_config_key_is_invalid_input(cli, photos, tmp_path):
    toml = tmp_path / "tune.toml"
    toml.write_text('token = "sks"\nclass = "dog"\nlearning_rate = 0.1\n')
    r = cli("tune", str(photos), "--config", str(toml), *TINY)
    assert r.exit_code == 4 and "learning_rate" in r.stderr
    assert not (paths.home() / "subjects").exists()


@pytest.mark.parametrize(("args", "code", "needle"), [
    (["--token", "s ks", "--class", "dog"], 4, "--token must be one word"),
    (["--token", "sks"], 2, "--class"),
    (["--token", "sks", "--class", "dog", "--layers", "mlp"], 4, "--layers"),
    (["--token", "sks", "--class", "dog", "--steps", "0"], 4, "--steps must be >= 1"),
    (["--token", "sks", "--class", "dog", "--zoom-places", "0"], 4, "--zoom-places must be >= 1"),
    (["--token", "sks", "--class", "dog", "--move-places", "1"], 4, "--move-places must be 0 (off) or at least 2"),
    (["--token", "sks", "--class", "dog", "--move-places", "-1"], 4, "--move-places must be 0 (off) or at least 2"),
    (["--token", "sks", "--class", "dog", "--move-places", "2"], 4, "captions say no places"),
    (["--token", "sks", "--class", "dog", "--recolour", "9"], 4, "--recolour must be from 0 (off) to 8"),
    (["--token", "sks", "--class", "dog", "--recolour", "-1"], 4, "--recolour must be from 0 (off) to 8"),
    (["--token", "sks", "--class", "dog", "--recolour", "1"], 4, "captions name no background colours"),
    (["--token", "sks", "--class", "dog", "--photo-share", "1"], 4, "--photo-share must be in [0, 1)"),
    (["--token", "sks", "--class", "dog", "--zoom-in", "0.5"], 4, "--zoom-in must be 0 (off) or above 1"),
    (["--token", "sks", "--class", "dog", "--zoom-in", "10"], 4, "at most 4"),
])
def test_bad_tune_options_exit_codes(cli, photos, args, code, needle):
    r = cli("tune", str(photos), *TINY, *args)
    assert r.exit_code == code, r.output
    assert needle in r.stderr
    assert not (paths.home() / "subjects").exists()


def test_an_existing_subject_needs_overwrite(cli, tuned, photos):
    tuned()
    r = cli("tune", str(photos), "--token", "sks", "--class", "dog", *TINY, *FAST)
    assert r.exit_code == 4 and "already exists" in r.stderr and "--overwrite" in r.stderr
    assert tuned("--overwrite")["name"] == "sks"


def test_gen_with_an_unknown_subject_is_not_found(cli, tmp_path):
    r = cli("gen", "sks dog", *TINY, "--subject", "nope", "--out", str(tmp_path / "out"))
    assert r.exit_code == 3 and "no subject named 'nope'" in r.stderr
    assert not (tmp_path / "out").exists()


def test_a_subject_of_another_base_model_is_refused(cli, tuned, tmp_path):
    """--delta FILE whose metadata names infinity-2b cannot be used on tiny-infinity."""
    from safetensors.torch import load_file

    from arbooth_cli.checkpoint_io import write_safetensors
    from arbooth_cli.subjects import read_subject_header

    real = Path(tuned()["subject"])
    meta, _ = read_subject_header(real)
    foreign = tmp_path / "foreign.safetensors"
    write_safetensors(foreign, load_file(str(real)), {**meta, "base_model": "infinity-2b"})
    r = cli("gen", "sks dog", "--delta", str(foreign), *TINY, "--out", str(tmp_path / "out"))
    assert r.exit_code == 4, r.output
    assert "infinity-2b" in r.stderr
    assert not list((tmp_path / "out").glob("*.png"))


def test_subjects_list_info_export_rm(cli, tuned, tmp_path):
    r = cli("subjects", "list")
    assert r.exit_code == 0 and r.stdout == "" and "no subjects yet" in r.stderr
    tuned()
    r = cli("subjects", "list")
    assert r.exit_code == 0
    header, row = r.stdout.splitlines()[:2]
    assert header.split()[:3] == ["NAME", "TOKEN", "CLASS"]
    assert row.split()[:5] == ["sks", "sks", "dog", "tiny-infinity", "2"]
    r = cli("subjects", "list", "--json")
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 1 and rows[0]["name"] == "sks" and rows[0]["base_model"] == "tiny-infinity"

    r = cli("subjects", "info", "sks")
    assert r.exit_code == 0 and "tiny-infinity" in r.stdout and "2 steps" in r.stdout
    info = json.loads(cli("subjects", "info", "sks", "--json").stdout)
    src = Path(info["path"])
    assert info["token"] == "sks" and info["cls"] == "dog" and info["steps"] == 2
    assert info["config"]["steps"] == 2 and info["size"] == src.stat().st_size

    dest = tmp_path / "sks-dog.safetensors"
    r = cli("subjects", "export", "sks", str(dest))
    assert r.exit_code == 0 and r.stdout.strip() == str(dest)
    assert dest.read_bytes() == src.read_bytes()
    dest.write_bytes(b"mine")
    r = cli("subjects", "export", "sks", str(dest))
    assert r.exit_code == 4 and "already exists" in r.stderr and dest.read_bytes() == b"mine"
    assert cli("subjects", "export", "sks", str(dest), "--overwrite").exit_code == 0
    assert dest.read_bytes() == src.read_bytes()
    r = cli("subjects", "export", "sks", str(tmp_path))  # a folder: named after the subject
    assert r.exit_code == 0 and (tmp_path / "sks.safetensors").read_bytes() == src.read_bytes()

    assert cli("subjects", "rm", "sks").exit_code == 0
    assert not src.exists()
    r = cli("subjects", "info", "sks")
    assert r.exit_code == 3 and "no subject named 'sks'" in r.stderr
    assert cli("subjects", "rm", "sks").exit_code == 3
