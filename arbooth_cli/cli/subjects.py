"""`arbooth subjects ...`: the tuned subjects in the local store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..subjects import SubjectStore
from ._options import JsonOpt
from ._output import get_output, human_size

NameArg = Annotated[str, typer.Argument(help="Subject name (see 'arbooth subjects list').")]

subjects_app = typer.Typer(help="List, inspect, export and remove tuned subjects.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(subjects_app, name="subjects")


@subjects_app.command("list")
def list_cmd(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """List the tuned subjects.

    Examples:\n
      arbooth subjects list\n
      arbooth subjects list --json | jq -r .token
    """
    out = get_output(ctx)
    subjects, damaged = SubjectStore().scan()
    if json_:
        for s in subjects:
            out.json(s.to_dict())
        for d in damaged:
            out.json(d.to_dict())
        return
    if not subjects and not damaged:
        out.note("no subjects yet: 'arbooth tune PHOTOS --token sks --class dog' makes one")
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for col in ("NAME", "TOKEN", "CLASS", "BASE MODEL", "STEPS", "SIZE", "CREATED"):
        table.add_column(col, no_wrap=True)
    for s in subjects:
        table.add_row(s.name, s.token, s.cls, s.base_model, str(s.steps), human_size(s.size), s.created)
    for d in damaged:
        table.add_row(d.name, d.token or "?", "[red]damaged[/]", "", "", "", "")
    out.result(table)
    for d in damaged:
        out.warn(f"subject {d.name!r} is damaged: {d.reason} ('arbooth subjects rm {d.name}' removes it)")


@subjects_app.command("info")
def info_cmd(ctx: typer.Context, name: NameArg, json_: JsonOpt = False) -> None:
    """Show a subject's provenance: base model and hash, token, class, steps and the full config."""
    out = get_output(ctx)
    s = SubjectStore().get(name)
    if json_:
        out.json(s.to_dict())
        return
    c = s.config
    lines = [
        f"[bold]{s.name}[/]  token {s.token!r}, class {s.cls!r}",
        f"  base model:  {s.base_model} ({s.base_model_hash[:16]})",
        f"  tuned:       {s.steps} steps, layers {','.join(c.get('layers', []))}, blocks {c.get('blocks')}, "
        f"lr {c.get('lr')}, batch {c.get('batch_size')}, prior {'on' if c.get('prior') else 'off'}",
        f"  file:        {s.path} ({human_size(s.size)}, {s.tensors} tensors)",
        f"  made by:     arbooth {s.arbooth_version} on {s.created}",
    ]
    for p in s.lowrank:
        lines.append(f"  compressed:  {p} ({human_size(p.stat().st_size)})")
    out.result("\n".join(lines))


@subjects_app.command("rm")
def rm_cmd(ctx: typer.Context, names: Annotated[list[str], typer.Argument(help="Subjects to remove.")]) -> None:
    """Remove subjects from the store."""
    out = get_output(ctx)
    store = SubjectStore()
    for name in names:
        store.remove(name)
        out.note(f"removed {name}")


@subjects_app.command("export")
def export_cmd(
    ctx: typer.Context,
    name: NameArg,
    dest: Annotated[Path, typer.Argument(help="A file or an existing folder.")],
    rank: Annotated[Optional[int], typer.Option("--rank", help="Export the rank-R compressed form instead.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing file.")] = False,
) -> None:
    """Copy a subject's portable safetensors file (tuned tensors + subject embedding + metadata).

    Example: arbooth subjects export sks ./sks-dog.safetensors
    """
    out = get_output(ctx)
    path = SubjectStore().export(name, dest, rank=rank, overwrite=overwrite)
    out.result(str(path))
