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
from arbooth_cli.specs.tiny import TINY_INFINITY
from arbooth_cli.subjects import FORMAT, SubjectExistsError, SubjectStore, read_subject_header
from arbooth_cli.jobs.tune import TuneInterrupted, tune
from arbooth_cli.loading import load_components
from arbooth_cli.subjects.use import tuned_values
from arbooth_cli.tuning.checkpoints import CHECKPOINT_DIR, CheckpointWriter, HostSnapshot
from arbooth_cli.tuning.lowrank import compress, lowrank_factors
from arbooth_cli.tuning.prior import POOL_FILE, prior_class_prompts, sample_prior_pool
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
    recorded = cfg.with_(lr=TINY_INFINITY.tuning.lr,  # the unset lr, prompts and zoom are resolved to the model's
                         validation_prompts=TINY_INFINITY.tuning.validation_prompts,
                         augment_zoom=TINY_INFINITY.tuning.augment_zoom, zoom_in=TINY_INFINITY.tuning.zoom_in,
                         zoom_places=TINY_INFINITY.tuning.zoom_places,
                         photo_share=TINY_INFINITY.tuning.photo_share, ema=TINY_INFINITY.tuning.ema,
                         subject_vectors=TINY_INFINITY.tuning.subject_vectors, recolour=TINY_INFINITY.tuning.recolour)
    assert json.loads(meta["config"]) == json.loads(json.dumps(recorded.to_dict()))
    assert json.loads(meta["photos"]) == ["photo0.png", "photo1.png", "photo2.png"]


def components(model: str = "tiny-infinity"):
    """The model's parts, built here so a test can watch what tune() does to them."""
    return load_components(resolve_model(model), device=torch.device("cpu"), dtype=torch.float32)


def test_only_the_selected_tensors_change(photos):
    """--layers ffn --blocks 1: every other parameter of the model keeps its bits, the selected
    ones and the subject embedding move, and the saved file holds exactly those."""
    comps = components()
    tr = comps.transformer
    before = {n: p.detach().clone() for n, p in tr.named_parameters()}
    result = tune(config(photos, layers=("ffn",), blocks="1", steps=3), components=comps)
    saved = load_file(result.subject)
    tuned = set(saved) - {"subject_embedding"}
    in_block1 = block_params(tr, 1)
    assert tuned and all(in_block1.get(n, "").startswith("ffn.") for n in tuned)
    assert tuned == set(select_params(tr, tr.blocks, ("ffn",), (1,)))
    after = dict(tr.named_parameters())
    for n, p in before.items():
        if n not in tuned:
            assert torch.equal(after[n].detach(), p), n
    assert any(not torch.equal(after[n].detach(), before[n]) for n in tuned)
    for n in tuned:
        assert torch.equal(saved[n], after[n].detach()), n
    assert saved["subject_embedding"].abs().sum() > 0


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

    with pytest.raises(InvalidInputError, match="other settings than the checkpoint.s: lr$") as refused:
        tune(cfg_b.with_(resume=True, lr=1e-3))
    assert refused.value.hint.endswith("; the checkpoint ran with --lr 2.34375e-05")  # no default changed
    with pytest.raises(InvalidInputError, match="left a checkpoint"):
        tune(cfg_b)  # neither --resume nor --overwrite
    with pytest.raises(InvalidInputError, match="augment_zoom") as refused:
        tune(cfg_b.with_(resume=True, augment_zoom=0.5))
    assert "ran with --augment-zoom 0.0" in refused.value.hint
    with pytest.raises(InvalidInputError, match="zoom_in") as refused:
        tune(cfg_b.with_(resume=True, zoom_in=1.5))
    assert "ran with --zoom-in 0.0" in refused.value.hint
    with pytest.raises(InvalidInputError, match="zoom_places") as refused:
        tune(cfg_b.with_(resume=True, zoom_places=3))
    assert "ran with --zoom-places 1" in refused.value.hint
    with pytest.raises(InvalidInputError, match="photo_share") as refused:
        tune(cfg_b.with_(resume=True, photo_share=0.5))
    assert "ran with --photo-share 0.0" in refused.value.hint
    # a checkpoint written before --augment-zoom (and --zoom-in, --zoom-places, --photo-share, --ema) existed ran without it
    state = json.loads((ckpt / "state.json").read_text())
    del state["config"]["augment_zoom"], state["config"]["zoom_places"], state["config"]["photo_share"]
    del state["config"]["zoom_in"]
    del state["config"]["ema"]
    (ckpt / "state.json").write_text(json.dumps(state))

    steps_seen: list[int] = []
    b = tune(cfg_b.with_(resume=True), on_event=lambda k, d: steps_seen.append(d["step"]) if k == "step" else None)
    assert b.resumed_from == 3 and b.steps == 6 and steps_seen == [4, 5, 6]
    ta, tb = load_file(a.subject), load_file(b.subject)
    assert set(ta) == set(tb)
    for n in ta:
        assert torch.equal(ta[n], tb[n]), n
    if precision:
        assert {t.dtype for n, t in ta.items() if n != "subject_embedding"} == {torch.bfloat16}


