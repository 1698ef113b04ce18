"""More edges: markup in prompts, damaged store records and kept pools, links in the store, damaged
checkpoint states, checks that must come before any loading."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from arbooth_cli import paths
from arbooth_cli.config import GenConfig, PromptJob, TuneConfig
from arbooth_cli.errors import CheckpointError, InvalidInputError
from arbooth_cli.jobs.tune import TuneInterrupted, tune

TINY = ["-m", "tiny-infinity"]
FAST = ["--steps", "2", "--validate-every", "0", "--checkpoint-every", "0"]


def config(photos: Path, **kw) -> TuneConfig:
    base = dict(photos=str(photos), token="sks", cls="dog", model="tiny-infinity", steps=2, validate_every=0,
                checkpoint_every=0, log_every=1)
    return TuneConfig(**{**base, **kw})


@pytest.mark.parametrize("prompt", ["a red star on the left [/b]", "a [bold]red[/bold] star"])
def test_brackets_in_a_prompt_are_text_not_markup(cli, tmp_path, prompt):
    r = cli("gen", prompt, "--out", str(tmp_path / "o"))
    assert r.exit_code == 0 and prompt in r.stderr, r.output  # quoted whole in the warning


@pytest.mark.parametrize("record", ['{"files": []}', '{"token": 5, "files": {"subject.safetensors": 7}}', "[1]"])
def test_a_damaged_store_record_is_no_traceback(cli, photos, tmp_path, record):
    assert cli("tune", str(photos), "--token", "sks", "--class", "dog", *TINY, *FAST).exit_code == 0
    (paths.home() / "subjects" / "sks" / "record.json").write_text(record)
    assert cli("subjects", "list").exit_code == 0
    r = cli("gen", "a sks dog", "--out", str(tmp_path / "o"))
    assert r.exit_code == 0 and "subject 'sks'" in r.stderr, r.output


def test_a_damaged_subject_without_a_record_is_still_refused_by_its_name(cli, photos, tmp_path):
    assert cli("tune", str(photos), "--token", "sks", "--class", "dog", *TINY, *FAST).exit_code == 0
    folder = paths.home() / "subjects" / "sks"
    (folder / "record.json").unlink()
    data = (folder / "subject.safetensors").read_bytes()
    (folder / "subject.safetensors").write_bytes(data[: len(data) // 2])
    r = cli("gen", "a sks dog", "--out", str(tmp_path / "o"))
    assert r.exit_code == 4 and "damaged" in r.stderr, r.output


def test_a_linked_subject_folder_is_not_used_by_its_token_either(cli, photos, tmp_path):
    assert cli("tune", str(photos), "--token", "sks", "--class", "dog", *TINY, *FAST, "--name", "real").exit_code == 0
    outside = tmp_path / "outside"
    (paths.home() / "subjects" / "real").rename(outside)
    (paths.home() / "subjects" / "evil").symlink_to(outside, target_is_directory=True)
    r = cli("gen", "a sks dog", "--json", "--out", str(tmp_path / "o"))
    assert r.exit_code == 0 and '"subject": null' in r.stdout, r.output


def test_inspect_weights_refuses_a_bit_flipped_subject_as_gen_does(cli, photos, tmp_path):
    assert cli("tune", str(photos), "--token", "sks", "--class", "dog", *TINY, *FAST).exit_code == 0
    f = paths.home() / "subjects" / "sks" / "subject.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0x10
    f.write_bytes(bytes(data))
    r = cli("inspect", "weights", "sks", "--out", str(tmp_path / "r"))
    assert r.exit_code == 4 and "checksum" in r.stderr, r.output


def test_a_damaged_kept_pool_is_drawn_again(photos):
    first = tune(config(photos, name="a"))
    (pool,) = (paths.home() / "pools").glob("*.safetensors")
    pool.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    events: list[dict] = []
    tune(config(photos, name="b"), on_event=lambda k, d: events.append(d) if k == "pool" else None)
    assert not any(d.get("cached") for d in events) and first.steps == 2
    assert pool.stat().st_size > 100  # kept again, whole


def test_a_validation_prompt_without_the_token_is_refused_before_loading(photos):
    events: list[str] = []
    with pytest.raises(InvalidInputError, match="does not contain the subject token"):
        tune(config(photos, validate_every=1, validation_prompts=("a dog on the beach",)),
             on_event=lambda kind, data: events.append(kind))
    assert "loaded" not in events


def test_a_damaged_checkpoint_state_is_a_checkpoint_error(photos):
    def stop(kind, data):
        if kind == "step" and data["step"] == 1:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TuneInterrupted):
        tune(config(photos, steps=3), on_event=stop)
    state = paths.runs_dir(paths.home()) / "sks" / "checkpoint" / "state.json"
    state.write_text(json.dumps({"step": 1}))
    with pytest.raises(CheckpointError, match="damaged"):
        tune(config(photos, steps=3, resume=True))


def test_library_configs_check_their_types():
    from arbooth_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="steps must be an integer"):
        config(Path("p"), steps="10").validate()
    with pytest.raises(ConfigError, match="seed must be an integer"):
        GenConfig(prompts=(PromptJob("a red star"),), seed="3").validate()
    with pytest.raises(ConfigError, match="seed \\+ n - 1"):
        GenConfig(prompts=(PromptJob("a red star"),), seed=2**63 - 1, num_images=3).validate()


def test_a_pool_that_cannot_be_kept_does_not_stop_the_run(photos):
    paths.home().mkdir(parents=True, exist_ok=True)
    (paths.home() / "pools").write_text("a file where the pools folder goes")
    notes: list[str] = []
    result = tune(config(photos), on_event=lambda k, d: notes.append(d["message"]) if k == "note" else None)
    assert Path(result.subject).is_file() and any("could not be kept" in n for n in notes)
