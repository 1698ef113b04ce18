"""--memory: which blocks recompute their activations, and that it changes no number."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from arbooth_cli.config import TuneConfig
from arbooth_cli.errors import ResourceError
from arbooth_cli.jobs.tune import tune
from arbooth_cli.tuning.memory import MARGIN_SHARE, activation_bytes, blocks_to_keep, plan_kept, recomputed_blocks

GiB = 2**30


def test_the_policy_chooses_how_many_blocks_recompute():
    kw = dict(on_gpu=True, per_block=2 * GiB, total=80 * GiB)
    room = lambda free: free - MARGIN_SHARE * 80 * GiB - 2 * GiB  # noqa: E731
    assert recomputed_blocks("low", "auto", 32, free=70 * GiB, **kw) == 32
    assert recomputed_blocks("auto", "auto", 32, free=70 * GiB, **kw) == 32 - int(room(70 * GiB) // (2 * GiB))
    assert recomputed_blocks("auto", "auto", 32, free=200 * GiB, **kw) == 0  # everything fits
    assert recomputed_blocks("auto", "auto", 32, free=5 * GiB, **kw) == 32  # nothing fits
    assert recomputed_blocks("auto", "on", 32, free=200 * GiB, **kw) == 32  # --grad-checkpointing wins
    assert recomputed_blocks("low", "off", 32, free=1 * GiB, **kw) == 0  # --grad-checkpointing off wins too
    assert recomputed_blocks("high", "auto", 32, free=200 * GiB, **kw) == 0
    with pytest.raises(ResourceError, match="--memory high"):
        recomputed_blocks("high", "auto", 32, free=40 * GiB, **kw)
    for policy in ("auto", "low", "high"):  # on a CPU nothing is recomputed unless asked
        assert recomputed_blocks(policy, "auto", 32, on_gpu=False, per_block=1, free=0, total=0) == 0
    assert blocks_to_keep(32, per_block=2 * GiB, peak=19 * GiB, total=80 * GiB) == (72 * GiB - 19 * GiB) // (
        2 * GiB + 2 * GiB // 6)
    assert blocks_to_keep(32, per_block=2 * GiB, peak=79 * GiB, total=80 * GiB) == 0
    assert 32 * activation_bytes(4, 10521, 2048) == pytest.approx(86e9, rel=0.05)  # infinity-2b: measured ~86 GB


def _tiny_training_pass():
    """The tiny model, two texts and teacher-forcing inputs; ``run(**forward)`` gives the logits,
    every gradient, and how many times the backward pass ran the fused CPU attention kernel."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from arbooth_cli.models.build import build_components
    from arbooth_cli.models.schedules import get_schedule
    from arbooth_cli.specs.tiny import TINY_INFINITY

    class CountAttention(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.calls += func is torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
            return func(*args, **(kwargs or {}))

    c = build_components(TINY_INFINITY)
    tr = c.transformer
    scales = get_schedule(num_scales=TINY_INFINITY.num_scales).scales
    L = sum(h * w for _, h, w in scales)
    text = c.text_encoder.encode(["a red star", "a blue square"])
    x = torch.randn(2, L - 1, tr.cfg.bits, generator=torch.Generator().manual_seed(0))

    def run(**kw):
        tr.zero_grad(set_to_none=True)
        out = tr(text, x, scales, **kw)
        with CountAttention() as count:
            out.square().mean().backward()
        return out.detach(), {n: p.grad.clone() for n, p in tr.named_parameters() if p.grad is not None}, count.calls

    return tr, run


def test_auto_gives_every_block_its_attention_outputs_before_any_block_keeps_the_rest():
    """infinity-2b-like: a block's activations 3.9 GiB, its self-attention outputs 0.16 GiB."""
    from arbooth_cli.models.recompute import kept_attention_bytes

    att = kept_attention_bytes(4, 10521, 2048, 16, 2)
    assert att == pytest.approx(175e6, rel=0.01)
    per_block = int(3.9 * GiB)
    usable = lambda room: int((room + 13 * GiB) / (1 - MARGIN_SHARE)) + 1  # noqa: E731
    kw = dict(per_block=per_block, attention=att, peak=13 * GiB)
    assert plan_kept(32, **kw, total=usable(0)) == (0, 0)  # no room: plain recomputation
    assert plan_kept(32, **kw, total=usable(10 * (att + att // 6))) == (0, 10)  # some blocks keep their attention
    every = 32 * (att + att // 6)
    assert plan_kept(32, **kw, total=usable(every)) == (0, 32)
    rest = per_block - att
    assert plan_kept(32, **kw, total=usable(every + 3 * (rest + rest // 6))) == (3, 29)  # three keep everything
    assert plan_kept(32, **kw, total=usable(10**15)) == (32, 0)
    # without attention outputs to keep: whole blocks only
    assert plan_kept(32, per_block=per_block, attention=0, peak=13 * GiB, total=usable(5 * GiB)) == (1, 0)


def test_auto_measures_a_block_only_where_keeping_one_fits():
    """infinity-2b under --memory-limit 15 (a 16 GB card): the first step peaked at about 12.9 GiB,
    and keeping one block (4.07 GiB measured) in the second step ran out of memory on an H100.
    There auto keeps no block to measure and gives the room to attention outputs; under 24 GiB it
    measures as before."""
    from arbooth_cli.models.recompute import kept_attention_bytes
    from arbooth_cli.tuning.memory import PROBE_ROOM_FACTOR, attention_only, probe_fits

    estimate = activation_bytes(4, 10521, 2048)
    assert PROBE_ROOM_FACTOR * estimate > 4.07 * GiB  # the gate holds the measured block
    assert not probe_fits(estimate=estimate, peak=int(12.9 * GiB), total=15 * GiB)
    assert probe_fits(estimate=estimate, peak=int(12.9 * GiB), total=24 * GiB)
    att = kept_attention_bytes(4, 10521, 2048, 16, 2)
    room = int((1 - MARGIN_SHARE) * 15 * GiB) - int(12.9 * GiB)
    assert attention_only(32, attention=att, peak=int(12.9 * GiB), total=15 * GiB) == room // (att + att // 6) == 3
    assert attention_only(32, attention=att, peak=14 * GiB, total=15 * GiB) == 0  # no room at all
    assert attention_only(32, attention=att, peak=0, total=10**15) == 32  # never more than every block


@pytest.mark.parametrize("limit_gib", [15, 24])
def test_autos_first_step_keeps_a_block_to_measure_only_where_it_fits(monkeypatch, limit_gib):
    """The run's own probe step (GPU memory calls stubbed with infinity-2b's sizes): under 15 GiB
    the second step keeps no block and the plan is made at once (every block recomputes, some keep
    their attention outputs); under 24 GiB the second step keeps one block to measure it."""
    from types import SimpleNamespace

    from arbooth_cli.jobs.tune import _Run
    from arbooth_cli.models.recompute import KeptAttention

    peak, reserved = int(12.9 * GiB), 14 * GiB
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: peak)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda *a: reserved)
    notes = []
    cfg = SimpleNamespace(depth=32, embed_dim=2048, num_heads=16)
    run = SimpleNamespace(probe=[int(8 * GiB)], kept=KeptAttention(), probe_peak=0, run_peak=0, ckpt_blocks=32,
                          step_rows=4, train_L=10521, device="cuda",
                          transformer=SimpleNamespace(cfg=cfg, compute_dtype=torch.bfloat16),
                          _gpu_room=lambda: (limit_gib * GiB - reserved, limit_gib * GiB),
                          emit=lambda kind, data: notes.append(data["message"]))
    _Run._memory_probe_step(run)
    assert run.probe_peak == peak == run.run_peak
    if limit_gib == 15:
        assert run.probe is None and run.ckpt_blocks == 32 and run.kept.blocks == 3
        assert "too little GPU memory" in notes[0]
    else:
        assert run.probe == [int(8 * GiB)] and run.ckpt_blocks == 31 and notes == []


def test_kept_attention_outputs_change_no_number_and_skip_the_attention(monkeypatch):
    """The recomputed blocks that keep their self-attention outputs give the logits and gradients of
    plain recomputation bit for bit, and their backward pass runs only the text attention again;
    also scale by scale, several calls a block (the tiny schedule split after its first 5 tokens),
    and nothing stays kept after the backward pass."""
    from arbooth_cli.models import transformer
    from arbooth_cli.models.offload import HostOffload
    from arbooth_cli.models.recompute import KeptAttention
    from arbooth_cli.models.schedules import get_schedule
    from arbooth_cli.specs.tiny import TINY_INFINITY

    split = transformer.ScalePrefixes.of
    monkeypatch.setattr(transformer.ScalePrefixes, "of",
                        staticmethod(lambda scales, device, head_tokens=0: split(scales, device, head_tokens=5)))
    prefixes = transformer.ScalePrefixes.of(get_schedule(num_scales=TINY_INFINITY.num_scales).scales, "cpu")
    assert prefixes.head == 5 and len(prefixes.bounds) >= 2

    tr, run = _tiny_training_pass()
    for p in tr.parameters():
        p.requires_grad_(True)
    depth = tr.cfg.depth
    # the (L, L) mask: one self-attention call a block; scale by scale: the masked head and one a scale
    for prefix, self_calls in ((False, 1), (True, 1 + len(prefixes.bounds))):
        want, want_grads, calls = run(checkpoint_blocks=True, prefix_attention=prefix)
        assert calls == depth * (self_calls + 1)  # every block recomputes its self- and text attention
        for blocks in (depth, 1):
            store, kept = HostOffload(torch.device("cpu"), min_bytes=0), KeptAttention(blocks)
            store.start_step()
            got, grads, calls = run(checkpoint_blocks=True, prefix_attention=prefix, kept=kept, offload=store)
            assert torch.equal(got, want) and grads.keys() == want_grads.keys()
            assert all(torch.equal(grads[n], want_grads[n]) for n in grads)
            assert calls == depth * (self_calls + 1) - blocks * self_calls
            assert not any(kept._kept.values())  # every kept output went to its recomputation


def test_a_kernel_that_refuses_the_inputs_leaves_the_attention_to_pytorch(monkeypatch):
    """Where the fused kernel refuses a call (a GPU or shape it does not serve), that call runs
    through PyTorch's SDPA and is recomputed as before: the same numbers."""
    from arbooth_cli.models import recompute
    from arbooth_cli.models.recompute import KeptAttention

    tr, run = _tiny_training_pass()
    for p in tr.parameters():
        p.requires_grad_(True)
    want, want_grads, _ = run(checkpoint_blocks=True)

    def refuses(*a, **k):
        raise RuntimeError("no valid execution plan")

    monkeypatch.setattr(recompute, "_fused_forward", refuses)
    got, grads, calls = run(checkpoint_blocks=True, kept=KeptAttention(tr.cfg.depth))
    assert calls == 2 * tr.cfg.depth  # every attention ran again in the backward pass
    assert torch.equal(got, want) and all(torch.equal(grads[n], want_grads[n]) for n in want_grads)


def test_a_memory_limit_is_checked_and_an_out_of_memory_error_says_what_to_do(photos, monkeypatch):
    from arbooth_cli.errors import ConfigError
    from arbooth_cli.jobs import tune as job

    with pytest.raises(ConfigError, match="--memory-limit"):
        TuneConfig(photos=str(photos), token="sks", cls="dog", memory_limit=0).validate()

    def out_of_memory(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(job, "_tune", out_of_memory)
    cfg = TuneConfig(photos=str(photos), token="sks", cls="dog", model="tiny-infinity", memory_limit=24)
    with pytest.raises(ResourceError, match="within --memory-limit 24 GiB") as raised:
        tune(cfg)
    assert "larger --memory-limit" in raised.value.hint and "Tried to allocate" in raised.value.message


@pytest.mark.parametrize("policy", [{"grad_checkpointing": "on"}, {"memory": "low"}, {"memory": "high"}])
def test_every_memory_policy_gives_the_same_subject(photos, policy):
    """The same loss and weights whatever is recomputed (here: every block, or none)."""
    base = dict(photos=str(photos), token="sks", cls="dog", model="tiny-infinity", steps=3, validate_every=0,
                checkpoint_every=0, log_every=1)
    plain = tune(TuneConfig(**base, name="plain"))
    other = tune(TuneConfig(**base, name="other", **policy))
    a, b = load_file(plain.subject), load_file(other.subject)
    assert all(torch.equal(a[n], b[n]) for n in a) and plain.losses == other.losses


def test_a_tensor_every_block_saves_goes_to_the_host_once():
    """The RoPE tables are saved by every block: the first block's copy is the only one; a new
    tensor, even of the same shape, gets its own."""
    from arbooth_cli.models.offload import HostOffload, _Stored

    store = HostOffload(torch.device("cpu"), min_bytes=0)
    table, x = torch.randn(16, 8), torch.randn(16, 8)
    assert isinstance(store._pack(table), _Stored)
    assert store._pack(table) is table and store._pack(table) is table
    assert isinstance(store._pack(x), _Stored) and len(store._order) == 2
    store.start_step()  # a new step: saved afresh
    assert isinstance(store._pack(table), _Stored)


def test_block_inputs_kept_in_host_memory_change_no_number():
    """--memory low on a GPU: the recomputed blocks' inputs wait in host memory for the backward
    pass; the logits and every gradient are those of the plain checkpointed blocks, bit for bit,
    whichever parameters train (also when no block input needs a gradient); nothing brought back
    stays behind after the backward pass."""
    from arbooth_cli.models.offload import HostOffload

    tr, run = _tiny_training_pass()
    top = {id(p) for p in tr.blocks[-1].parameters()}
    chosen = {"all": lambda n, p: True, "ffn": lambda n, p: ".ffn." in n,  # no block input needs a gradient
              "top block": lambda n, p: id(p) in top}  # the blocks below it run no backward of their own
    for trainable, wanted in chosen.items():
        for n, p in tr.named_parameters():
            p.requires_grad_(wanted(n, p))
        store = HostOffload(torch.device("cpu"), min_bytes=0)
        want, want_grads, _ = run(checkpoint_blocks=True)
        assert want_grads and all(wanted(n, p) for n, p in tr.named_parameters() if n in want_grads)
        for _ in range(2):  # a second step reuses the host buffers
            store.start_step()
            got, grads, _ = run(checkpoint_blocks=True, offload=store)
            store.finish_step()
            assert torch.equal(got, want) and grads.keys() == want_grads.keys()
            assert all(torch.equal(grads[n], want_grads[n]) for n in grads)
            assert len(store._order) >= tr.cfg.depth  # at least every block's input went to the host
            # no copy brought back is left on the device for the next step
            assert all(st.back is None for st in store._order)
            # every one came back exactly when a backward pass needed it
            assert all(st.used for st in store._order) == (trainable != "top block")
    for p in tr.parameters():
        p.requires_grad_(True)


def test_the_prior_pool_batch_follows_the_memory_policy_and_the_free_memory():
    """infinity-2b at 1M: 2.57 GiB of key/value cache a sample; `low` draws two at once, the other
    policies five, never more than the free memory less a margin holds, and always at least one."""
    from arbooth_cli.tuning.prior import pool_batch_size

    GiB = 2**30
    per_sample = 32 * 2 * 10521 * 2048 * 2
    assert pool_batch_size(per_sample, "low", free=100 * GiB) == 2
    assert pool_batch_size(per_sample, "auto", free=100 * GiB) == pool_batch_size(per_sample, "high", free=100 * GiB) == 5
    assert pool_batch_size(per_sample, "auto", free=10 * GiB) == 3  # 8 GiB after the margin
    assert pool_batch_size(per_sample, "low", free=1 * GiB) == 1  # not even one fits: one all the same
    assert pool_batch_size(1 << 20, "auto", free=100 * GiB) == 32
