from importlib import metadata

import pytest
from typer.testing import CliRunner

from arbooth_cli import plugins
from arbooth_cli.cli import build_app


@pytest.fixture
def cli():
    """Run `arbooth ARGS...` in-process; returns the typer Result (stdout and stderr apart)."""
    runner = CliRunner()

    def invoke(*args: str, env: dict | None = None):
        return runner.invoke(build_app(env), list(args), prog_name="arbooth", env=env)

    return invoke


@pytest.fixture
def entry_points(monkeypatch):
    """Pretend these (name, "module:attr", group) entry points are installed, and nothing else."""

    def install(*eps: tuple[str, str, str]):
        fake = [metadata.EntryPoint(name, value, group) for name, value, group in eps]
        monkeypatch.setattr(plugins.metadata, "entry_points",
                            lambda group: [e for e in fake if e.group == group])
        monkeypatch.delenv("ARBOOTH_LOAD_PLUGINS", raising=False)

    return install
