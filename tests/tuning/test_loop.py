"""`tune()` on the tiny model (CPU): the saved subject, what changes, resume, divergence, bad input."""

from __future__ import annotations

import errno
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from arbooth_cli import __version__, paths
from arbooth_cli.config import TuneConfig
from arbooth_cli.errors import (ConfigError, DiskFullError, InvalidInputError, ResourceError,
                               TrainingDivergedError)
from arbooth_cli.loading import resolve_model
from arbooth_cli.models.build import build_transformer
from arbooth_cli.models.specs.tiny import TINY_INFINITY
from arbooth_cli.subjects import FORMAT, SubjectExistsError, SubjectStore, read_subject_header
from arbooth_cli.tuning.loop import (CHECKPOINT_DIR, POOL_FILE, PriorPool, TuneInterrupted, _CheckpointWriter,
                                     _Run, tune)
from arbooth_cli.tuning.lowrank import compress, lowrank_factors, tuned_values
from arbooth_cli.tuning.selection import DEFAULT_LAYERS, select_params

COLOURS = [(200, 40, 40), (40, 180, 60), (50, 60, 210)]


def make_photos(folder: Path, n: int = 3) -> Path:
    """``n`` small coloured photos (100x120) with a darker square each."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        im = Image.new("RGB", (100, 120), COLOURS[i % len(COLOURS)])
        im.paste((20, 20, 20), (10 + 20 * i, 30, 50 + 20 * i, 70))
        im.save(folder / f"photo{i}.png")
    return folder


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    return make_photos(tmp_path / "photos")


def config(photos: Path, **kw) -> TuneConfig:
    base = {"photos": str(photos), "token": "sks", "cls": "dog", "model": "tiny-infinity", "steps": 4,
            "validate_every": 0, "checkpoint_every": 0, "log_every": 1}
    return TuneConfig(**{**base, **kw})


def block_params(model, i: int) -> dict[str, str]:
    """Full parameter name -> name inside block ``i`` (blocks sit in chunks, so names vary)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: local for local, p in model.blocks[i].named_parameters()}


@pytest.fixture(scope="module")
def tiny_model():
    return build_transformer(TINY_INFINITY.transformer, generator=torch.Generator().manual_seed(0))


def test_a_run_saves_the_selected_tensors_and_provenance(photos, tiny_model):
    """Tensor names are the default selection plus the subject embedding; the header says how."""
    cfg = config(photos, steps=3)
    events: list[str] = []
    result = tune(cfg, on_event=lambda kind, data: events.append(kind))
    path = paths.home() / "subjects" / "sks" / "subject.safetensors"
    assert result.subject == str(path) and path.is_file()
    assert result.steps == 3 and result.name == "sks" and result.model == "tiny-infinity"
    assert events[0] == "loaded" and events[-1] == "saved" and events.count("step") == 3

    tensors = load_file(str(path))
    selected = select_params(tiny_model, tiny_model.blocks, DEFAULT_LAYERS)
    for i in range(TINY_INFINITY.transformer.depth):
        mine = [n for n in selected if n in block_params(tiny_model, i)]
        assert mine and all(block_params(tiny_model, i)[n].startswith(("ca.", "ffn.")) for n in mine)
    assert set(tensors) == set(selected) | {"subject_embedding"}
    assert tensors["subject_embedding"].shape == (4, TINY_INFINITY.transformer.text_channels)
    assert result.trainable_tensors == len(selected)

    meta, entries = read_subject_header(path)
    assert set(entries) == set(tensors)
    assert meta["format"] == FORMAT and meta["token"] == "sks" and meta["class"] == "dog"
    assert meta["base_model"] == "tiny-infinity"
    assert meta["base_model_hash"] == resolve_model("tiny-infinity").model_hash == result.model_hash
    assert meta["steps"] == "3" and meta["arbooth_version"] == __version__ and meta["kind"] == "full"
    recorded = cfg.with_(lr=TINY_INFINITY.tuning.lr)  # the unset lr is resolved to the model's
    assert json.loads(meta["config"]) == json.loads(json.dumps(recorded.to_dict()))
    assert json.loads(meta["photos"]) == ["photo0.png", "photo1.png", "photo2.png"]


