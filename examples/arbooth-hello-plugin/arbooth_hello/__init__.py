"""An example arbooth plugin: a `hello` command group and a model spec.

Install it with `pip install examples/arbooth-hello-plugin`, then `arbooth hello greet World`
and `arbooth models info tiny-hello`.
"""

from dataclasses import replace

import typer

from arbooth_cli.specs.tiny import TINY_INFINITY

app = typer.Typer(help="Say hello (an example plugin).", no_args_is_help=True)


@app.command()
def greet(name: str = typer.Argument("world", help="Whom to greet.")) -> None:
    """Print a greeting on stdout."""
    typer.echo(f"hello, {name}, from a plugin")


def register_models(register) -> None:
    """Add one spec: the built-in tiny model under another name, with a different seed story."""
    register(replace(TINY_INFINITY, name="tiny-hello", description="the tiny model, registered by a plugin"))
