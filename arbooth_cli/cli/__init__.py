"""The ``arbooth`` command: a thin view over the library.

Built-in command groups and third-party plugins are mounted through the same hook
(``register(app)`` or a ``typer.Typer``; see ``arbooth_cli.plugins``). Nothing here imports torch.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from .. import plugins
from .._version import __version__
from ..errors import ArboothError
from . import _errors
from ._output import Output

HELP = """Personalize visual autoregressive (next-scale) text-to-image models on a few photos.

Results go to stdout; progress and logs go to stderr.

Exit codes: 0 ok, 1 internal error, 2 usage, 3 not found or not cached, 4 invalid input,
5 resource (disk, permissions, memory), 6 network, 130 interrupted.
Set ARBOOTH_DEBUG=1 to see tracebacks.
"""


class _ArboothGroup(TyperGroup):
    """Maps library errors to one-line messages and exit codes, for every command, plugins too."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (ArboothError, KeyboardInterrupt) as exc:
            raise SystemExit(_errors.report(exc)) from None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"arbooth {__version__}")
        raise typer.Exit()


def _root(
    ctx: typer.Context,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only results and errors; no progress.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    ctx.obj = Output(quiet=quiet)


# Built-in command groups, registered exactly as a plugin's `register(app)` would be.
BUILTIN_COMMANDS = {
    "gen": "arbooth_cli.cli.gen:register",
    "tune": "arbooth_cli.cli.tune:register",
    "subjects": "arbooth_cli.cli.subjects:register",
    "pools": "arbooth_cli.cli.pools:register",
    "inspect": "arbooth_cli.cli.inspect:register",
    "eval": "arbooth_cli.cli.eval:register",
    "models": "arbooth_cli.cli.models:register",
    "plugins": "arbooth_cli.cli.plugins_cmd:register",
}


def build_app(env: Mapping[str, str] | None = None) -> typer.Typer:
    """The root app with the built-in commands and the selected plugins mounted."""
    import importlib

    app = typer.Typer(
        name="arbooth",
        help=HELP,
        cls=_ArboothGroup,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_show_locals=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(_root)
    records: list[plugins.PluginRecord] = []
    app.plugin_records = records  # type: ignore[attr-defined]  # read by `arbooth plugins list`
    for name, target in BUILTIN_COMMANDS.items():
        module, attr = target.split(":")
        rec = plugins.PluginRecord(name, plugins.COMMANDS_GROUP, target, "arbooth", __version__, builtin=True)
        records.append(mount(app, rec, getattr(importlib.import_module(module), attr)))
    for rec, obj in plugins.load_group(plugins.COMMANDS_GROUP, env):
        records.append(mount(app, rec, obj) if obj is not None else rec)
    return app


def mount(app: typer.Typer, rec: plugins.PluginRecord, obj: Any) -> plugins.PluginRecord:
    """Mount one ``arbooth.commands`` object; return its record (with the error if it failed)."""
    try:
        if isinstance(obj, typer.Typer):
            app.add_typer(obj, name=rec.name)
        elif callable(obj):
            obj(app)
        else:
            raise TypeError(f"expected a typer.Typer or a register(app) callable, got {type(obj).__name__}")
    except Exception as exc:  # a broken plugin never breaks the other commands
        return rec.failed(exc)
    return rec


#: options of the root command that may also be written after the subcommand
GLOBAL_FLAGS = ("--quiet", "-q")


def hoist_global_flags(argv: list[str]) -> list[str]:
    """``arbooth gen ... --quiet`` means ``arbooth --quiet gen ...`` (no command has a -q of its own;
    everything after ``--`` is left as written)."""
    end = argv.index("--") if "--" in argv else len(argv)
    flags = [a for a in argv[:end] if a in GLOBAL_FLAGS]
    return flags + [a for a in argv[:end] if a not in GLOBAL_FLAGS] + argv[end:]


def main(argv: list[str] | None = None) -> None:
    app = build_app()
    # (a stdout closed early, `arbooth gen --json | head -3`, ends the job quietly with exit 1: the
    # command-line parser's own handling)
    try:
        app(args=hoist_global_flags(argv if argv is not None else sys.argv[1:]), prog_name="arbooth")
    finally:
        # The command is done and the process ends: keep the collector from walking every object
        # of torch at exit (about 0.4 s of a toy image's 2 s; bench/startup.py).
        import gc

        gc.freeze()