def test_ema_saves_the_moving_average_and_resumes_exactly(photos):
    """--ema K: the subject is the average of the steps' weights, step i weighted K^(t - i), with
    no share of the starting weights (after 2 steps: (K w1 + w2) / (1 + K)); a run cut by Ctrl-C
    and resumed saves the same average, bit for bit."""
    w1 = load_file(tune(config(photos, name="one", steps=1)).subject)
    w2 = load_file(tune(config(photos, name="two", steps=2)).subject)
    avg = load_file(tune(config(photos, name="avg", steps=2, ema=0.75)).subject)
    assert set(avg) == set(w2)
    for n in w2:
        assert not torch.equal(w1[n], w2[n]), n
        torch.testing.assert_close(avg[n], (0.75 * w1[n] + w2[n]) / 1.75, rtol=0, atol=1e-6)

    whole = tune(config(photos, name="whole", steps=4, ema=0.75))

    def interrupt(kind, data):
        if kind == "step" and data["step"] == 2:
            os.kill(os.getpid(), signal.SIGINT)

    cut = config(photos, name="cut", steps=4, ema=0.75)
    with pytest.raises(TuneInterrupted):
        tune(cut, on_event=interrupt)
    with pytest.raises(InvalidInputError, match="other settings than the checkpoint.s: ema$"):
        tune(cut.with_(resume=True, ema=0.5))
    resumed = tune(cut.with_(resume=True))
    assert resumed.resumed_from == 2
    a, b = load_file(whole.subject), load_file(resumed.subject)
    assert set(a) == set(b) and all(torch.equal(a[n], b[n]) for n in a)


def test_checkpoints_come_whole_on_the_main_thread_and_a_resume_is_exact(photos):
    """Checkpoints at steps 2 and 4 of 5: each "checkpoint" event comes on the main thread once its
    folder is complete on disk, holding its step; the run folder keeps no half-written folder.
    Ctrl-C at step 5 and a resume to step 6 give the weights of 6 steps in one go."""
    run_dir = paths.home() / "runs" / "b"
    events: list[tuple[int, int]] = []

    def on_event(kind, data):
        if kind == "checkpoint":
            assert threading.current_thread() is threading.main_thread()
            on_disk = json.loads((Path(data["path"]) / "state.json").read_text())["step"]
            events.append((data["step"], on_disk))
        if kind == "step" and data["step"] == 5:
            os.kill(os.getpid(), signal.SIGINT)

    a = tune(config(photos, name="a", steps=6, checkpoint_every=2))
    with pytest.raises(TuneInterrupted):
        tune(config(photos, name="b", steps=6, checkpoint_every=2), on_event=on_event)
    assert events == [(2, 2), (4, 4), (5, 5)]
    assert sorted(p.name for p in run_dir.iterdir()) == [CHECKPOINT_DIR]  # no .partial, no .old
    ckpt = run_dir / CHECKPOINT_DIR
    assert set(load_file(str(ckpt / "weights.safetensors"))) == set(load_file(a.subject))
    b = tune(config(photos, name="b", steps=6, checkpoint_every=2, resume=True))
    assert b.resumed_from == 5
    ta, tb = load_file(a.subject), load_file(b.subject)
    for n in ta:
        assert torch.equal(ta[n], tb[n]), n


