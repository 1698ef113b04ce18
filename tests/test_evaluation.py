"""`arbooth eval`: the toy world's exact counts, the real-model metrics and the command, on a toy
subject tuned for 3 steps and a tiny-infinity subject tuned for 1 (plumbing and honesty of the
numbers, not quality)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from arbooth_cli.cli import build_app
from arbooth_cli.config import EvalConfig, TuneConfig
from arbooth_cli.errors import NoToySubjectError, NotFoundError
from arbooth_cli.analysis.toy_scores import pixel_diversity, read_toy_subject, toy_scores
from arbooth_cli.jobs.evaluate import evaluate
from arbooth_cli.toyworld.render import render
from arbooth_cli.toyworld.scene import Background, Scene, Shape
from arbooth_cli.toyworld.subjects import (
    SUBJECTS,
    class_prompts,
    render_subject,
    subject_photos,
    subject_prompts,
)
from tiny_feature_models import save_clip, save_dino

REPO = Path(__file__).resolve().parents[1]
STAR = SUBJECTS["twotone-star"]
TOY_METRICS = {"subject_fidelity", "text_fidelity", "base_fidelity", "drift", "diversity", "distinct"}
REAL_METRICS = {"dino", "clip_i", "clip_t", "diversity", "drift", "pres"}


def _tune(root: Path, **kw) -> Path:
    """A subject tuned in its own home; returns its file (tests pass it as SUBJECT)."""
    from arbooth_cli.jobs.tune import tune

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ARBOOTH_HOME", str(root / "home"))
        mp.setenv("ARBOOTH_LOAD_PLUGINS", "")
        mp.setenv("HF_HUB_OFFLINE", "1")
        base = {"token": "sks", "validate_every": 0, "checkpoint_every": 0, "log_every": 1, "batch_size": 2,
                "prior_pool": 2, "run_dir": str(root / "run")}
        return Path(tune(TuneConfig(**{**base, **kw})).subject)


@pytest.fixture(scope="module")
def toy_subject(tmp_path_factory) -> Path:
    return _tune(tmp_path_factory.mktemp("toy"), photos=str(REPO / "examples/subjects/twotone-star"), cls="star",
                 model="toy", steps=3)


@pytest.fixture(scope="module")
def tiny_subject(tmp_path_factory) -> Path:
    return _tune(tmp_path_factory.mktemp("tiny"), photos=str(REPO / "examples/subjects/twotone-star"), cls="dog",
                 model="tiny-infinity", steps=1)


@pytest.fixture(scope="module")
def feature_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    return {"dino": save_dino(root / "dino"), "clip": save_clip(root / "clip")}


#: what `arbooth eval` notes on stderr once a model is loaded: absent when an input was refused first
LOADED_NOTE = " on cpu ("


def cli(*args: str):
    return CliRunner().invoke(build_app(), list(args), prog_name="arbooth")


def _with_photos(src: Path, dst: Path, photos: str) -> Path:
    """A copy of a subject file whose metadata records another photos folder."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from arbooth_cli.checkpoint_io import write_safetensors

    with safe_open(str(src), "pt") as f:
        meta = dict(f.metadata())
    cfg = json.loads(meta["config"])
    cfg["photos"] = photos
    meta["config"] = json.dumps(cfg)
    write_safetensors(dst, load_file(str(src)), meta)
    return dst


def _flat_photos(folder: Path) -> Path:
    """Five toy scenes of plain (one-colour) stars: the toy world, but none of its subjects."""
    from PIL import Image

    folder.mkdir()
    for i, (colour, bg) in enumerate([("red", "blue"), ("yellow", "green"), ("red", "black"), ("yellow", "white"),
                                      ("red", "green")]):
        Image.fromarray(render(Scene((Shape("star", colour, "center"),), Background((bg,))))).save(folder / f"{i}.png")
    return folder


def report_photos(report) -> list[np.ndarray]:
    from PIL import Image

    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(Path(report.photos).glob("*.png"))]


def _prompts_file(path: Path, *lines: str) -> str:
    path.write_text("\n".join(["# eval prompts", *lines]) + "\n", encoding="utf-8")
    return str(path)


