"""`arbooth plugins list`: what is installed, and what failed to load."""

from __future__ import annotations

from typing import Annotated

import typer

from ..registry import default_registry
from ._output import get_output

plugins_app = typer.Typer(help="Inspect installed plugins.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    @plugins_app.command("list")
    def list_cmd(
        ctx: typer.Context,
        json_: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
    ) -> None:
        """List command and model plugins, built-ins included, with load errors.

        Set ARBOOTH_LOAD_PLUGINS= (empty) to load none, or a comma-separated list of names.
        """
        out = get_output(ctx)
        records = list(getattr(app, "plugin_records", [])) + default_registry().plugin_records
        rows = [
            {"name": r.name, "group": r.group, "target": r.target, "distribution": r.distribution,
             "version": r.version, "builtin": r.builtin, "error": r.error}
            for r in records
        ]
        if json_:
            for row in rows:
                out.json(row)
            return
        from rich.table import Table

        table = Table(box=None, pad_edge=False)
        for col in ("NAME", "GROUP", "FROM", "STATUS"):
            table.add_column(col)
        for r in rows:
            origin = "built in" if r["builtin"] else f"{r['distribution'] or '?'} {r['version'] or ''}".strip()
            status = "[green]ok[/]" if r["error"] is None else f"[red]failed:[/] {r['error']}"
            table.add_row(r["name"], r["group"], origin, status)
        out.result(table)

    app.add_typer(plugins_app, name="plugins")
