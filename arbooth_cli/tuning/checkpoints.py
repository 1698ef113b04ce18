"""Checkpoints of a tuning run: a folder per checkpoint (``weights.safetensors``, ``optimizer.safetensors``,
``state.json``), swapped in atomically and written on a background thread."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..atomic import write_dir_atomic
from ..checkpoint_io import write_safetensors
from ..errors import CheckpointError

CHECKPOINT_DIR = "checkpoint"


class CheckpointWriter:
    """Writes checkpoint folders (with :func:`write_dir_atomic`) on a background thread, so the
    training steps go on while a big checkpoint reaches the disk.

    At most one write is in flight: :meth:`submit` first waits for the previous one, so the host
    buffers a snapshot lives in are never refilled while a write still reads them. The thread never
    calls back into the run (progress events belong to the main thread); :meth:`wait` hands its
    result or its error to the caller."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._pending: tuple[Path, int] | None = None
        self._error: BaseException | None = None

    @property
    def finished(self) -> bool:
        """A write was submitted and has ended (:meth:`wait` will not block)."""
        return self._thread is not None and not self._thread.is_alive()

    def submit(self, target: Path, write: Callable[[Path], None], step: int) -> tuple[Path, int] | None:
        """Start writing ``target`` with ``write``; returns what :meth:`wait` returned for the
        previous write (and raises its error)."""
        previous = self.wait()

        def work() -> None:
            try:
                write_dir_atomic(target, write)
            except BaseException as exc:  # re-raised in the main thread by wait()
                self._error = exc

        self._pending = (target, step)
        # not a daemon: a checkpoint that has started is finished even if the main thread dies
        self._thread = threading.Thread(target=work, name="arbooth-checkpoint")
        self._thread.start()
        return previous

    def wait(self) -> tuple[Path, int] | None:
        """Block until the write in flight (if any) is on disk; return its (folder, step), or
        None when there was none. An error of the write is raised here, in the caller."""
        if self._thread is None:
            return None
        self._thread.join()  # fields are cleared only after the join: an interrupted wait can be retried
        done, error = self._pending, self._error
        self._thread = self._pending = self._error = None
        if error is not None:
            raise error
        return done


def find_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint folder of a run (``checkpoint``, else ``checkpoint.old``)."""
    for name in (CHECKPOINT_DIR, CHECKPOINT_DIR + ".old"):
        d = run_dir / name
        if (d / "state.json").is_file():
            return d
    return None


class HostSnapshot:
    """Host copies of device tensors that later steps cannot change. On CUDA they go into pinned
    buffers kept for the next snapshot (allocating GBs of pinned memory each time would cost
    more than the copy); the copies are only queued: :meth:`take` synchronises once at the end."""

    def __init__(self) -> None:
        self._pinned: dict[str, Tensor] = {}

    def take(self, tensors: Mapping[str, Tensor], device: torch.device) -> dict[str, Tensor]:
        if device.type != "cuda":
            return {k: v.detach().to("cpu", copy=True) for k, v in tensors.items()}
        out = {}
        for k, v in tensors.items():
            buf = self._pinned.get(k)
            if buf is None or buf.shape != v.shape or buf.dtype != v.dtype:
                buf = self._pinned[k] = torch.empty(v.shape, dtype=v.dtype, pin_memory=True)
            out[k] = buf.copy_(v.detach(), non_blocking=True)
        torch.cuda.current_stream(device).synchronize()  # the one sync for all the copies
        return out

    def release(self) -> None:
        """Give the pinned host memory back (no write may still read it)."""
        self._pinned.clear()


def checkpoint_writer(weights: Mapping[str, Tensor], extra: Mapping[str, Tensor],
                      state: Mapping[str, Any]) -> Callable[[Path], None]:
    """What writes one checkpoint folder; it reads only the (host) tensors given here."""

    def write(d: Path) -> None:
        write_safetensors(d / "weights.safetensors", weights)
        write_safetensors(d / "optimizer.safetensors", extra)
        (d / "state.json").write_text(json.dumps(state, indent=1))

    return write


#: what a checkpoint's state.json must hold, and of which type
STATE_KEYS = {"step": int, "pos": int, "opt_steps": int, "config": dict, "model_hash": str}


def read_state(ckpt: Path) -> dict[str, Any]:
    try:
        state = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {ckpt / 'state.json'}: {exc}",
                              hint="start again with --overwrite") from None
    bad = [k for k, t in STATE_KEYS.items() if not isinstance(state, dict) or not isinstance(state.get(k), t)]
    if bad:
        raise CheckpointError(f"{ckpt / 'state.json'} is damaged (no valid {', '.join(bad)})",
                              hint="start again with --overwrite")
    return state


def read_checkpoint(ckpt: Path, device: torch.device) -> tuple[dict[str, Any], dict[str, Tensor], dict[str, Tensor]]:
    """``(state, weights on device, optimizer state and random states on the host)``."""
    from safetensors.torch import load_file

    state = read_state(ckpt)
    try:
        weights = load_file(str(ckpt / "weights.safetensors"), device=str(device))
        extra = load_file(str(ckpt / "optimizer.safetensors"), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise CheckpointError(f"cannot read the checkpoint in {ckpt}: {exc}",
                              hint="start again with --overwrite") from None
    missing = [k for k in ("rng.data", "rng.noise", "order") if k not in extra]
    if missing:
        raise CheckpointError(f"the checkpoint in {ckpt} lacks {', '.join(missing)}", hint="start again with --overwrite")
    return state, weights, extra
