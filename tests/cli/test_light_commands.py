"""`arbooth --help`, `--version`, `models list` and `subjects list` must not import torch (they stay fast)."""

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import sys
from arbooth_cli.cli import main
try:
    main({args!r})
except SystemExit as e:
    code = e.code
heavy = sorted(m for m in ("torch", "transformers", "safetensors", "numpy") if m in sys.modules)
print("HEAVY=" + ",".join(heavy), file=sys.stderr)
"""


def _store_a_subject() -> None:
    """A minimal subject file in the store (written by hand: this test process may lack torch too)."""
    meta = {"format": "arbooth.subject/1", "name": "sks", "token": "sks", "class": "dog",
            "base_model": "tiny-infinity", "base_model_hash": "0" * 64, "steps": "2", "config": "{}"}
    header = json.dumps({"__metadata__": meta,
                         "subject_embedding": {"dtype": "F32", "shape": [1, 1], "data_offsets": [0, 4]}}).encode()
    d = Path(os.environ["ARBOOTH_HOME"]) / "subjects" / "sks"
    d.mkdir(parents=True)
    (d / "subject.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)


def _store_a_pool() -> None:
    """A minimal kept prior pool (written by hand, as above)."""
    meta = {"key": "0123456789abcdef", "done": "1", "model": "tiny-infinity", "class_prompts": '["a photo of dog"]',
            "created": "2026-01-01T00:00:00+00:00"}
    header = json.dumps({"__metadata__": meta,
                         "bits": {"dtype": "U8", "shape": [1, 1, 1], "data_offsets": [0, 1]},
                         "logits": {"dtype": "BF16", "shape": [1, 1, 2], "data_offsets": [1, 5]},
                         "prompt": {"dtype": "I64", "shape": [1], "data_offsets": [5, 13]}}).encode()
    d = Path(os.environ["ARBOOTH_HOME"]) / "pools"
    d.mkdir(parents=True)
    (d / "0123456789abcdef.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 13)


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["models", "list"], ["models", "list", "--json"],
                                  ["plugins", "list"], ["models", "info", "infinity-2b"],
                                  ["subjects", "list"], ["subjects", "list", "--json"],
                                  ["inspect", "--help"], ["inspect", "noise", "--help"],
                                  ["inspect", "weights", "--help"], ["pools", "list"], ["pools", "list", "--json"]])
def test_light_commands_do_not_import_torch(args):
    if args[0] == "subjects":
        _store_a_subject()  # so the listing reads a header
    if args[0] == "pools":
        _store_a_pool()
    proc = subprocess.run([sys.executable, "-c", PROBE.format(args=args)], capture_output=True, text=True,
                          env=dict(os.environ), timeout=120)
    assert "HEAVY=\n" in proc.stderr or proc.stderr.rstrip().endswith("HEAVY="), proc.stderr
    assert proc.stdout.strip()
    if args[0] == "subjects":
        assert "sks" in proc.stdout
    if args[0] == "pools":
        assert "0123456789abcdef" in proc.stdout


def test_console_script_and_module_entry_points_agree():
    a = subprocess.run([sys.executable, "-m", "arbooth_cli", "--version"], capture_output=True, text=True)
    assert a.returncode == 0 and a.stdout.startswith("arbooth ")


def test_progress_without_a_terminal_is_plain_lines_with_an_estimate():
    """A log file gets one line per tenth of a task with the time left; a task that starts over
    (per-image scales) shows only its first round."""
    import io

    from rich.console import Console

    from arbooth_cli.cli._output import PlainProgress

    now = [0.0]
    buf = io.StringIO()
    bar = PlainProgress(Console(file=buf, width=200), clock=lambda: now[0])
    with bar:
        images = bar.add_task("images", total=20)
        scales = bar.add_task("scales", total=3)
        for i in range(20):
            for k in range(3):
                bar.update(scales, completed=k + 1)
            now[0] += 2.0
            bar.advance(images)
    lines = buf.getvalue().splitlines()
    assert [ln.split()[1] for ln in lines if ln.startswith("images")] == [f"{n}/20" for n in range(1, 21, 1)
                                                                           if n == 1 or n % 2 == 0]
    assert sum(ln.startswith("scales") for ln in lines) == 3
    assert "images 10/20 0:20 elapsed, about 0:20 left" in lines
