"""Tuning runs at the edges: two tunes of one name, an unwritable home, leftovers of a killed run,
and a run killed with SIGKILL that resumes bit-exact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from filelock import FileLock
from safetensors.torch import load_file

from arbooth_cli import paths
from arbooth_cli.cache import ModelCache
from arbooth_cli.config import TuneConfig
from arbooth_cli.errors import ResourceError, RunBusyError
from arbooth_cli.jobs.tune import tune
from arbooth_cli.tuning.checkpoints import CHECKPOINT_DIR


def config(photos: Path, **kw) -> TuneConfig:
    base = dict(photos=str(photos), token="sks", cls="dog", model="tiny-infinity", steps=4, validate_every=0,
                checkpoint_every=0, log_every=1)
    return TuneConfig(**{**base, **kw})


def test_a_second_tune_of_the_same_name_fails_at_once(photos):
    """While a tune of 'sks' holds its lock, another (with --overwrite too) stops before any work."""
    lock = FileLock(str(paths.run_lock(paths.home(), "sks")))
    paths.locks_dir(paths.home()).mkdir(parents=True, exist_ok=True)
    events: list[str] = []
    with lock:
        for cfg in (config(photos), config(photos, overwrite=True)):
            with pytest.raises(RunBusyError, match="is running") as info:
                tune(cfg, on_event=lambda kind, data: events.append(kind))
            assert info.value.exit_code == 5 and "--name" in (info.value.hint or "")
    assert events == []  # nothing was loaded or sampled
    assert tune(config(photos, steps=1)).steps == 1  # the lock is free again


def test_an_unwritable_home_is_a_resource_error_before_any_work(photos, tmp_path, monkeypatch):
    home = tmp_path / "home-is-a-file"
    home.write_text("not a folder")
    monkeypatch.setenv("ARBOOTH_HOME", str(home))
    events: list[str] = []
    with pytest.raises(ResourceError) as info:
        tune(config(photos), on_event=lambda kind, data: events.append(kind))
    assert info.value.exit_code == 5 and "loaded" not in events


def test_half_written_checkpoints_are_removed_by_the_next_run_and_by_prune(photos):
    run_dir = paths.runs_dir(paths.home()) / "sks"
    (run_dir / "checkpoint.1234abcd.partial").mkdir(parents=True)
    (run_dir / ".prior-pool.safetensors.5678.tmp").write_bytes(b"half")
    notes: list[str] = []
    tune(config(photos, steps=1), on_event=lambda k, d: notes.append(d["message"]) if k == "note" else None)
    assert not list(run_dir.glob("*.partial")) and not list(run_dir.glob(".*.tmp"))
    assert sum("half-written" in n for n in notes) == 2

    other = paths.runs_dir(paths.home()) / "other"
    (other / "checkpoint.9999.partial").mkdir(parents=True)
    removed = ModelCache().prune()
    assert other / "checkpoint.9999.partial" in removed and not (other / "checkpoint.9999.partial").exists()


def _tune_cmd(photos: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "arbooth_cli", "tune", str(photos), "--token", "sks", "--class", "dog",
            "-m", "tiny-infinity", "--name", name, "--steps", "12", "--checkpoint-every", "2", "--validate-every", "0",
            "--log-every", "1", *extra]


def test_a_run_killed_with_sigkill_resumes_bit_exact(photos, tmp_path):
    """SIGKILL right after the checkpoint of step 4 (maybe while the next one is being written):
    the same command with --resume finishes with the weights of an uninterrupted run."""
    env = {**os.environ, "ARBOOTH_HOME": str(paths.home()), "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}
    whole = subprocess.run(_tune_cmd(photos, "whole"), env=env, capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr
    proc = subprocess.Popen(_tune_cmd(photos, "killed"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 300
    for line in proc.stderr:
        if "checkpoint" in line and "step 4" in line:
            proc.send_signal(signal.SIGKILL)
            break
        assert time.monotonic() < deadline
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    state = json.loads((paths.runs_dir(paths.home()) / "killed" / CHECKPOINT_DIR / "state.json").read_text())
    assert state["step"] >= 4
    resumed = subprocess.run(_tune_cmd(photos, "killed", "--resume", "--json"), env=env, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["resumed_from"] == state["step"]
    a = load_file(str(paths.home() / "subjects" / "whole" / "subject.safetensors"))
    b = load_file(str(paths.home() / "subjects" / "killed" / "subject.safetensors"))
    assert set(a) == set(b) and all(torch.equal(a[n], b[n]) for n in a)
