import pytest
from typer.testing import CliRunner

from arbooth_cli.cli import build_app


@pytest.fixture
def cli():
    """Run `arbooth ARGS...` in-process; returns the typer Result (stdout and stderr apart)."""
    runner = CliRunner()

    def invoke(*args: str, env: dict | None = None):
        return runner.invoke(build_app(env), list(args), prog_name="arbooth", env=env)

    return invoke
