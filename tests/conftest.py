"""Test isolation: every test gets its own arbooth home and hub cache, and loads no installed plugins."""

from __future__ import annotations

import os

# One thread per test process: on a busy 2-core machine two OpenMP threads per process ran the
# toy model up to 9x slower (set before anything imports torch; subprocesses inherit it).
os.environ.setdefault("OMP_NUM_THREADS", "1")
from dataclasses import replace
from pathlib import Path

import pytest

from arbooth_cli.registry import FileSpec, ModelRegistry
from arbooth_cli.specs.tiny import TINY_INFINITY


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` run only with ARBOOTH_RUN_SLOW=1 (the default run stays a few minutes)."""
    if os.environ.get("ARBOOTH_RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: set ARBOOTH_RUN_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "arbooth-home"
    monkeypatch.setenv("ARBOOTH_HOME", str(home))
    monkeypatch.setenv("ARBOOTH_LOAD_PLUGINS", "")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # tests never reach the network
    monkeypatch.delenv("ARBOOTH_DEBUG", raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    return home


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Three small coloured photos (100x120) with a dark square each: a subject folder to tune on."""
    from PIL import Image

    d = tmp_path / "photos"
    d.mkdir()
    for i, colour in enumerate([(200, 40, 40), (40, 180, 60), (50, 60, 210)]):
        im = Image.new("RGB", (100, 120), colour)
        im.paste((20, 20, 20), (10 + 20 * i, 30, 50 + 20 * i, 70))
        im.save(d / f"photo{i}.png")
    return d


@pytest.fixture
def cli():
    """Run `arbooth ARGS...` in-process; returns the typer Result (stdout and stderr apart)."""
    from typer.testing import CliRunner

    from arbooth_cli.cli import build_app

    runner = CliRunner()

    def invoke(*args: str, env: dict | None = None):
        return runner.invoke(build_app(env), list(args), prog_name="arbooth", env=env)

    return invoke


@pytest.fixture
def filed_spec():
    """A tiny spec that needs files (a .pth transformer, a .pth VAE), like the real models do."""
    return replace(
        TINY_INFINITY,
        name="tiny-filed",
        builtin_weights=False,
        files=(
            FileSpec(role="transformer", kind="pth", repo_id="example/tiny", filename="tiny_transformer.pth",
                     state_dict_keys=((), ("trainer", "gpt_fsdp")), match=("tiny_transformer*",)),
            FileSpec(role="vae", kind="pth", repo_id="example/tiny", filename="tiny_vae.pth",
                     state_dict_keys=(("vae",), ()), match=("tiny_vae*",)),
        ),
    )


@pytest.fixture
def make_checkpoints(tmp_path: Path):
    """Write a small transformer .pth and VAE .pth; return their paths and tensors."""
    import torch

    from arbooth_cli.models.build import expected_tensors

    def make(folder: str = "src"):
        d = tmp_path / folder
        d.mkdir(exist_ok=True)
        g = torch.Generator().manual_seed(0)
        shapes = expected_tensors(TINY_INFINITY)
        tr = {k: torch.randn(s, generator=g) for k, s in shapes["transformer"].items()}
        tr["pos_start"] = tr["pos_start"].to(torch.bfloat16)  # dtypes must survive the import
        vae = {k: torch.randn(s, generator=g) for k, s in shapes["vae"].items()}
        torch.save(tr, d / "tiny_transformer.pth")
        torch.save({"vae": vae, "epoch": 3}, d / "tiny_vae.pth")
        return d / "tiny_transformer.pth", d / "tiny_vae.pth", tr, vae

    return make


@pytest.fixture
def registry_with(filed_spec):
    reg = ModelRegistry()
    reg.register(filed_spec)
    return reg