def test_only_the_selected_tensors_change(photos):
    """Driving the run by hand: every parameter outside --layers ffn --blocks 1 keeps its bits."""
    cfg = config(photos, layers=("ffn",), blocks="1", steps=3).validate()
    run = _Run(cfg, resolve_model("tiny-infinity"), lambda kind, data: None)
    assert run.preflight() is None
    run.load()
    pool = run.build_pool()
    assert pool is not None and len(pool) == cfg.steps * cfg.batch_size
    run.setup_training()
    tr = run.transformer
    in_block1 = block_params(tr, 1)
    assert run.tuned_names and all(in_block1.get(n, "").startswith("ffn.") for n in run.tuned_names)
    assert set(run.tuned_names) == set(select_params(tr, tr.blocks, ("ffn",), (1,)))
    before = {n: p.detach().clone() for n, p in tr.named_parameters()}
    run.loop(pool)
    assert run.step == 3
    after = dict(tr.named_parameters())
    for n, p in before.items():
        if n not in run.tuned:
            assert torch.equal(after[n].detach(), p), n
    assert any(not torch.equal(after[n].detach(), before[n]) for n in run.tuned)
    assert run.subject_SC is not None and run.subject_SC.detach().abs().sum() > 0


def test_layers_and_blocks_choose_the_saved_tensors(photos, tiny_model):
    """--layers ca --blocks 0 --subject-vectors 0: the file holds exactly block 0's cross-attention."""
    result = tune(config(photos, layers=("ca",), blocks="0", subject_vectors=0, steps=2))
    names = set(load_file(result.subject))
    expected = select_params(tiny_model, tiny_model.blocks, ("ca",), (0,))
    assert expected and names == set(expected)
    in_block0 = block_params(tiny_model, 0)
    assert all(in_block0.get(n, "").startswith("ca.") for n in names)


@pytest.mark.parametrize("precision", [{}, {"dtype": "bf16", "optimizer_state": "fp8"}], ids=["fp32", "bf16-fp8"])
def test_resume_after_ctrl_c_is_exact(photos, precision):
    """6 steps in one go equal 3 steps, Ctrl-C, and --resume, bit for bit; also with bf16 weights
    and fp8 moments, whose stochastic rounding must draw the same numbers after the resume."""
    cfg_a = config(photos, name="a", steps=6, **precision)
    cfg_b = config(photos, name="b", steps=6, **precision)
    a = tune(cfg_a)

    def interrupt(kind, data):
        if kind == "step" and data["step"] == 3:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TuneInterrupted) as info:
        tune(cfg_b, on_event=interrupt)
    assert info.value.step == 3 and info.value.checkpoint is not None
    ckpt = Path(info.value.checkpoint)
    assert ckpt.is_dir() and json.loads((ckpt / "state.json").read_text())["step"] == 3
    assert not SubjectStore().has("b")

    with pytest.raises(InvalidInputError, match="other settings than the checkpoint.s: lr$"):
        tune(cfg_b.with_(resume=True, lr=1e-3))
    with pytest.raises(InvalidInputError, match="left a checkpoint"):
        tune(cfg_b)  # neither --resume nor --overwrite

    steps_seen: list[int] = []
    b = tune(cfg_b.with_(resume=True), on_event=lambda k, d: steps_seen.append(d["step"]) if k == "step" else None)
    assert b.resumed_from == 3 and b.steps == 6 and steps_seen == [4, 5, 6]
    ta, tb = load_file(a.subject), load_file(b.subject)
    assert set(ta) == set(tb)
    for n in ta:
        assert torch.equal(ta[n], tb[n]), n
    if precision:
        assert {t.dtype for n, t in ta.items() if n != "subject_embedding"} == {torch.bfloat16}


def _checkpoint_file(path: Path) -> bool:
    """A file of a checkpoint folder being written (not the prior pool or the subject)."""
    return path.parent.name.startswith(CHECKPOINT_DIR + ".") and path.parent.name.endswith(".partial")


def _start(cfg: TuneConfig, emit=lambda kind, data: None) -> tuple[_Run, PriorPool | None]:
    """A run driven by hand up to its loop (the checkpoint of a finished tune() is deleted)."""
    run = _Run(cfg.validate(), resolve_model("tiny-infinity"), emit)
    ckpt = run.preflight()
    run.load()
    pool = run.build_pool()
    run.setup_training()
    if ckpt is not None:
        run.load_checkpoint(ckpt)
    return run, pool