def test_a_snapshot_is_a_copy_that_later_steps_cannot_change():
    """What a background write reads was copied when the checkpoint was taken."""
    w = torch.ones(3)
    snap = HostSnapshot().take({"w": w}, torch.device("cpu"))
    w.add_(1.0)
    assert torch.equal(snap["w"], torch.ones(3))


def test_a_checkpoint_that_cannot_be_written_stops_the_run_with_a_resource_error(photos):
    """The run folder turns into a file after the prior pool is drawn: the checkpoint write fails
    on the writer thread and tune() raises it as a ResourceError (exit 5); no subject is saved
    and no writer thread stays behind."""
    import shutil

    run_dir = paths.home() / "runs" / "sks"

    def on_event(kind, data):
        if kind == "step" and data["step"] == 1:
            shutil.rmtree(run_dir)
            run_dir.write_text("in the way")

    with pytest.raises(ResourceError) as info:
        tune(config(photos, steps=6, checkpoint_every=2), on_event=on_event)
    assert info.value.exit_code == 5
    assert not any(t.name == "arbooth-checkpoint" for t in threading.enumerate())
    assert not SubjectStore().has("sks")


def test_the_checkpoint_writer_keeps_one_write_in_flight_off_the_main_thread(tmp_path):
    """submit() waits for the previous write; wait() returns (folder, step) or raises the write's
    error; a write that fails leaves no half-written folder; writes run on another thread."""
    writer = CheckpointWriter()
    assert writer.wait() is None
    done: list[int] = []
    threads: list[bool] = []

    def first(d: Path) -> None:
        threads.append(threading.current_thread() is threading.main_thread())
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
    assert threads == [False]
    assert (target / "x").read_text() == "1" and not list(tmp_path.glob("*.partial"))


def test_a_failed_checkpoint_write_on_a_full_disk_is_a_disk_full_error(tmp_path):
    """ENOSPC inside a write becomes DiskFullError (exit 5) and the folder is not left behind."""
    writer = CheckpointWriter()

    def full(d: Path) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    writer.submit(tmp_path / "ckpt", full, 1)
    with pytest.raises(DiskFullError) as info:
        writer.wait()
    assert info.value.exit_code == 5 and not list(tmp_path.iterdir())


def test_resume_without_a_checkpoint_starts_at_step_0_unless_the_subject_is_complete(photos):
    """A run killed before its first checkpoint: --resume starts it at step 0 (and says so); a
    finished subject has nothing to resume and is kept."""
    notes: list[str] = []
    result = tune(config(photos, resume=True), on_event=lambda k, d: notes.append(d["message"]) if k == "note" else None)
    assert result.resumed_from is None and result.steps == 4
    assert any("starting at step 0" in n for n in notes)
    before = Path(result.subject).read_bytes()
    with pytest.raises(InvalidInputError, match="is complete"):
        tune(config(photos, resume=True))
    assert Path(result.subject).read_bytes() == before


def test_a_nan_loss_stops_the_run_and_keeps_the_last_checkpoint(photos):
    """A tuned weight turns NaN after step 3: TrainingDivergedError names step 4, step 2's
    checkpoint stays, no subject is saved."""
    comps = components()
    cfg = config(photos, steps=6, checkpoint_every=2, layers=("ffn",))
    ffn = next(p for n, p in comps.transformer.named_parameters() if ".ffn." in n)

    def poison(kind, data):
        if kind == "step" and data["step"] == 3:
            with torch.no_grad():
                ffn.fill_(float("nan"))

    with pytest.raises(TrainingDivergedError, match="at step 4") as info:
        tune(cfg, components=comps, on_event=poison)
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


