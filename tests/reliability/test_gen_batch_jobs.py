"""Long `gen` jobs: a record of every image as soon as it is written (so a killed job keeps one and
``--skip-existing`` resumes it), and text features kept for one batch at a time (flat memory)."""

import json
import re
import os
import signal
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from arbooth_cli.cli import build_app
from arbooth_cli.config import GenConfig, PromptJob
from arbooth_cli.jobs import gen as gen_job
from arbooth_cli.jobs import session
from arbooth_cli.loading import resolve_model
from arbooth_cli.toyworld.scene import caption, sample_scene

TOY = ["--model", "toy"]


@pytest.fixture
def cli():
    """Run `arbooth ARGS...` in-process (stdout and stderr apart), as tests/cli do."""
    runner = CliRunner()
    return lambda *args: runner.invoke(build_app(), list(args), prog_name="arbooth")


def toy_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct captions of the toy world ("a red star on the left, blue background" style)."""
    rng = np.random.default_rng(seed)
    out: list[str] = []
    while len(out) < n:
        text = caption(sample_scene(rng), rng)
        if text not in out:
            out.append(text)
    return out


def cli_line(rec) -> str:
    """The line `gen --json` prints for an image record."""
    return json.dumps({"path": rec.path, **rec.metadata}, sort_keys=True, default=str)


def config(prompts: list[str], out: Path, **kw) -> GenConfig:
    return GenConfig(prompts=tuple(PromptJob(prompt=p) for p in prompts), model="toy", out_dir=str(out), **kw)


# ---- streaming --------------------------------------------------------------------------------


def test_each_image_event_follows_its_png_at_once(tmp_path):
    out = tmp_path / "out"
    seen: list[tuple[str, int, str]] = []

    def on_event(kind, data):
        if kind == "image":
            rec = data["record"]
            assert Path(rec.path).is_file()  # written before it is announced
            with Image.open(rec.path) as im:
                assert json.loads(im.text["arbooth"])["seed"] == rec.seed
            seen.append((rec.path, len(list(out.glob("*.png"))), cli_line(rec)))

    result = gen_job.generate(config(toy_prompts(3), out, num_images=2, batch_size=4), on_event=on_event)
    assert [p for p, _, _ in seen] == [r.path for r in result.images] and len(seen) == 6
    # one event per file, right after it: not after the batch (of 4) or the job
    assert [n for _, n, _ in seen] == [1, 2, 3, 4, 5, 6]
    assert [json.loads(line)["path"] for _, _, line in seen] == [r.path for r in result.images]


def test_gen_json_prints_a_line_per_image_in_plan_order(cli, tmp_path, monkeypatch):
    from arbooth_cli.cli import gen as gen_cli

    out = tmp_path / "out"
    prompts = toy_prompts(3)
    monkeypatch.setattr(gen_cli, "PLAN_NOTE_IMAGES", 2)  # as a job of more than 1000 images would
    monkeypatch.setattr(gen_cli, "ESTIMATE_AFTER", 1)  # and the pace set by its first images
    r = cli("gen", *prompts, *TOY, "--out", str(out), "--json")
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    plan = gen_job.plan_images(resolve_model("toy").spec, config(prompts, out))
    assert [row["path"] for row in rows] == [str(out / it.filename) for it in plan]
    assert all(Path(row["path"]).is_file() for row in rows)
    assert [row["prompt"] for row in rows] == prompts
    assert "3 images to draw" in r.stderr
    assert re.search(r"about \d+ min \d\d s left for 1 images at [\d.]+ s an image", r.stderr), r.stderr

    monkeypatch.undo()
    r = cli("gen", *prompts, *TOY, "--out", str(tmp_path / "small"))
    assert r.exit_code == 0 and "images to draw" not in r.stderr
    assert r.stdout.splitlines() == [str(tmp_path / "small" / it.filename) for it in plan]
    r = cli("-q", "gen", *prompts, *TOY, "--out", str(tmp_path / "quiet"), "--json")  # no progress, same lines
    assert r.exit_code == 0 and r.stderr == ""
    assert [json.loads(line)["path"] for line in r.stdout.splitlines()] == [
        str(tmp_path / "quiet" / it.filename) for it in plan]


def test_a_killed_job_keeps_its_record_and_resumes(tmp_path):
    prompts = toy_prompts(40)
    pfile = tmp_path / "prompts.txt"
    pfile.write_text("\n".join(prompts) + "\n")
    out = tmp_path / "out"
    env = dict(os.environ, ARBOOTH_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "arbooth_cli", "gen", *TOY, "--prompts", str(pfile), "--out", str(out), "--json"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=60)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    rows = [json.loads(line) for line in lines]
    assert [row["prompt"] for row in rows] == prompts[:3]
    for row in rows:
        with Image.open(row["path"]) as im:
            assert json.loads(im.text["arbooth"])["prompt"] == row["prompt"]
    kept = sorted(p.name for p in out.glob("*.png"))
    assert 3 <= len(kept) < 40  # it was killed mid-job, yet every line it printed names a file

    done = subprocess.run([*cmd, "--skip-existing"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rest = [json.loads(line)["path"] for line in done.stdout.splitlines()]
    plan = gen_job.plan_images(resolve_model("toy").spec, config(prompts, out))
    assert sorted(Path(p).name for p in rest) == sorted(set(it.filename for it in plan) - set(kept))
    assert sorted(p.name for p in out.glob("*.png")) == sorted(it.filename for it in plan)


# ---- flat memory ------------------------------------------------------------------------------


def test_text_features_of_at_most_one_batch_are_alive(tmp_path, monkeypatch):
    alive: set[int] = set()
    peaks: list[int] = []
    encoded: list[str] = []
    real_encode = session.encode

    def counting_encode(comps, prompts, **kw):
        feats = real_encode(comps, prompts, **kw)
        for key, text in feats.items():
            encoded.append(key[0])
            alive.add(id(text))
            weakref.finalize(text, alive.discard, id(text))
        peaks.append(len(alive))
        return feats

    def on_event(kind, data):
        if kind == "image":
            peaks.append(len(alive))

    monkeypatch.setattr(session, "encode", counting_encode)
    prompts = toy_prompts(12)
    batch = 4
    result = gen_job.generate(config(prompts, tmp_path / "out", num_images=3, batch_size=batch), on_event=on_event)
    assert len(result.images) == 36
    assert sorted(encoded) == sorted(prompts)  # each prompt once, though its images span batches
    assert max(peaks) <= 2  # 3 images a prompt, 4 a batch: 2 prompts a batch (and <= batch size)
    assert max(peaks) <= batch
    assert not alive  # the last batch's features go with the job


def test_a_prompts_features_do_not_depend_on_the_others_in_its_encode_call():
    from arbooth_cli.loading import load_components, pick_device, pick_dtype

    resolved = resolve_model("toy")
    dev = pick_device("cpu")
    comps = load_components(resolved, device=dev, dtype=pick_dtype("auto", dev), roles=("text_encoder",))
    prompts = toy_prompts(20, seed=3)
    together = session.encode(comps, [(p, None) for p in prompts], keep_encoder=True)
    for i in range(0, 20, 3):
        part = session.encode(comps, [(p, None) for p in prompts[i:i + 3]], keep_encoder=True)
        for key, text in part.items():
            assert text.feats_BTC.shape == together[key].feats_BTC.shape
            assert text.feats_BTC.equal(together[key].feats_BTC) and text.lens_B.equal(together[key].lens_B), key


@pytest.mark.parametrize("batch_size", ["3", "8"])
def test_same_toy_images_whatever_the_batch(cli, tmp_path, batch_size):
    prompts = toy_prompts(4, seed=5)
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli("gen", *prompts, *TOY, "-n", "2", "--out", str(a)).exit_code == 0
    assert cli("gen", *prompts, *TOY, "-n", "2", "-b", batch_size, "--out", str(b)).exit_code == 0
    names = sorted(p.name for p in a.iterdir())
    assert len(names) == 8 and names == sorted(p.name for p in b.iterdir())
    for name in names:
        assert np.array_equal(np.asarray(Image.open(a / name)), np.asarray(Image.open(b / name))), name
