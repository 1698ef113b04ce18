"""`arbooth --help`, `--version` and `models list` must not import torch (they stay fast)."""

import os
import subprocess
import sys

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


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["models", "list"], ["models", "list", "--json"],
                                  ["plugins", "list"], ["models", "info", "infinity-2b"]])
def test_light_commands_do_not_import_torch(args):
    proc = subprocess.run([sys.executable, "-c", PROBE.format(args=args)], capture_output=True, text=True,
                          env=dict(os.environ), timeout=120)
    assert "HEAVY=\n" in proc.stderr or proc.stderr.rstrip().endswith("HEAVY="), proc.stderr
    assert proc.stdout.strip()


def test_console_script_and_module_entry_points_agree():
    a = subprocess.run([sys.executable, "-m", "arbooth_cli", "--version"], capture_output=True, text=True)
    assert a.returncode == 0 and a.stdout.startswith("arbooth ")