def test_checkpoints_written_in_the_background_are_complete_and_resume_exactly(photos, monkeypatch):
    """Checkpoints at steps 2 and 4 of 5 are written on another thread while training goes on:
    each write starts only once the next step has changed the live tensors. Each "checkpoint"
    event comes when its folder is complete, and the one left after the loop is step 4's snapshot:
    resuming it for one step gives run A's weights."""
    import arbooth_cli.tuning.loop as loop

    real = loop.write_safetensors
    writers: list[bool] = []
    stepped = {s: threading.Event() for s in range(1, 6)}

    def late(path, tensors, *args, **kwargs):
        if _checkpoint_file(Path(path)):
            writers.append(threading.current_thread() is threading.main_thread())
            if Path(path).name == "weights.safetensors":  # the first file of checkpoint k (of step 2k)
                k = (len(writers) + 1) // 2
                assert stepped[2 * k + 1].wait(timeout=60)  # step 2k + 1 has updated the weights
        return real(path, tensors, *args, **kwargs)

    monkeypatch.setattr(loop, "write_safetensors", late)
    run_dir = paths.home() / "runs" / "sks"
    events: list[tuple[int, int]] = []

    def on_event(kind, data):
        if kind == "step":
            stepped[data["step"]].set()
        if kind == "checkpoint":
            assert threading.current_thread() is threading.main_thread()
            on_disk = json.loads((Path(data["path"]) / "state.json").read_text())["step"]
            events.append((data["step"], on_disk))

    cfg = config(photos, steps=5, checkpoint_every=2)
    a, pool = _start(cfg, on_event)
    a.loop(pool)
    assert a.step == 5 and events == [(2, 2), (4, 4)]
    assert writers and not any(writers)  # every checkpoint file was written off the main thread
    ckpt = run_dir / CHECKPOINT_DIR
    assert json.loads((ckpt / "state.json").read_text())["step"] == 4
    assert sorted(p.name for p in run_dir.iterdir()) == [CHECKPOINT_DIR, POOL_FILE]  # no .partial, no .old
    assert set(load_file(str(ckpt / "weights.safetensors"))) == set(a.tuned) | {"subject_embedding"}

    b, pool = _start(cfg.with_(resume=True))
    assert b.step == 4
    b.loop(pool)
    assert b.step == 5
    for n, p in a.tuned.items():
        assert torch.equal(b.tuned[n].detach(), p.detach()), n
    assert torch.equal(b.subject_SC.detach(), a.subject_SC.detach())


@pytest.mark.parametrize("failure", ["enospc-at-once", "disk-full-late"])
def test_a_failed_background_checkpoint_surfaces_as_a_resource_error(photos, monkeypatch, failure):
    """A write that fails on the writer thread is raised by tune() as DiskFullError, whether the
    loop sees it at the next step (an immediate OSError) or only at its end (a slow failure, typed
    as HashingWriter types it); no half-written folder and no writer thread stay behind."""
    import arbooth_cli.tuning.loop as loop

    real = loop.write_safetensors

    def full(path, tensors, *args, **kwargs):
        if not _checkpoint_file(Path(path)):
            return real(path, tensors, *args, **kwargs)
        assert threading.current_thread() is not threading.main_thread()
        if failure == "enospc-at-once":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        time.sleep(0.2)
        raise DiskFullError("no space left on the device while writing")

    monkeypatch.setattr(loop, "write_safetensors", full)
    steps = 6 if failure == "enospc-at-once" else 3
    with pytest.raises(DiskFullError) as info:
        tune(config(photos, steps=steps, checkpoint_every=2))
    assert isinstance(info.value, ResourceError) and info.value.exit_code == 5
    run_dir = paths.home() / "runs" / "sks"
    assert not list(run_dir.glob("*.partial")) and not (run_dir / CHECKPOINT_DIR).exists()
    assert not any(t.name == "arbooth-checkpoint" for t in threading.enumerate())
    assert not SubjectStore().has("sks")


