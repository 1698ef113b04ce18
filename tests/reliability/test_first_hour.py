"""A newcomer's first hour, as tests: tokens that would hijack prompts, validation prompts the
model can draw, eval from another folder, Ctrl-C while the prior pool is drawn, --quiet anywhere."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from arbooth_cli import paths
from arbooth_cli.cli import hoist_global_flags
from arbooth_cli.config import TuneConfig
from arbooth_cli.jobs.tune import TuneInterrupted, tune

REPO = Path(__file__).resolve().parents[2]
SPLIT_HEART = REPO / "examples" / "subjects" / "split-heart"


@pytest.mark.parametrize("token", ["red", "Star", "left", "background"])
def test_a_token_the_toy_model_reads_as_a_word_is_refused_unless_allowed(cli, token, tmp_path):
    args = ["tune", str(SPLIT_HEART), "--token", token, "--class", "heart", "--steps", "1", "--validate-every", "0",
            "--checkpoint-every", "0", "--prior-pool", "2"]
    r = cli(*args)
    assert r.exit_code == 4 and "--allow-common-token" in r.stderr and "toy model" in r.stderr, r.output
    assert cli(*args, "--allow-common-token").exit_code == 0


def test_a_subject_is_named_by_its_token_in_any_case(cli, photos, tmp_path):
    r = cli("tune", str(photos), "--token", "sks", "--class", "dog", "-m", "tiny-infinity", "--steps", "1",
            "--validate-every", "0", "--checkpoint-every", "0")
    assert r.exit_code == 0, r.output
    r = cli("gen", "a SKS dog", "--json", "--out", str(tmp_path / "o"))
    assert r.exit_code == 0 and '"subject": "sks"' in r.stdout, r.output


def test_the_toy_models_validation_prompts_are_in_its_world(photos):
    from arbooth_cli.toyworld.scene import parse_caption

    result = tune(TuneConfig(photos=str(SPLIT_HEART), token="sks", cls="heart", steps=2, validate_every=2,
                             checkpoint_every=0, prior_pool=4))
    prompts = [str(p) for p in result.validation_images]
    assert len(prompts) == 2
    from arbooth_cli.sampling.writers import read_png_metadata

    for path in result.validation_images:
        text = read_png_metadata(Path(path))["prompt"]
        parsed = parse_caption(text, names={"sks": "heart"})
        assert not parsed.unknown and parsed.background and parsed.shapes[0]["position"], text


def test_eval_finds_the_photos_from_any_folder(cli, tmp_path, monkeypatch):
    photos = tmp_path / "somewhere" / "photos"
    photos.parent.mkdir()
    import shutil

    shutil.copytree(SPLIT_HEART, photos)
    monkeypatch.chdir(photos.parent)
    r = cli("tune", "photos", "--token", "sks", "--class", "heart", "--steps", "2", "--validate-every", "0",
            "--checkpoint-every", "0", "--prior-pool", "4")
    assert r.exit_code == 0, r.output
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    r = cli("eval", "sks", "--seeds", "1", "--json")
    assert r.exit_code == 0, r.output


def _config(photos: Path, name: str, **kw) -> TuneConfig:
    return TuneConfig(photos=str(photos), token="sks", cls="dog", model="tiny-infinity", name=name, steps=6,
                      validate_every=0, checkpoint_every=0, log_every=1, prior_pool=12, **kw)


def test_ctrl_c_while_the_prior_pool_is_drawn_keeps_it_and_resume_goes_on(photos):
    """The pool is drawn 4 samples a batch on a CPU: Ctrl-C after the first batch keeps those 4,
    --resume draws the other 8, and the subject is bit for bit that of an uninterrupted run."""
    from arbooth_cli.tuning.pool_store import PoolStore

    def interrupt(kind, data):
        if kind == "pool" and data["done"] == 4:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TuneInterrupted) as info:
        tune(_config(photos, "cut"), on_event=interrupt)
    assert info.value.pool == (4, 12) and info.value.checkpoint is None
    seen: list[dict] = []
    cut = tune(_config(photos, "cut", resume=True), on_event=lambda k, d: seen.append(d) if k == "pool" else None)
    assert [d["done"] for d in seen] == [8, 12]
    store = PoolStore(paths.home())
    for kept in store.list():  # the uninterrupted run draws its own pool
        store.remove(kept.key)
    drawn: list[dict] = []
    whole = tune(_config(photos, "whole"), on_event=lambda k, d: drawn.append(d) if k == "pool" else None)
    assert not any(d.get("cached") for d in drawn)
    a, b = load_file(whole.subject), load_file(cut.subject)
    assert set(a) == set(b) and all(torch.equal(a[n], b[n]) for n in a)


def test_a_second_tune_of_the_same_class_reuses_the_kept_pool_bit_for_bit(cli, photos, tmp_path):
    """Two subjects of one class: the second tune skips drawing the pool and says so; removing the
    pool and tuning again (drawn afresh) gives the same subject bit for bit."""
    from arbooth_cli.tuning.pool_store import PoolStore

    first = tune(_config(photos, "first"))
    assert Path(first.run_dir).is_dir() and not (Path(first.run_dir) / "prior-pool.safetensors").exists()
    notes: list[str] = []
    second = tune(_config(photos, "second"), on_event=lambda k, d: notes.append(d["message"]) if k == "note" else None)
    assert any("reused the prior pool" in n for n in notes)
    store = PoolStore(paths.home())
    (kept,) = store.list()
    assert kept.samples == 12 and kept.model == "tiny-infinity" and kept.class_prompts == ["a photo of dog"]
    r = cli("pools", "list", "--json")
    assert r.exit_code == 0 and kept.key in r.stdout
    assert cli("pools", "rm", kept.key).exit_code == 0 and store.list() == []
    fresh = tune(_config(photos, "fresh"))
    a, b = load_file(second.subject), load_file(fresh.subject)
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_global_options_may_follow_the_subcommand(cli, tmp_path):
    assert hoist_global_flags(["gen", "x", "--quiet", "--", "-q"]) == ["--quiet", "gen", "x", "--", "-q"]
    from arbooth_cli.cli import build_app
    from typer.testing import CliRunner

    r = CliRunner().invoke(build_app(), hoist_global_flags(["gen", "a red star on the left, blue background",
                                                            "--out", str(tmp_path / "o"), "-q"]), prog_name="arbooth")
    assert r.exit_code == 0 and r.stderr == "" and r.stdout.strip().endswith(".png"), r.output


@pytest.mark.parametrize(("args", "needle"), [
    (["a photo of a dog on a surfboard"], "words the toy model does not know: dog, surfboard"),
    (["a red star"], "no position for the star"),
    (["a red star on the left, blue background", "--aspect", "16:9"], "trained on h/w 1 only"),
])
def test_gen_warns_once_about_what_the_model_cannot_draw_and_strict_refuses(cli, tmp_path, args, needle):
    r = cli("gen", *args, "-n", "2", "--out", str(tmp_path / "o"))
    assert r.exit_code == 0 and r.stderr.count("warning:") == 1 and needle in r.stderr, r.output
    assert "e.g. 'a red star on the left, blue background'" in r.stderr
    r = cli("gen", *args, "--strict", "--out", str(tmp_path / "s"))
    assert r.exit_code == 4 and needle in r.stderr and not (tmp_path / "s").exists(), r.output


def test_gen_does_not_warn_about_prompts_of_the_toy_world(cli, tmp_path):
    r = cli("gen", "a small blue heart at the top, yellow background", "a red star on the left and a green circle "
            "on the right, white and black striped background", "--out", str(tmp_path / "o"))
    assert r.exit_code == 0 and "warning" not in r.stderr, r.output


def test_gen_says_which_subject_it_applies_and_why(cli, photos, tmp_path):
    r = cli("tune", str(photos), "--token", "sks", "--class", "dog", "-m", "tiny-infinity", "--steps", "1",
            "--validate-every", "0", "--checkpoint-every", "0")
    assert r.exit_code == 0, r.output
    r = cli("gen", "a sks dog", "a dog", "--out", str(tmp_path / "o"))
    assert r.exit_code == 0 and "subject 'sks' in 1 images (the prompt names its token 'sks'" in r.stderr, r.output
    r = cli("gen", "a sks dog", "--subject", "none", "--out", str(tmp_path / "n"))
    assert r.exit_code == 0 and "subject 'sks'" not in r.stderr