# ---- the toy world's measures, on images whose answers are known -------------------------------


def test_toy_scores_count_what_the_detector_sees():
    left = render_subject(STAR, position="left", size="large", background=("green",))
    left_blue = render_subject(STAR, position="left", size="large", background=("blue",))
    right_blue = render_subject(STAR, position="right", size="large", background=("blue",))
    flat = render(Scene((Shape("star", "red", "right"),), Background(("blue",))))
    prompts = ["a sks star on the left, green background", "a sks star on the right near a tree, blue background"]
    classes = ["a star on the left, green background", "a star on the right near a tree, blue background"]
    pixels = {
        "subject": np.stack([[left, left], [left_blue, flat]]),  # 3 show it; prompt 2 seed 0 on the wrong side
        "base": np.stack([[flat, flat], [right_blue, flat]]),
        "class": np.stack([[flat, flat], [flat, right_blue]]),
    }
    metrics, rows, images = toy_scores(STAR, "sks", prompts, classes, pixels, [0, 1])
    got = {k: (m.hits, m.n) for k, m in metrics.items() if m.hits is not None}
    assert got == {"subject_fidelity": (3, 4), "text_fidelity": (2, 4), "base_fidelity": (1, 4), "drift": (1, 4),
                   "distinct": (3, 4)}
    assert metrics["subject_fidelity"].value == 0.75 and metrics["text_fidelity"].value == 0.5
    assert [(r.subject_hits, r.text_hits, r.base_hits, r.class_hits, r.distinct) for r in rows] == [
        (2, 2, 0, 0, 1), (1, 0, 1, 1, 2)]
    assert rows[0].unchecked == [] and rows[1].unchecked == ["tree"]
    assert rows[0].diversity == 0.0 and rows[1].diversity == pytest.approx(
        np.abs(left_blue.astype(int) - flat.astype(int)).mean() / 255)
    assert metrics["diversity"].value == pytest.approx((rows[0].diversity + rows[1].diversity) / 2)
    assert len(images) == 12 and {i.set for i in images} == {"subject", "base", "class"}
    wrong_side = next(i for i in images if i.set == "subject" and i.prompt_index == 1 and i.seed == 0)
    assert wrong_side.found and wrong_side.position == "left"
    assert wrong_side.checks == {"subject": True, "position": False, "size": None, "background": True, "all": False}
    assert all(i.checks is None for i in images if i.set != "subject")

    one_seed, _, _ = toy_scores(STAR, "sks", prompts[:1], classes[:1], {k: v[:1, :1] for k, v in pixels.items()}, [0])
    assert one_seed["diversity"].value is None and one_seed["distinct"].value is None


def test_pixel_diversity_is_a_mean_absolute_difference():
    a = np.zeros((4, 4, 3), np.uint8)
    b = np.full((4, 4, 3), 255, np.uint8)
    assert pixel_diversity(np.stack([a, b])) == (1.0, 2)
    assert pixel_diversity(np.stack([a, a, b])) == (pytest.approx(2 / 3), 2)
    assert pixel_diversity(a[None]) == (None, 1)


def test_a_toy_subject_is_read_from_its_photos(tmp_path):
    from PIL import Image

    for name, subject in SUBJECTS.items():
        folder = REPO / "examples/subjects" / name
        photos = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))]
        look, hits = read_toy_subject(photos, folder)
        assert look.cls == subject.cls and set(look.colours) == set(subject.pattern.colours)
        assert hits == {look.name: 5}
        others = [img for o in SUBJECTS.values() if o is not subject for img, _ in subject_photos(o)]
        assert not any(look.find(img).found for img in others)
    flat = _flat_photos(tmp_path / "flat")
    flat_photos = [np.asarray(Image.open(p)) for p in sorted(flat.glob("*.png"))]
    with pytest.raises(NoToySubjectError) as e:
        read_toy_subject(flat_photos, flat)
    assert e.value.exit_code == 4 and str(flat) in str(e.value) and "a plain red star" in str(e.value)
    assert "two or more colours" in e.value.hint and "--photos" not in e.value.hint
    two = [np.asarray(Image.open(REPO / "examples/subjects/twotone-star" / f"0{i}.png").convert("RGB")) for i in (1, 2)]
    with pytest.raises(NoToySubjectError) as e:  # the star's pattern wins the vote, but shows in 2 photos only
        read_toy_subject(two + flat_photos[:3], flat)
    assert "found again in only 2 of 5 (3 needed)" in str(e.value)