def test_a_rank_that_keeps_every_change_costs_nothing(photos):
    """At a rank no smaller than any tuned matrix, the compressed weights are the tuned ones up to
    bf16 rounding of the changes, so the loss pass must see (nearly) the same losses."""
    lr = tune(config(photos, steps=3, save_rank=4096)).lowrank
    assert lr is not None and lr["relative_error"] < 1e-2
    assert lr["ce_lowrank"] == pytest.approx(lr["ce_full"], rel=1e-3)
    assert lr["prior_lowrank"] == pytest.approx(lr["prior_full"], rel=1e-2, abs=1e-5)


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
    for tall_or_wide in (m, m.T.contiguous()):  # each takes the smaller Gram matrix's side
        s = torch.linalg.svdvals(tall_or_wide)
        for r in (1, 3, 6):
            up, down = lowrank_factors(tall_or_wide, r)
            assert up.shape == (tall_or_wide.shape[0], r) and down.shape == (r, tall_or_wide.shape[1])
            err = torch.linalg.norm(tall_or_wide - up @ down)
            assert err.item() == pytest.approx(s[r:].norm().item(), rel=1e-4)
    rank2 = torch.randn(9, 2, dtype=torch.float64) @ torch.randn(2, 12, dtype=torch.float64)
    up, down = lowrank_factors(rank2.float(), 4)  # more rank asked for than there is: no NaN
    assert torch.isfinite(up).all() and torch.isfinite(down).all()
    torch.testing.assert_close(up @ down, rank2.float(), rtol=0, atol=1e-5)
    up, down = lowrank_factors(m, 50)
    assert up.shape == (10, 7)
    torch.testing.assert_close(up @ down, m, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="expected a matrix"):
        lowrank_factors(torch.zeros(3), 1)
    up, down = lowrank_factors(torch.zeros(6, 4), 2)  # an untouched tensor: no solver call, zeros
    assert up.shape == (6, 2) and down.shape == (2, 4) and not up.any() and not down.any()


def test_lowrank_factors_fall_back_to_an_svd_when_the_solver_fails(monkeypatch):
    m = torch.randn(10, 7, generator=torch.Generator().manual_seed(2))

    def fails(*_a, **_k):
        raise torch.linalg.LinAlgError("did not converge")

    monkeypatch.setattr(torch.linalg, "eigh", fails)
    up, down = lowrank_factors(m, 3)
    err = torch.linalg.norm(m - up @ down)
    assert err.item() == pytest.approx(torch.linalg.svdvals(m)[3:].norm().item(), rel=1e-4)


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
    """A checkpoint exists during the run and is removed after the subject is saved; the prior
    pool is kept in the store (for later tunes of the class), not in the run folder."""
    run_dir = paths.home() / "runs" / "sks"
    during = []

    def on_event(kind, data):
        if kind == "checkpoint":
            during.append((Path(data["path"]).is_dir(), (run_dir / POOL_FILE).is_file()))

    result = tune(config(photos, steps=4, checkpoint_every=2), on_event=on_event)
    assert during == [(True, False)]
    assert Path(result.run_dir) == run_dir and run_dir.is_dir()
    for leftover in (CHECKPOINT_DIR, CHECKPOINT_DIR + ".old", POOL_FILE):
        assert not (run_dir / leftover).exists(), leftover
    assert Path(result.subject).is_file()


def test_prior_prompts_are_the_captions_without_the_token(photos):
    cfg = config(photos)
    assert prior_class_prompts(cfg, ["a photo of sks dog"] * 3) == ["a photo of dog"]  # the official prompt
    caps = ["a large sks dog on the left, green background", "a sks dog at the top",
            "a large sks dog on the left, green background"]
    assert prior_class_prompts(cfg, caps) == ["a large dog on the left, green background", "a dog at the top"]
    assert prior_class_prompts(cfg.with_(class_prompt="a {cls} outside"), caps) == ["a dog outside"]
    with pytest.raises(ConfigError, match="--class-prompt must not be empty"):
        cfg.with_(class_prompt=" ").validate()


