"""`arbooth pools ...`: prior pools kept for later tunes of the same class."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ._options import JsonOpt
from ._output import get_output, human_size

pools_app = typer.Typer(help="List and remove the prior pools kept for later tunes of the same class.",
                        no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(pools_app, name="pools")


def _store():  # type: ignore[no-untyped-def]
    from .. import paths
    from ..tuning.pool_store import PoolStore

    return PoolStore(paths.home())


@pools_app.command("list")
def list_cmd(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """List the kept prior pools: key, samples, model, class prompts, size.

    A tune reuses a pool when its model files, class prompts, seed, pool size and sampling
    settings are the pool's (the key covers all of them).
    """
    out = get_output(ctx)
    pools = _store().list()
    if json_:
        for p in pools:
            out.json(p.to_dict())
        return
    if not pools:
        out.note("no prior pools kept yet: 'arbooth tune' keeps the pool it draws")
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for col in ("KEY", "SAMPLES", "MODEL", "SIZE", "CREATED", "CLASS PROMPTS"):
        table.add_column(col, no_wrap=col != "CLASS PROMPTS")
    for p in pools:  # every prompt is in --json; the table names the first and counts the rest
        more = f" (+{len(p.class_prompts) - 1} more)" if len(p.class_prompts) > 1 else ""
        first = p.class_prompts[0] if p.class_prompts else "-"
        table.add_row(p.key, str(p.samples), p.model, human_size(p.size), p.created[:10], first + more)
    out.result(table)


@pools_app.command("rm")
def rm_cmd(
    ctx: typer.Context,
    keys: Annotated[Optional[list[str]], typer.Argument(help="Keys of the pools to remove.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Remove every kept pool.")] = False,
) -> None:
    """Remove kept prior pools (the next tune of their class draws its pool again)."""
    out = get_output(ctx)
    store = _store()
    if all_ == bool(keys):
        raise typer.BadParameter("name the pools to remove, or pass --all (not both)")
    for key in [p.key for p in store.list()] if all_ else keys or []:
        store.remove(key)
        out.note(f"removed {key}")