def test_the_checkpoint_writer_keeps_one_write_in_flight(tmp_path):
    """submit() waits for the previous write; wait() returns (folder, step) or raises the write's error."""
    writer = _CheckpointWriter()
    assert writer.wait() is None
    done: list[int] = []

    def first(d: Path) -> None:
        time.sleep(0.1)
        (d / "x").write_text("1")
        done.append(1)

    def second(d: Path) -> None:
        assert done == [1]  # the first write had ended before this one started
        raise ValueError("boom")

    target = tmp_path / "ckpt"
    writer.submit(target, first, 1)
    assert writer.submit(target, second, 2) == (target, 1)
    with pytest.raises(ValueError, match="boom"):
        writer.wait()
    assert writer.wait() is None and not writer.finished
    assert (target / "x").read_text() == "1" and not list(tmp_path.glob("*.partial"))


def test_resume_without_a_checkpoint_is_refused(photos):
    with pytest.raises(InvalidInputError, match="no checkpoint to resume"):
        tune(config(photos, resume=True))


def test_a_nan_loss_stops_the_run_and_keeps_the_last_checkpoint(photos, monkeypatch):
    """The loss turns NaN at step 4: TrainingDivergedError names step 4, step 2's checkpoint stays."""
    import arbooth_cli.tuning.loop as loop

    real = loop.scale_weighted_ce
    calls = []

    def poisoned(*args, **kwargs):
        calls.append(1)
        out = real(*args, **kwargs)
        return out * float("nan") if len(calls) >= 4 else out

    monkeypatch.setattr(loop, "scale_weighted_ce", poisoned)
    cfg = config(photos, steps=6, checkpoint_every=2)
    with pytest.raises(TrainingDivergedError, match="at step 4") as info:
        tune(cfg)
    assert info.value.exit_code == 4
    state = paths.home() / "runs" / "sks" / CHECKPOINT_DIR / "state.json"
    assert json.loads(state.read_text())["step"] == 2
    assert str(state.parent) in info.value.message
    assert not SubjectStore().has("sks") and not (paths.home() / "subjects" / "sks").exists()


def test_folders_without_usable_photos_are_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidInputError, match="holds no photos"):
        tune(config(empty))
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("x.png", "y.jpg"):
        (broken / name).write_bytes(b"not an image at all")
    with pytest.raises(InvalidInputError, match="none of the 2 photos"):
        tune(config(broken))
    assert not SubjectStore().has("sks")


def test_an_unreadable_photo_is_skipped_with_an_event(photos):
    (photos / "x.png").write_bytes(b"\x89PNG\r\n\x1a\ngarbage")
    events: list[tuple[str, dict]] = []
    result = tune(config(photos, steps=2), on_event=lambda kind, data: events.append((kind, data)))
    skipped = [d["message"] for k, d in events if k == "skipped"]
    assert len(skipped) == 1 and "x.png" in skipped[0]
    loaded = next(d for k, d in events if k == "loaded")
    assert loaded["photos"] == 3
    assert Path(result.subject).is_file()


def test_an_existing_subject_is_kept_unless_overwrite(photos):
    first = tune(config(photos, steps=2))
    before = Path(first.subject).read_bytes()
    with pytest.raises(SubjectExistsError, match="already exists") as info:
        tune(config(photos, steps=2))
    assert "--overwrite" in (info.value.hint or "")
    assert Path(first.subject).read_bytes() == before
    second = tune(config(photos, steps=3, overwrite=True))
    assert second.subject == first.subject
    assert read_subject_header(Path(second.subject))[0]["steps"] == "3"


def test_a_caption_file_without_the_token_is_refused(photos):
    (photos / "photo1.txt").write_text("a photo of a {cls} in the park\n")
    with pytest.raises(InvalidInputError, match="does not contain the subject token 'sks'"):
        tune(config(photos))


def test_a_token_with_a_space_is_a_config_error(photos):
    with pytest.raises(ConfigError, match="--token must be one word"):
        tune(config(photos, token="s ks"))