def test_a_pool_of_several_prompts_draws_each_sample_as_a_pool_of_its_prompt_alone():
    """Sample i of the pool uses prompt i mod P and seed + i: the same sample a one-prompt pool
    draws at i, whatever prompts share its batch."""
    from arbooth_cli.models.schedules import model_scales

    comps = components()
    texts = [comps.text_encoder.encode([p]) for p in ("a dog on the left", "a large dog", "a photo of dog")]
    scales = model_scales(TINY_INFINITY.sampling.size, num_scales=TINY_INFINITY.num_scales or None)
    kw = dict(seed=7, tau=0.5, top_p=0.97)
    pool = sample_prior_pool(comps.transformer, comps.vae, texts, scales, 6, batch=4, **kw)
    assert pool.prompt_N.tolist() == [0, 1, 2, 0, 1, 2]
    for k in range(3):
        alone = sample_prior_pool(comps.transformer, comps.vae, [texts[k]], scales, 6, batch=1, **kw)
        rows = [i for i in range(6) if i % 3 == k]
        assert torch.equal(pool.bits_NLd[rows], alone.bits_NLd[rows])
        torch.testing.assert_close(pool.logits_NLV[rows].float(), alone.logits_NLV[rows].float(), atol=2e-2, rtol=0)


def test_the_prior_pool_of_a_run_draws_each_caption_without_the_token_and_is_reused(photos):
    """Captions give the pool's prompts; an interrupted run's --resume reads the pool it drew."""
    (photos / "photo0.txt").write_text("a sks dog on the left\n")
    (photos / "photo1.txt").write_text("a large sks dog, green background\n")
    seen: list[dict] = []

    def stop(kind, data):
        if kind == "pool":
            seen.append(data)
        if kind == "step" and data["step"] == 1:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TuneInterrupted):
        tune(config(photos, steps=3), on_event=stop)
    assert seen[-1]["done"] == 6 and not seen[-1].get("cached")
    reused: list[dict] = []
    tune(config(photos, steps=3, resume=True), on_event=lambda k, d: reused.append(d) if k == "pool" else None)
    assert reused == [{"done": 6, "total": 6, "cached": True}]


def test_the_learning_rate_and_zoom_default_to_the_models_and_are_recorded(photos):
    """No --lr: the model's rate (the official one for Infinity-family specs, toy's own), written
    into the run's config so checkpoints and the subject's metadata say what was used; the same
    for --augment-zoom (toy's 0.64, off elsewhere)."""
    for model, lr, expected in (("tiny-infinity", None, 2.34375e-5), ("toy", None, 1e-4), ("toy", 3e-4, 3e-4)):
        res = tune(config(photos, steps=1, model=model, lr=lr, name=f"{model}-{lr}", prior=False))
        meta, _ = read_subject_header(Path(res.subject))
        assert json.loads(meta["config"])["lr"] == expected
        assert json.loads(meta["config"])["augment_zoom"] == (0.64 if model == "toy" else 0.0)
        assert json.loads(meta["config"])["zoom_places"] == (5 if model == "toy" else 1)
        assert json.loads(meta["config"])["zoom_in"] == 0.0
        assert json.loads(meta["config"])["drop_path"] == (0.0 if model == "toy" else None)
        assert json.loads(meta["config"])["ema"] == (0.99 if model == "toy" else 0.0)
        assert json.loads(meta["config"])["subject_vectors"] == (8 if model == "toy" else 4)
    with pytest.raises(ConfigError, match="--lr must be > 0"):
        config(photos, lr=0.0).validate()


def test_augmented_copies_train_with_the_photos_and_are_recorded(photos):
    """--augment N: N moved and rescaled copies of each photo join the training set (the step's
    photos come from the larger set), the subject's config records it, and bad amounts are
    config errors."""
    events: list[tuple[str, dict]] = []
    res = tune(config(photos, steps=2, augment=2, prior=False, name="aug"), on_event=lambda k, d: events.append((k, d)))
    meta, _ = read_subject_header(Path(res.subject))
    cfg = json.loads(meta["config"])
    assert (cfg["augment"], cfg["augment_shift"], cfg["augment_scale"]) == (2, 0.05, 0.1)
    assert json.loads(meta["photos"]) == ["photo0.png", "photo1.png", "photo2.png"]  # the photos, not the copies
    plain = tune(config(photos, steps=2, prior=False, name="plain"))
    assert res.losses != plain.losses  # other images in the steps
    shared = tune(config(photos, steps=2, augment=2, photo_share=0.75, prior=False, name="shared"))
    assert shared.losses != res.losses  # the photos drawn more often than their copies
    grown = tune(config(photos, steps=2, zoom_in=1.5, prior=False, name="grown"))
    assert grown.losses != plain.losses  # the enlarged copies join the steps (their pixels: test_data.py)
    assert json.loads(read_subject_header(Path(grown.subject))[0]["config"])["zoom_in"] == 1.5
    for bad in ({"augment": -1}, {"augment": 65}, {"augment_shift": 0.3}, {"augment_scale": -0.1}):
        with pytest.raises(ConfigError, match="--augment"):
            config(photos, **bad).validate()


