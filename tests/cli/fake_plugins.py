"""Plugin objects for the in-process contract tests (loaded through crafted entry points)."""

from dataclasses import replace

import typer

from arbooth_cli.specs.tiny import TINY_INFINITY

sub_app = typer.Typer(help="A sub-app plugin.")


@sub_app.command()
def ping() -> None:
    typer.echo("pong")


def register(app: typer.Typer) -> None:
    @app.command("shout")
    def shout(word: str) -> None:
        """A top-level command added by register(app)."""
        typer.echo(word.upper())


def register_models(register) -> None:
    register(replace(TINY_INFINITY, name="tiny-fake", description="from a fake plugin"))


def register_filed_models(register) -> None:
    """The tiny architecture, but with files to import, like the real models."""
    from arbooth_cli.registry import FileSpec

    register(replace(TINY_INFINITY, name="tiny-filed", builtin_weights=False, files=(
        FileSpec(role="transformer", kind="pth", repo_id="example/tiny", filename="tiny_transformer.pth"),
        FileSpec(role="vae", kind="pth", repo_id="example/tiny", filename="tiny_vae.pth",
                 state_dict_keys=(("vae",), ())),
    )))


def register_bad_models(register) -> None:
    register(replace(TINY_INFINITY, name="tiny-half"))
    raise RuntimeError("plugin crashed half-way")


def fails_loudly(register) -> None:
    register(replace(TINY_INFINITY, name="tiny-infinity"))  # a name that already exists

not_a_plugin = 42
