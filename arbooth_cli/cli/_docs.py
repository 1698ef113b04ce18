"""Render the CLI reference (docs/cli.md) from the commands' own ``--help``, so it cannot drift."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

#: Fixed so the rendering is the same on every machine (typer reads TERMINAL_WIDTH at import).
WIDTH = "100"


def _paths(app: typer.Typer) -> list[list[str]]:
    root = typer.main.get_command(app)
    out: list[list[str]] = []

    def walk(cmd, prefix: list[str]) -> None:
        out.append(prefix)
        for name in sorted(getattr(cmd, "commands", {}) or {}):
            walk(cmd.commands[name], [*prefix, name])

    walk(root, [])
    return out


def render(app: typer.Typer) -> str:
    runner = CliRunner()
    parts = [
        "# CLI reference",
        "",
        "Generated from `arbooth ... --help` by `python tools/gen_cli_docs.py`; a test fails when it is stale.",
        "",
    ]
    for path in _paths(app):
        result = runner.invoke(app, [*path, "--help"], prog_name="arbooth", env={"NO_COLOR": "1"})
        if result.exit_code != 0:
            raise RuntimeError(f"'arbooth {' '.join(path)} --help' failed: {result.output}")
        title = " ".join(["arbooth", *path])
        text = "\n".join(line.rstrip() for line in result.output.strip("\n").splitlines())
        parts += [f"## `{title}`", "", "```text", text, "```", ""]
    return "\n".join(parts)
