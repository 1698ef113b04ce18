"""`arbooth models ...`: the registry and the local model cache."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ..cache import CachedModel, ModelCache
from ..registry import ModelSpec, default_registry
from ._options import JsonOpt
from ._output import get_output, human_size

NameArg = Annotated[str, typer.Argument(help="Model name, e.g. infinity-2b (see 'arbooth models list').")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace the model if it is already cached.")]

models_app = typer.Typer(
    help="List, download, import, verify and remove models in the local cache.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")


def _status(spec: ModelSpec, cached: dict[str, CachedModel]) -> str:
    if spec.needs_no_download:
        return "built in"
    return "ready" if spec.name in cached else "not cached"


def _spec_row(spec: ModelSpec, cached: dict[str, CachedModel]) -> dict[str, Any]:
    m = cached.get(spec.name)
    return {
        "name": spec.name,
        "family": spec.family,
        "status": _status(spec, cached),
        "size": m.size if m else spec.approx_size,
        "description": spec.description,
        "plugin": spec.plugin,
        "model_hash": m.model_hash if m else None,
        "path": str(m.root) if m else None,
    }


@models_app.command("list")
def list_cmd(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """List every known model and whether it is ready to use.

    Examples:\n
      arbooth models list\n
      arbooth models list --json | jq -r 'select(.usable) | .name'
    """
    out = get_output(ctx)
    reg = default_registry()
    cache = ModelCache()
    scan = cache.scan()
    cached = {m.name: m for m in scan.models}
    rows = [_spec_row(s, cached) for s in reg]
    # Models imported under a name no registered spec has (e.g. its plugin was uninstalled).
    rows += [
        {"name": n, "family": "?", "status": "ready (no spec)", "size": m.size, "description": "",
         "plugin": None, "model_hash": m.model_hash, "path": str(m.root)}
        for n, m in cached.items() if n not in reg
    ]
    if scan.broken or scan.partial:
        out.warn(
            f"{len(scan.broken) + len(scan.partial)} incomplete entries in {cache.root} "
            "(interrupted imports or downloads); 'arbooth models prune' removes them"
        )
    if json_:
        for row in rows:  # usable: runs now, without a download (built in, or complete in the cache)
            out.json({**row, "usable": row["status"] == "built in" or row["status"].startswith("ready")})
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for col in ("NAME", "STATUS", "SIZE", "DESCRIPTION"):
        table.add_column(col, no_wrap=col != "DESCRIPTION")
    for r in rows:
        size = human_size(r["size"]) if r["status"].startswith("ready") else (
            f"~{human_size(r['size'])}" if r["size"] else "-"
        )
        table.add_row(r["name"], r["status"], size, r["description"])
    out.result(table)


@models_app.command("info")
def info_cmd(ctx: typer.Context, name: NameArg, json_: JsonOpt = False) -> None:
    """Show a model's spec, its files and its cache status.

    Example: arbooth models info infinity-2b
    """
    out = get_output(ctx)
    spec = default_registry().get(name)
    cache = ModelCache()
    model = cache.get(name) if cache.has(name) else None
    data = {
        "spec": spec.to_dict(),
        "status": _status(spec, {name: model} if model else {}),
        "cache": None if model is None else {
            "path": str(model.root),
            "model_hash": model.model_hash,
            "source": model.source,
            "created": model.created,
            "files": [f.__dict__ for f in model.files],
        },
    }
    if json_:
        out.json(data)
        return
    t, v = spec.transformer, spec.vae
    lines = [
        f"[bold]{spec.name}[/]  ({spec.family})  {data['status']}",
        f"  {spec.description}",
        f"  transformer: depth {t.depth}, width {t.embed_dim}, heads {t.num_heads}, "
        f"{t.bits} bits/token, FFN {t.ffn_hidden}",
        f"  tokenizer:   {v.bits} bits, stride {v.token_stride}"
        + (", 2x2 patchify" if v.spatial_patchify else ""),
        f"  text:        {spec.text_encoder.repo_id or 'built-in tiny T5'}, "
        f"max {spec.text_encoder.max_length} tokens",
        f"  sizes:       {', '.join(spec.sizes)}; sampling cfg {spec.sampling.cfg}, tau {spec.sampling.tau}, "
        f"top-p {spec.sampling.top_p}",
        f"  license:     {spec.license}",
        f"  source:      {spec.source}",
    ]
    if spec.plugin:
        lines.append(f"  plugin:      {spec.plugin}")
    for f in spec.files:
        where = f"{f.repo_id}/{f.filename}" if f.filename else f.repo_id
        size = f"  ~{human_size(f.size_hint)}" if f.size_hint else ""
        lines.append(f"  file {f.role:<12} {where}{size}")
    if model:
        lines.append(f"  cached at {model.root} ({human_size(model.size)}), hash {model.model_hash[:16]}")
    out.result("\n".join(lines))


@models_app.command("add")
def add_cmd(
    ctx: typer.Context,
    name: NameArg,
    files: Annotated[
        list[str],
        typer.Argument(help="The model's files: paths, or ROLE=PATH (roles: transformer, vae, text_encoder)."),
    ],
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Import model files you already have (no download).

    Pickled .pth checkpoints are read with weights_only=True (no code runs) and converted once to
    safetensors; sha256 hashes are recorded for 'arbooth models verify'.

    Examples:\n
      arbooth models add infinity-2b infinity_2b_reg.pth infinity_vae_d32reg.pth ./flan-t5-xl\n
      arbooth models add infinity-2b transformer=ckpt.pth vae=vae.pth text_encoder=./t5
    """
    out = get_output(ctx)
    spec = default_registry().get(name)
    with out.progress("importing") as progress:
        model = ModelCache().add(spec, files, force=force, progress=progress)
    _report_ready(out, model, json_)


