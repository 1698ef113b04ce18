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
    assert test_cmd in ci, "'.ci/run' must run exactly the README's test command"
    assert ci.index("python -m pip install --quiet torch==2.13.0") < ci.index(test_cmd)
    slow = [i for i, line in enumerate(ci) if "-m slow" in line]
    assert slow == [len(ci) - 1] and ci.index(test_cmd) < slow[0], "the slow tests are a separate, last step"


def test_every_exit_code_in_the_errors_module_is_documented():
    from arbooth_cli import errors

    doc = (REPO / "docs" / "cli.md").read_text() + (REPO / "docs" / "errors.md").read_text()
    for name in dir(errors):
        if name.startswith("EXIT_"):
            assert re.search(rf"\b{getattr(errors, name)}\b", doc), name


def test_the_readme_python_example_runs(tmp_path, monkeypatch):
    """The README's library example, as written, on the embedded model."""
    readme = (REPO / "README.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", readme, re.S)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert sorted(p.name for p in (tmp_path / "stars").glob("*.png")) == [
        "0000-a-red-star-on-the-left-blue-background-0.png", "0000-a-red-star-on-the-left-blue-background-1.png"]
