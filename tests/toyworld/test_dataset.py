"""The embedded model's training split and the training script's pipeline."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

from arbooth_cli.toyworld.dataset import (HELD_OUT, held_out_prompts, is_held_out, seen_prompts, tokenizer_example,
                                          training_example, weighted_classes)
from arbooth_cli.toyworld.scene import CLASSES, COLOURS, POSITIONS, parse_caption
from arbooth_cli.toyworld.subjects import SUBJECTS

ROOT = Path(__file__).resolve().parents[2]


def test_held_out_triples_never_reach_training_but_their_parts_do():
    assert len(HELD_OUT) == 28
    seen_parts: set[tuple[str, str]] = set()
    for i in range(400):
        _, cap, scene = training_example(0, i)
        assert not is_held_out(scene)
        for s in scene.shapes:
            seen_parts |= {("cls", s.cls), ("colour", s.colour), ("position", s.position)}
    assert seen_parts == {("cls", c) for c in CLASSES} | {("colour", c) for c in COLOURS} | {
        ("position", p) for p in POSITIONS}


def test_test_prompts_ask_for_held_out_shapes_in_known_words():
    for text, scene in held_out_prompts(60, seed=3):
        assert is_held_out(scene)
        parsed = parse_caption(text)
        assert parsed.unknown == []
        s = parsed.shapes[0]
        assert (s["cls"], s["colour"], s["position"]) in HELD_OUT
    assert all(not is_held_out(sc) for _, sc in seen_prompts(40))
    assert held_out_prompts(5, seed=1) == held_out_prompts(5, seed=1)


def test_class_weights_repeat_classes_and_steer_training_draws():
    assert weighted_classes() == CLASSES
    doubled = weighted_classes({"star": 2})
    assert doubled.count("star") == 2 and set(doubled) == set(CLASSES) and len(doubled) == len(CLASSES) + 1
    with pytest.raises(ValueError):
        weighted_classes({"dragon": 2})
    with pytest.raises(ValueError):
        weighted_classes({"star": 0})
    only = training_example(0, 3, classes=("heart",))[2]
    assert {s.cls for s in only.shapes} == {"heart"}
    stars = sum(s.cls == "star" for i in range(300) for s in training_example(0, i, classes=weighted_classes({"star": 4})
                                                                                   )[2].shapes)
    plain = sum(s.cls == "star" for i in range(300) for s in training_example(0, i)[2].shapes)
    assert stars > 2 * plain  # 4/10 of the draws against 1/7


def test_tokenizer_images_mix_training_images_and_patterned_shapes():
    imgs = [tokenizer_example(0, i) for i in range(60)]
    assert all(im.shape == (64, 64, 3) and im.dtype == np.uint8 for im in imgs)
    same = [np.array_equal(im, training_example(0, i)[0]) for i, im in enumerate(imgs)]
    assert 15 < sum(same) < 45  # about half are the captioned training images
    assert np.array_equal(tokenizer_example(0, 7), imgs[7])


@pytest.mark.slow
def test_training_script_smoke_run_writes_a_strictly_loadable_bundle(tmp_path, monkeypatch):
    import torch

    from arbooth_cli.models.build import build_components, read_bundle
    from arbooth_cli.specs.toy import TOY

    monkeypatch.setattr(sys, "argv", ["train_toy.py", "--out", str(tmp_path), "--smoke"])
    script = runpy.run_path(str(ROOT / "tools" / "train_toy.py"), run_name="train_toy")
    assert script["main"]() == 0
    parts = read_bundle(tmp_path / "toy.safetensors")
    assert {t.dtype for p in parts.values() for t in p.values() if t.is_floating_point()} == {torch.float16}
    comps = build_components(TOY, weights=parts)
    assert comps.transformer is not None and comps.text_encoder is not None
    log = json.loads((tmp_path / "train-log.json").read_text())
    assert log["transformer"]["steps"] == 3 and len(log["vae"]["curve"]) == 3
    assert set(log["vae"]["reconstruction"]["subjects"]) == set(SUBJECTS)
    assert 0 <= log["eval"]["held_out"]["all"] <= 1
    per_class = log["eval"]["held_out"]["per_class"]  # held-out prompts ask for one shape each
    assert per_class and set(per_class) <= set(CLASSES) and all(0 <= v <= 1 for v in per_class.values())


@pytest.mark.slow
def test_training_script_stages_apart_time_budgeted_steps_and_eval_only(tmp_path):
    script = runpy.run_path(str(ROOT / "tools" / "train_toy.py"), run_name="train_toy")
    main, probe_to = script["main"], script["PROBE_TO"]
    tok, tr, ev = tmp_path / "tok", tmp_path / "tr", tmp_path / "ev"
    assert main(["--out", str(tok), "--smoke", "--tokenizer-only"]) == 0
    assert (tok / "vae.safetensors").exists() and not (tok / "toy.safetensors").exists()
    assert "transformer" not in json.loads((tok / "train-log.json").read_text())

    # a budget too small for more than the timed steps: the count is fixed after them and logged
    assert main(["--out", str(tr), "--smoke", "--vae", str(tok / "vae.safetensors"), "--minutes", "0.001",
                 "--class-weight", "star=3"]) == 0
    trained = json.loads((tr / "train-log.json").read_text())
    assert trained["data"]["class_weights"] == {"star": 3}
    t = trained["transformer"]
    assert t["steps"] == t["planned_steps"] == probe_to + 1 and t["warmup"] == 200

    assert main(["--out", str(ev), "--smoke", "--eval-only", str(tr / "toy.safetensors")]) == 0
    log = json.loads((ev / "eval-log.json").read_text())
    assert set(log["eval"]) >= {"grid", "chosen", "held_out", "seen"} and "transformer" not in log

    with pytest.raises(SystemExit, match="class-weight"):
        main(["--out", str(tr), "--smoke", "--class-weight", "dragon=2"])
    with pytest.raises(SystemExit) as e:
        main(["--out", str(tr), "--smoke", "--minutes", "1", "--resume"])
    assert e.value.code == 2


@pytest.mark.slow
def test_training_script_resumes_the_transformer_stage_exactly(tmp_path):
    import torch
    from safetensors.torch import load_file

    main = runpy.run_path(str(ROOT / "tools" / "train_toy.py"), run_name="train_toy")["main"]
    tok, whole, split = tmp_path / "tok", tmp_path / "whole", tmp_path / "split"
    assert main(["--out", str(tok), "--smoke", "--tokenizer-only"]) == 0
    common = ["--smoke", "--vae", str(tok / "vae.safetensors"), "--ema", "0.5", "--save-dtype", "fp32"]
    assert main(["--out", str(whole), *common]) == 0
    assert main(["--out", str(split), *common, "--stop-at", "2"]) == 3  # stopped: a checkpoint, no bundle
    assert not (split / "toy.safetensors").exists()
    assert json.loads((split / "checkpoint" / "state.json").read_text())["step"] == 2
    assert main(["--out", str(split), *common, "--resume"]) == 0

    for name in ("toy.safetensors", "toy-last.safetensors"):  # the average ships; the last weights beside
        a, b = load_file(str(whole / name)), load_file(str(split / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    shipped, last = load_file(str(whole / "toy.safetensors")), load_file(str(whole / "toy-last.safetensors"))
    assert any(not torch.equal(shipped[k], last[k]) for k in shipped if k.startswith("transformer."))
    assert all(torch.equal(shipped[k], last[k]) for k in shipped if k.startswith("vae."))

