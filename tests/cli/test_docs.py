"""Docs that cannot drift: the CLI reference, and the README's commands."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_the_readme_scripting_example_prints_what_it_says(tmp_path):
    """The README's scripting pipe, run by a shell as written, with a fresh home."""
    import os
    import shutil

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Scripting"):readme.index("## From Python")]
    (command,) = re.findall(r"```bash\n(.*?)\n```", section, re.S)
    expected = re.search(r"\(`(\[.*?\])` on a fresh install\)", section).group(1)
    arbooth = shutil.which("arbooth")
    env = {**os.environ, "ARBOOTH_HOME": str(tmp_path / "home"), "PATH": os.path.dirname(sys.executable) + os.pathsep
           + os.environ.get("PATH", "")}
    if arbooth is None:  # not installed as a script: call the module the script calls
        command = command.replace("arbooth ", f"{sys.executable} -m arbooth_cli ", 1)
    command = command.replace("python -c", f"{sys.executable} -c")
    out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected


@pytest.mark.slow
def test_the_readme_toy_commands_run_as_written(tmp_path):
    """Every README block that runs on the embedded model (no Infinity, no install), in order, in a
    fresh home: each command exits 0 and says nothing is wrong with its prompt (about 4 minutes)."""
    import os
    import shutil

    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)[1:]  # the first is the install block
    lines = [ln.split("  #")[0].strip() for b in blocks if "infinity" not in b and "pip " not in b
             for ln in b.splitlines() if ln.startswith("arbooth ") and "|" not in ln]
    assert any(ln.startswith("arbooth tune examples/") for ln in lines) and len(lines) >= 8
    (tmp_path / "examples").symlink_to(REPO / "examples")
    env = {**os.environ, "ARBOOTH_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}
    arbooth = shutil.which("arbooth")
    for line in lines:
        cmd = line if arbooth else line.replace("arbooth ", f"{sys.executable} -m arbooth_cli ", 1)
        out = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, f"{line}\n{out.stderr}"
        assert "warning:" not in out.stderr, f"{line}\n{out.stderr}"