# ---- a tuned toy subject, end to end -----------------------------------------------------------

PROMPTS = ("a sks star on the left, green background",
           "a sks star near a tree at the bottom, white background",
           "a red sks star on the left and a blue circle on the right, black background")


def test_eval_of_a_toy_subject_is_consistent_and_repeatable(toy_subject, tmp_path):
    config = EvalConfig(subject=str(toy_subject), prompts_file=_prompts_file(tmp_path / "p.txt", *PROMPTS), seeds=2,
                        out_dir=str(tmp_path / "out"))
    events: list[str] = []
    report = evaluate(config, on_event=lambda kind, data: events.append(kind))
    assert events[:3] == ["photos", "loaded", "plan"] and events[-1] == "metrics"
    assert report.mode == "toy" and report.toy_subject.startswith("star of ")
    assert report.photo_hits == {report.toy_subject: 5}
    assert report.token == "sks" and report.cls == "star" and report.seeds == [0, 1] and report.samples == 18
    assert [r.prompt for r in report.prompts] == list(PROMPTS)
    assert report.prompts[0].class_prompt == "a star on the left, green background"
    assert report.prompts[0].unchecked == [] and report.prompts[1].unchecked == ["tree"]
    assert report.prompts[2].unchecked == ["red (a colour of the subject)", "blue circle (a second shape)"]
    assert {k: v.shape for k, v in report.pixels.items()} == {s: (3, 2, 64, 64, 3) for s in ("subject", "class", "base")}

    # every metric is a count of the per-image records, and the records are the detector's verdicts
    recs = {s: [i for i in report.images if i.set == s] for s in ("subject", "class", "base")}
    m = report.metrics
    assert set(m) == TOY_METRICS
    assert (m["subject_fidelity"].hits, m["subject_fidelity"].n) == (sum(i.found for i in recs["subject"]), 6)
    assert m["text_fidelity"].hits == sum(bool(i.checks["all"]) for i in recs["subject"])
    assert m["text_fidelity"].hits <= m["subject_fidelity"].hits
    assert m["drift"].hits == sum(i.found for i in recs["class"])
    look, _ = read_toy_subject(report_photos(report), report.photos)
    base = [look.find(report.pixels["base"][p, s]).found for p in range(3) for s in range(2)]
    assert m["base_fidelity"].hits == sum(base) == sum(i.found for i in recs["base"])
    assert [i.found for i in recs["base"]] == base
    assert sum(r.subject_hits for r in report.prompts) == m["subject_fidelity"].hits
    div = [pixel_diversity(report.pixels["subject"][p])[0] for p in range(3)]
    assert m["diversity"].value == pytest.approx(sum(div) / 3) and 0 <= m["diversity"].value <= 1
    for metric in m.values():
        assert metric.value is None or 0.0 <= metric.value <= 1.0

    # the report on disk is the report returned; the grids are there; nothing half-written
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["base.png", "class.png", "report.json", "subject.png"]
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report.to_dict(), default=str))
    assert "pixels" not in on_disk and set(on_disk["metrics"]) == TOY_METRICS

    # the same seeds give the same images and the same numbers
    again = evaluate(config.with_(out_dir=None))
    assert again.to_dict()["metrics"] == report.to_dict()["metrics"]
    assert again.images == report.images and all(np.array_equal(again.pixels[s], report.pixels[s])
                                                  for s in report.pixels)


# ---- real models -------------------------------------------------------------------------------


