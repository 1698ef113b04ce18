"""How many blocks a tuning step recomputes (``--memory``).

Keeping a block's activations for the backward pass costs memory; recomputing them costs a second
forward of the block. ``low`` recomputes every block (only each block's input is kept), ``high``
none, and ``auto`` measures: its first step recomputes every block, its second keeps one block's
activations (where that fits: :func:`probe_fits`), and the difference of what the two forwards
left allocated is one block's activations; from the third step on the recomputed blocks keep their self-attention outputs and
as many blocks keep all their activations as the GPU's memory holds beside the peak so far
(:func:`plan_kept`). The loss and the updates are the same whatever is recomputed
(tests/tuning/test_memory.py).
"""

from __future__ import annotations

from typing import Literal

from ..errors import ResourceError

#: bytes one block keeps for its backward pass per element of its input (batch x tokens x width):
#: infinity-2b in bf16 kept about 86 GB for 32 blocks at 4 x 10,521 x 2048 (docs/benchmarks.md)
ACTIVATION_BYTES_PER_ELEMENT = 32
#: share of the GPU's memory left free for what a step allocates besides the kept activations
MARGIN_SHARE = 0.10
#: ``auto``'s second step keeps one whole block to measure it, but only where the room beside the
#: first step's peak holds this many times :func:`activation_bytes` (infinity-2b measured 4.07 GiB
#: a block against the formula's 2.5): on a small card (or under --memory-limit) it would not fit
PROBE_ROOM_FACTOR = 2

Policy = Literal["auto", "low", "high"]


def activation_bytes(batch: int, tokens: int, width: int) -> int:
    """Estimated bytes one block keeps for the backward pass when it is not recomputed."""
    return ACTIVATION_BYTES_PER_ELEMENT * batch * tokens * width


def recomputed_blocks(policy: Policy, grad_checkpointing: str, depth: int, *, on_gpu: bool, per_block: int,
                      free: int, total: int) -> int:
    """Blocks to recompute (the first ones), from ``--memory``, ``--grad-checkpointing`` (on/off
    override it), the activations of one block (``per_block`` bytes) and the GPU's free and total
    memory just before the first step. On a CPU the policy does not apply: nothing is recomputed
    (memory is the host's) unless ``--grad-checkpointing on``."""
    if grad_checkpointing == "on":
        return depth
    if grad_checkpointing == "off" or not on_gpu:
        return 0
    if policy == "low":
        return depth
    room = free - int(MARGIN_SHARE * total) - per_block  # one block's recomputation runs at a time
    if policy == "high":
        if depth * per_block > room:
            need, have = depth * per_block / 2**30, max(room, 0) / 2**30
            raise ResourceError(f"--memory high keeps every block's activations: about {need:.1f} GiB, but about "
                                f"{have:.1f} GiB of the GPU is free for them",
                                hint="use --memory auto (recompute what does not fit) or a smaller --batch-size")
        return 0
    keep = max(0, min(depth, room // max(per_block, 1)))
    return depth - keep


def blocks_to_keep(depth: int, *, per_block: int, peak: int, total: int) -> int:
    """``auto`` after its two measuring steps: how many blocks may keep their activations, given
    one block's activations (``per_block`` bytes, measured), the peak memory of the training steps
    so far and the GPU memory this process can use (``total``: free plus its own reserved memory);
    a share of it (:data:`MARGIN_SHARE`) and a sixth of the estimate stay free."""
    return plan_kept(depth, per_block=per_block, attention=0, peak=peak, total=total)[0]


def plan_kept(depth: int, *, per_block: int, attention: int, peak: int, total: int) -> tuple[int, int]:
    """``auto`` after its two measuring steps: ``(kept, attention_kept)``, the blocks that keep all
    their activations and, of the recomputed ones, those that keep their self-attention outputs
    (``attention`` bytes a block; :mod:`arbooth_cli.models.recompute`). Per byte, kept attention
    saves several times the time a kept block does, so every block gets it before any block keeps
    the rest; each estimate gets a sixth on top, and :data:`MARGIN_SHARE` of ``total`` stays free."""
    room = int((1 - MARGIN_SHARE) * total) - peak
    with_attention = 0
    if attention > 0:
        cost = attention + attention // 6
        with_attention = max(0, min(depth, room // cost))
        room -= with_attention * cost
    rest = max(per_block - (attention if with_attention else 0), 1)
    kept = max(0, min(depth, room // (rest + rest // 6)))
    if attention <= 0:
        return kept, 0
    kept = min(kept, with_attention)
    return kept, with_attention - kept


def probe_fits(*, estimate: int, peak: int, total: int) -> bool:
    """``auto`` after its first step: whether its second may keep one block's activations (about
    ``estimate`` bytes, :func:`activation_bytes`) to measure them, beside the first step's ``peak``
    within ``total`` less :data:`MARGIN_SHARE`."""
    return int((1 - MARGIN_SHARE) * total) - peak >= PROBE_ROOM_FACTOR * estimate


def attention_only(depth: int, *, attention: int, peak: int, total: int) -> int:
    """``auto`` where a block could not be measured (:func:`probe_fits` false): every block
    recomputes, and this many of them keep their self-attention outputs (:func:`plan_kept`'s rule)."""
    return plan_kept(depth, per_block=total + 1, attention=attention, peak=peak, total=total)[1]