def test_save_rank_writes_a_compressed_subject_and_reports_its_cost(photos):
    result = tune(config(photos, steps=3, save_rank=2))
    full = Path(result.subject)
    low_path = full.parent / "subject-r2.safetensors"
    assert low_path.is_file()
    full_t, low_t = load_file(str(full)), load_file(str(low_path))
    meta, _ = read_subject_header(low_path)
    assert meta["kind"] == "lowrank" and meta["rank"] == "2"
    for name, t in full_t.items():
        if name == "subject_embedding":
            assert torch.equal(low_t[name], t)
        elif t.ndim == 2:
            assert low_t[f"{name}.lora_up"].shape == (t.shape[0], 2)
            assert low_t[f"{name}.lora_down"].shape == (2, t.shape[1])
            assert name not in low_t
        else:
            assert low_t[f"{name}.delta"].shape == t.shape
    assert len(low_t) == sum(2 if t.ndim == 2 else 1 for n, t in full_t.items() if n != "subject_embedding") + 1
    lr = result.lowrank
    assert lr is not None and lr["rank"] == 2 and lr["path"] == str(low_path)
    assert 0 < lr["bytes_lowrank"] < lr["bytes_full"]
    assert 0.0 <= lr["relative_error"] <= 1.0
    for key in ("ce_full", "ce_lowrank", "prior_full", "prior_lowrank"):
        assert isinstance(lr[key], float) and lr[key] == lr[key]  # a number, not NaN
    assert SubjectStore().get(result.name).lowrank == (low_path,)


def test_compress_and_tuned_values_reproduce_low_rank_changes():
    """A change of rank <= R comes back (up to bf16 rounding); 1-D tensors keep their whole change."""
    g = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(12, 9, generator=g), "b": torch.randn(12, generator=g),
            "v": torch.randn(5, 4, generator=g)}
    change = {"w": torch.randn(12, 2, generator=g) @ torch.randn(2, 9, generator=g) * 0.01,
              "b": torch.randn(12, generator=g) * 0.01, "v": torch.randn(5, 4, generator=g) * 0.01}
    tuned = {n: base[n] + change[n] for n in base}
    low, report = compress(tuned, base, rank=2)
    assert set(low) == {"w.lora_up", "w.lora_down", "b.delta", "v.lora_up", "v.lora_down"}
    assert report.rank == 2 and report.bytes_full == sum(t.numel() * 4 for t in tuned.values())
    values = tuned_values(low, base)
    torch.testing.assert_close(values["w"], tuned["w"], rtol=0, atol=2e-4)
    torch.testing.assert_close(values["b"], tuned["b"], rtol=0, atol=2e-4)
    assert not torch.allclose(values["v"], tuned["v"], atol=2e-4)  # rank 4 change, cut to 2
    assert 0.0 < report.relative_error < 1.0

    low, report = compress(tuned, base, rank=12)  # full rank: every tensor keeps its whole change
    assert set(low) == {"w.delta", "b.delta", "v.delta"}
    values = tuned_values({**low, "subject_embedding": torch.zeros(4, 3)}, base)
    assert set(values) == {"w", "b", "v"}
    for n in tuned:
        torch.testing.assert_close(values[n], tuned[n], rtol=0, atol=2e-4)
    assert report.relative_error < 1e-2


def test_lowrank_factors_are_the_best_rank_r_approximation():
    """The error is the norm of the dropped singular values (Eckart-Young)."""
    m = torch.randn(10, 7, generator=torch.Generator().manual_seed(1))
    s = torch.linalg.svdvals(m)
    for r in (1, 3, 6):
        up, down = lowrank_factors(m, r)
        assert up.shape == (10, r) and down.shape == (r, 7)
        err = torch.linalg.norm(m - up @ down)
        assert err.item() == pytest.approx(s[r:].norm().item(), rel=1e-4)
    up, down = lowrank_factors(m, 50)
    assert up.shape == (10, 7)
    torch.testing.assert_close(up @ down, m, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="expected a matrix"):
        lowrank_factors(torch.zeros(3), 1)


def test_validation_images_carry_provenance(photos):
    result = tune(config(photos, steps=4, validate_every=2))
    vdir = Path(result.run_dir) / "validation"
    names = sorted(p.name for p in vdir.glob("*.png"))
    assert names == ["step-000002-0.png", "step-000004-0.png"]
    assert sorted(result.validation_images) == [str(vdir / n) for n in names]
    with Image.open(vdir / "step-000004-0.png") as im:
        assert im.size == (96, 96)
        text = dict(im.text)
    assert text["prompt"] == "a sks dog on the beach" and text["subject"] == "sks"
    assert text["model"] == "tiny-infinity" and text["model_hash"] == result.model_hash
    assert json.loads(text["arbooth"])["step"] == 4