def test_real_subject_without_weights_fails_before_any_work(tiny_subject, tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))  # not this machine's real cache
    events: list[str] = []
    with pytest.raises(NotFoundError) as e:
        evaluate(EvalConfig(subject=str(tiny_subject), seeds=2, out_dir=str(tmp_path / "out")),
                 on_event=lambda kind, data: events.append(kind))
    assert "loaded" not in events
    msg = str(e.value)
    assert "DINO ViT-S/16 weights not found: pass --dino PATH" in msg and "CLIP ViT-B/32 weights not found" in msg
    assert not (tmp_path / "out").exists()
    r = cli("eval", str(tiny_subject), "--dino", str(tmp_path / "nowhere"))
    assert r.exit_code == 3 and f"no DINO ViT-S/16 weights at {tmp_path / 'nowhere'}" in r.stderr
    assert "--clip" in r.stderr and "Traceback" not in r.output and LOADED_NOTE not in r.stderr


def test_real_subject_with_local_weights(tiny_subject, feature_folders, tmp_path):
    prompts = _prompts_file(tmp_path / "p.txt", "a sks dog on the beach", "a sks dog in the snow")
    report = evaluate(EvalConfig(subject=str(tiny_subject), prompts_file=prompts, seeds=2,
                                 dino=str(feature_folders["dino"]), clip=str(feature_folders["clip"])))
    assert report.mode == "real" and report.toy_subject is None and report.images == []
    assert report.samples == 2 * 2 + 2 + 2 and set(report.metrics) == REAL_METRICS
    assert set(report.pixels) == {"subject", "class", "base-class"}
    m = report.metrics
    # each prompt has as many images, so the per-prompt means average to the overall ones
    assert m["dino"].value == pytest.approx(sum(r.dino for r in report.prompts) / 2, abs=1e-9)
    # (CLIP text features of one prompt alone and in a padded batch differ in float32 rounding)
    assert m["clip_t"].value == pytest.approx(sum(r.clip_t for r in report.prompts) / 2, abs=1e-6)
    assert report.prompts[0].class_prompt == "a dog on the beach"
    assert m["drift"].value == pytest.approx(report.real["drift"]["drift"]) and 0 <= m["drift"].value <= 2
    assert m["pres"].value == pytest.approx(report.real["pres"]["mean"]) and m["pres"].n == 2
    assert m["diversity"].n == 2 and m["dino"].n == 4 and report.real["counts"]["reference"] == 5
    json.dumps(report.to_dict())
    r = cli("eval", str(tiny_subject), "--prompts", prompts, "--seeds", "2", "--dino", str(feature_folders["dino"]),
            "--clip", str(feature_folders["clip"]))
    assert r.exit_code == 0, r.output
    assert all(w in r.stdout for w in ("DINO", "CLIP-I", "CLIP-T", "drift", "a sks dog in the snow"))


# ---- the command -------------------------------------------------------------------------------


def test_eval_json_by_token_with_the_built_in_prompts(toy_subject):
    from arbooth_cli import paths

    store = paths.home() / "subjects" / "my-star"
    store.mkdir(parents=True)
    shutil.copy(toy_subject, store / "subject.safetensors")
    r = cli("eval", "sks", "--seeds", "1", "--json")  # found by its token
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["subject"] == "sks" and data["mode"] == "toy" and set(data["metrics"]) == TOY_METRICS
    assert [p["prompt"] for p in data["prompts"]] == subject_prompts(STAR, "sks")
    assert [p["class_prompt"] for p in data["prompts"]] == class_prompts(STAR)
    assert data["metrics"]["diversity"]["value"] is None  # one seed: not measured
    assert all(p["unchecked"] == [] for p in data["prompts"])
    assert len(data["images"]) == 30 and data["files"] == {}


def test_eval_table_and_out(toy_subject, tmp_path):
    prompts = _prompts_file(tmp_path / "p.txt", PROMPTS[1])
    out = tmp_path / "out"
    r = cli("eval", str(toy_subject), "--prompts", prompts, "--seeds", "2", "--out", str(out))
    assert r.exit_code == 0, r.output
    for word in ("subject fidelity", "text fidelity", "base fidelity", "drift", "diversity", "a star of", "read from its photos"):
        assert word in r.stdout
    assert "prompt 1: could not check: tree" in r.stderr
    assert str(out / "report.json") in r.stdout and (out / "subject.png").is_file()
    r = cli("eval", str(toy_subject), "--prompts", prompts, "--seeds", "2", "--out", str(out))
    assert r.exit_code == 4 and "already exists" in r.stderr and "--overwrite" in r.stderr


