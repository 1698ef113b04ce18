"""Docs that cannot drift: the CLI reference, and the README's commands."""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_cli_reference_is_up_to_date():
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "gen_cli_docs.py"), "--check"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_readme_opens_with_the_two_setup_commands_and_ci_runs_the_test_one():
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", readme, re.S)
    first = blocks[0].strip().splitlines()
    assert first[0].startswith("pip install ") and "arbooth " in first[0]
    test_cmd = first[1]
    assert "pytest" in test_cmd
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert "python -m pip install --quiet torch==2.13.0" in ci
    assert ci[-1] == test_cmd, "'.ci/run' must end with exactly the README's test command"
    assert ci.index("python -m pip install --quiet torch==2.13.0") < ci.index(test_cmd)


def test_every_exit_code_in_the_errors_module_is_documented():
    from arbooth_cli import errors

    doc = (REPO / "docs" / "cli.md").read_text() + (REPO / "docs" / "errors.md").read_text()
    for name in dir(errors):
        if name.startswith("EXIT_"):
            assert re.search(rf"\b{getattr(errors, name)}\b", doc), name