def test_moved_copies_join_a_toy_run_and_are_recorded(photos):
    """--move-places N on a model whose captions say places: the photos' moved copies join the
    steps (their pixels: test_data.py), and the subject's config records N; where no photo can
    move (no caption says a place), the run says so."""
    base = {"steps": 1, "prior": False, "model": "toy", "cls": "square"}
    events: list[tuple[str, dict]] = []
    tune(config(photos, name="nowhere", move_places=2, **base), on_event=lambda k, d: events.append((k, d)))
    assert any(k == "note" and d["message"].startswith("--move-places: no photo could move") for k, d in events)
    for i, place in enumerate(("on the left", "at the top", "in the center")):
        (photos / f"photo{i}.txt").write_text(f"a large {{token}} {{cls}} {place}, red background\n", encoding="utf-8")
    base["steps"] = 2
    still = tune(config(photos, name="still", **base))
    moved = tune(config(photos, name="moved", move_places=2, **base))
    assert moved.losses != still.losses
    assert json.loads(read_subject_header(Path(moved.subject))[0]["config"])["move_places"] == 2
    assert json.loads(read_subject_header(Path(still.subject))[0]["config"])["move_places"] == 0


def test_recoloured_copies_join_a_toy_run_and_are_recorded(photos):
    """--recolour N on a model whose captions name background colours: the repainted copies join
    the steps (their pixels: test_data.py) and the subject's config records N; where no caption
    names its photo's background colour, a run that asked for it says so."""
    base = {"steps": 1, "prior": False, "model": "toy", "cls": "square"}
    events: list[tuple[str, dict]] = []
    tune(config(photos, name="unnamed", recolour=1, **base), on_event=lambda k, d: events.append((k, d)))
    assert any(k == "note" and d["message"].startswith("--recolour: no view could be repainted") for k, d in events)
    events.clear()  # toy's default (0) asks for nothing: no note
    tune(config(photos, name="quiet", **base), on_event=lambda k, d: events.append((k, d)))
    assert not any(k == "note" and d["message"].startswith("--recolour") for k, d in events)
    for i, colour in enumerate(("red", "green", "blue")):  # make_photos' backgrounds, in the toy's words
        (photos / f"photo{i}.txt").write_text(f"a large {{token}} {{cls}} on the left, {colour} background\n",
                                              encoding="utf-8")
    base["steps"] = 2
    plain = tune(config(photos, name="plain", recolour=0, **base))
    painted = tune(config(photos, name="painted", recolour=1, **base))
    assert painted.losses != plain.losses
    assert json.loads(read_subject_header(Path(painted.subject))[0]["config"])["recolour"] == 1
    assert json.loads(read_subject_header(Path(plain.subject))[0]["config"])["recolour"] == 0
    assert tune(config(photos, name="twice", recolour=2, **base)).losses != painted.losses


def test_subject_vectors_start_at_zero_or_at_the_class_word(photos):
    """--subject-init class: every vector starts as the mean text feature of the class word's
    tokens; zero (the official start) otherwise. A tiny learning rate keeps them where they start."""
    from safetensors.torch import load_file

    got = {}
    for init in ("zero", "class"):
        res = tune(config(photos, steps=1, lr=1e-12, prior=False, subject_init=init, name=f"init-{init}",
                          model="toy", caption="a photo of {token} {cls}"))
        got[init] = load_file(res.subject)["subject_embedding"].float()
    assert got["zero"].abs().max() < 1e-9
    start = got["class"]
    assert start.abs().max() > 1e-3 and torch.allclose(start, start[:1].expand_as(start), atol=1e-9)
    with pytest.raises(ConfigError, match="--subject-init"):
        config(photos, subject_init="word").validate()