@pytest.mark.parametrize("case, code, message", [
    ("not-toy", 4, "cannot read a subject from the 5 photos"),
    ("gone", 3, "is gone"),
    ("other-model", 4, "was tuned on toy, not tiny-infinity"),
    ("no-token", 4, "does not name the subject's token 'sks'"),
    ("unknown", 3, "no subject named 'nobody'"),
    ("seeds", 4, "--seeds must be >= 1"),
    ("skip", 4, "--skip-scales 5: the schedule has 5 scales"),
    ("prune", 4, "--prune takes SCALE:RATIO pairs"),
])
def test_eval_bad_input_fails_before_any_work(toy_subject, tmp_path, case, code, message):
    args = {
        "not-toy": [str(toy_subject), "--photos", str(_flat_photos(tmp_path / "flat"))],
        "gone": [str(_with_photos(toy_subject, tmp_path / "s.safetensors", str(tmp_path / "moved")))],
        "other-model": [str(toy_subject), "-m", "tiny-infinity"],
        "no-token": [str(toy_subject), "--prompts", _prompts_file(tmp_path / "p.txt", "a star on the left")],
        "unknown": ["nobody"],
        "seeds": [str(toy_subject), "--seeds", "0"],
        "skip": [str(toy_subject), "--skip-scales", "5"],
        "prune": [str(toy_subject), "--prune", "4=0.5"],
    }[case]
    r = cli("eval", *args)
    assert r.exit_code == code, r.output
    assert message in r.stderr and "Traceback" not in r.output and LOADED_NOTE not in r.stderr
    if case == "gone":
        assert str(tmp_path / "moved") in r.stderr and "--photos" in r.stderr


def test_eval_samples_with_gens_speed_options(toy_subject, tmp_path):
    """--fast (toy: guidance off for the last two scales) samples other images than exact sampling,
    and the report records what was used."""
    prompts = _prompts_file(tmp_path / "p.txt", PROMPTS[0])
    exact = evaluate(EvalConfig(subject=str(toy_subject), prompts_file=prompts, seeds=2))
    fast = evaluate(EvalConfig(subject=str(toy_subject), prompts_file=prompts, seeds=2, fast=True))
    assert fast.config["fast"] is True and exact.config["fast"] is False
    assert not np.array_equal(fast.pixels["subject"], exact.pixels["subject"])
    same = evaluate(EvalConfig(subject=str(toy_subject), prompts_file=prompts, seeds=2, cfg_until_scale=3))
    assert np.array_equal(same.pixels["subject"], fast.pixels["subject"])  # what the toy preset resolves to


def test_eval_reads_a_subject_it_has_never_seen(tmp_path, monkeypatch):
    """A new subject (a pattern of three bands, made here, in no list of the package) is tuned
    from a fresh photos folder and scored: eval reads it from the photos."""
    from arbooth_cli.toyworld.procedural import write_photos
    from arbooth_cli.toyworld.subjects import Pattern, Subject

    monkeypatch.setenv("ARBOOTH_HOME", str(tmp_path / "home"))
    new = Subject("bands", "diamond", "a diamond of red, white and blue bands",
                  Pattern("rows", ("red", "white", "blue"), cuts=(-0.3, 0.3)),
                  ("black", "green", ("black", "yellow"), "yellow", "orange"))
    folder = tmp_path / "my photos"
    write_photos(new, folder)
    r = cli("tune", str(folder), "--token", "zq", "--class", "diamond", "--steps", "2", "--no-prior",
            "--validate-every", "0")
    assert r.exit_code == 0, r.output
    prompts = _prompts_file(tmp_path / "p.txt", "a small zq diamond at the top, black background")
    r = cli("eval", "zq", "--prompts", prompts, "--seeds", "1", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["toy_subject"].startswith("diamond of ") and doc["photo_hits"] == {doc["toy_subject"]: 5}
    assert all(colour in doc["toy_subject"] for colour in ("red", "white", "blue"))
    assert doc["metrics"]["subject_fidelity"]["n"] == 1