@models_app.command("pull")
def pull_cmd(ctx: typer.Context, name: NameArg, force: ForceOpt = False, json_: JsonOpt = False) -> None:
    """Download a model from the Hugging Face hub into the cache (resumable).

    Honours HF_HOME, HF_HUB_OFFLINE, HF_TOKEN and HF_ENDPOINT. Offline, import files with
    'arbooth models add' instead.

    Example: arbooth models pull infinity-2b
    """
    out = get_output(ctx)
    spec = default_registry().get(name)
    with out.progress("importing") as progress:
        model = ModelCache().pull(spec, force=force, progress=progress)
    _report_ready(out, model, json_)


def _report_ready(out: Any, model: CachedModel, json_: bool) -> None:
    if json_:
        out.json({"name": model.name, "path": str(model.root), "model_hash": model.model_hash,
                  "size": model.size, "files": [f.__dict__ for f in model.files]})
    else:
        out.result(f"{model.name} is ready ({human_size(model.size)}, hash {model.model_hash[:16]})")


@models_app.command("verify")
def verify_cmd(ctx: typer.Context, name: NameArg, json_: JsonOpt = False) -> None:
    """Re-hash a cached model's files against the hashes recorded when it was added.

    Exits with 4 when a file is missing or changed. Example: arbooth models verify infinity-2b
    """
    out = get_output(ctx)
    with out.progress("verifying") as progress:
        report = ModelCache().verify(name, progress=progress)
    if json_:
        out.json({"name": report.name, "ok": report.ok, "checked": report.checked, "problems": list(report.problems)})
    elif report.ok:
        out.result(f"{name}: {report.checked} files ok")
    else:
        out.result(f"{name}: {len(report.problems)} of {report.checked} files bad")
        for p in report.problems:
            out.result(f"  {p}")
    if not report.ok:
        from ..errors import EXIT_INVALID

        if not json_:
            out.err.print(f"hint: 'arbooth models add {name} ... --force' or 'arbooth models pull {name} --force' "
                          "restores it", highlight=False)
        raise typer.Exit(EXIT_INVALID)


@models_app.command("rm")
def rm_cmd(ctx: typer.Context, name: NameArg) -> None:
    """Remove a model from the cache.

    Example: arbooth models rm infinity-8b
    """
    model = ModelCache().remove(name)
    get_output(ctx).result(f"removed {model.name} ({human_size(model.size)})")


@models_app.command("prune")
def prune_cmd(ctx: typer.Context) -> None:
    """Delete leftovers of interrupted imports and downloads (this ends resumable downloads)."""
    removed = ModelCache().prune()
    out = get_output(ctx)
    for p in removed:
        out.result(f"removed {p}")
    if not removed:
        out.note("nothing to prune")
