from importlib import metadata

import pytest

from arbooth_cli import plugins


@pytest.fixture
def entry_points(monkeypatch):
    """Pretend these (name, "module:attr", group) entry points are installed, and nothing else."""

    def install(*eps: tuple[str, str, str]):
        fake = [metadata.EntryPoint(name, value, group) for name, value, group in eps]
        monkeypatch.setattr(plugins.metadata, "entry_points",
                            lambda group: [e for e in fake if e.group == group])
        monkeypatch.delenv("ARBOOTH_LOAD_PLUGINS", raising=False)

    return install