def test_a_finished_run_leaves_no_checkpoint_or_prior_pool(photos):
    """A checkpoint and the pool exist during the run and are removed after the subject is saved."""
    run_dir = paths.home() / "runs" / "sks"
    during = []

    def on_event(kind, data):
        if kind == "checkpoint":
            during.append((Path(data["path"]).is_dir(), (run_dir / POOL_FILE).is_file()))

    result = tune(config(photos, steps=4, checkpoint_every=2), on_event=on_event)
    assert during == [(True, True)]
    assert Path(result.run_dir) == run_dir and run_dir.is_dir()
    for leftover in (CHECKPOINT_DIR, CHECKPOINT_DIR + ".old", POOL_FILE):
        assert not (run_dir / leftover).exists(), leftover
    assert Path(result.subject).is_file()


def test_prior_prompts_are_the_captions_without_the_token(photos):
    from arbooth_cli.tuning.loop import prior_class_prompts

    cfg = config(photos)
    assert prior_class_prompts(cfg, ["a photo of sks dog"] * 3) == ["a photo of dog"]  # the official prompt
    caps = ["a large sks dog on the left, green background", "a sks dog at the top",
            "a large sks dog on the left, green background"]
    assert prior_class_prompts(cfg, caps) == ["a large dog on the left, green background", "a dog at the top"]
    assert prior_class_prompts(cfg.with_(class_prompt="a {cls} outside"), caps) == ["a dog outside"]
    with pytest.raises(ConfigError, match="--class-prompt must not be empty"):
        cfg.with_(class_prompt=" ").validate()


def test_a_pool_of_several_prompts_draws_each_sample_as_a_pool_of_its_prompt_alone(photos):
    """Sample i of the pool uses prompt i mod P and seed + i: the same sample a one-prompt pool
    draws at i, whatever prompts share its batch."""
    (photos / "photo0.txt").write_text("a sks dog on the left\n")
    (photos / "photo1.txt").write_text("a large sks dog, green background\n")
    cfg = config(photos, steps=3).validate()
    run = _Run(cfg, resolve_model("tiny-infinity"), lambda kind, data: None)
    run.load()
    assert run.class_prompts == ["a dog on the left", "a large dog, green background", "a photo of dog"]
    pool = run.build_pool()
    assert pool is not None and pool.prompt_N.tolist() == [0, 1, 2, 0, 1, 2]
    from arbooth_cli.tuning.loop import sample_prior_pool

    for k in range(3):
        alone = sample_prior_pool(run.transformer, run.vae, [run.class_texts[k]], run.scales, 6,
                                  seed=cfg.seed + 10_000_019, tau=cfg.prior_tau, top_p=cfg.prior_top_p, batch=1)
        rows = [i for i in range(6) if i % 3 == k]
        assert torch.equal(pool.bits_NLd[rows], alone.bits_NLd[rows])
        torch.testing.assert_close(pool.logits_NLV[rows].float(), alone.logits_NLV[rows].float(), atol=2e-2, rtol=0)
    # the pool file keeps the prompt of each sample; a second load reads it back
    again = run.build_pool()
    assert again is not None and torch.equal(again.prompt_N, pool.prompt_N)


def test_the_learning_rate_defaults_to_the_models_and_is_recorded(photos):
    """No --lr: the model's rate (the official one for Infinity-family specs, toy's own), written
    into the run's config so checkpoints and the subject's metadata say what was used."""
    quiet = lambda kind, data: None  # noqa: E731
    assert _Run(config(photos), resolve_model("tiny-infinity"), quiet).config.lr == 2.34375e-5
    assert _Run(config(photos, model="toy"), resolve_model("toy"), quiet).config.lr == 1e-4
    assert _Run(config(photos, lr=3e-4), resolve_model("toy"), quiet).config.lr == 3e-4
    res = tune(config(photos, steps=1))
    meta, _ = read_subject_header(Path(res.subject))
    assert json.loads(meta["config"])["lr"] == 2.34375e-5
    with pytest.raises(ConfigError, match="--lr must be > 0"):
        config(photos, lr=0.0).validate()