def test_train_scales_stops_the_forward_and_the_loss_after_scale_k(photos, tiny_model):
    """The first K scales' teacher-forced logits, with the whole schedule's RoPE frame, are those of
    the whole forward (block-causal attention), so --train-scales K is the loss on those scales."""
    from arbooth_cli.models.schedules import get_schedule
    from arbooth_cli.models.transformer import rope_frame
    from arbooth_cli.specs.tiny import TINY_INFINITY

    from arbooth_cli.models.text_encoder import TextCond

    tr = tiny_model
    scales = get_schedule(num_scales=TINY_INFINITY.num_scales).scales
    g = torch.Generator().manual_seed(0)
    text = TextCond(torch.randn(1, 6, tr.cfg.text_channels, generator=g), torch.tensor([6]))
    L = sum(t * h * w for t, h, w in scales)
    x = torch.randn(1, L - 1, tr.cfg.bits, generator=g)
    with torch.no_grad():
        full = tr(text, x, scales)
        for k in range(1, len(scales)):
            Lk = sum(t * h * w for t, h, w in scales[:k])
            part = tr(text, x[:, : Lk - 1], scales[:k], frame_hw=rope_frame(scales))
            assert torch.allclose(part, full[:, :Lk], atol=1e-5, rtol=1e-5), k
    res = tune(config(photos, steps=2, train_scales=2, prior=True, prior_pool=2, name="k2"))
    meta, _ = read_subject_header(Path(res.subject))
    assert json.loads(meta["config"])["train_scales"] == 2
    assert res.losses != tune(config(photos, steps=2, prior=True, prior_pool=2, name="all")).losses
    with pytest.raises(InvalidInputError, match="--train-scales 9: tiny-infinity at .* has 4 scales"):
        tune(config(photos, train_scales=9, name="bad"))
    with pytest.raises(ConfigError, match="--train-scales must be >= 1"):
        config(photos, train_scales=0).validate()


def test_a_toy_checkpoint_from_before_its_new_defaults_resumes_only_with_what_it_ran(photos):
    """A toy run recorded before toy's --drop-path default became 0, before --ema existed (its
    config says none: the transformer's 0.1, no average), before its --subject-vectors default
    became 8 (it ran with 4) and while its --recolour default was 1 is refused under the new defaults with a hint naming what it ran
    with, and resumes when that is given."""
    cfg = config(photos, name="old-toy", model="toy", steps=4, prior=False)

    def interrupt(kind, data):
        if kind == "step" and data["step"] == 2:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TuneInterrupted) as info:
        tune(cfg.with_(subject_vectors=4), on_event=interrupt)
    ckpt = Path(info.value.checkpoint)
    state = json.loads((ckpt / "state.json").read_text())
    assert state["config"]["drop_path"] == 0.0  # the new default, recorded
    assert state["config"]["ema"] == 0.99
    assert state["config"]["recolour"] == 0
    state["config"]["drop_path"] = None
    del state["config"]["ema"]
    state["config"]["recolour"] = 1  # toy's default for a while: the run repainted its views
    (ckpt / "state.json").write_text(json.dumps(state))
    with pytest.raises(InvalidInputError, match="drop_path, ema, recolour, subject_vectors") as refused:
        tune(cfg.with_(resume=True))
    assert "ran with --drop-path 0.1" in refused.value.hint and "ran with --ema 0.0" in refused.value.hint
    assert "ran with --subject-vectors 4 (the toy model's default is 8" in refused.value.hint
    assert "ran with --recolour 1 (the toy model's default is 0" in refused.value.hint
    assert tune(cfg.with_(resume=True, drop_path=0.1, ema=0.0, subject_vectors=4, recolour=1)).resumed_from == 2
